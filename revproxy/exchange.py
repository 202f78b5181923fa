"""One request's exchange as a sans-I/O state machine: what the proxy knows and decides about it, no I/O.

As h11 keeps a connection's state, an `Exchange` keeps one request's `Phase`, moved only through `to()` along the
transitions in `_NEXT`:

    DECIDING -> CONNECTING -> SENDING -> AWAITING -> RESPONDING -> DONE
                    ^            |           |
                    +------------+-----------+   (failover, or a node's 502/503/504 retried)
    SENDING/AWAITING -> TUNNEL -> DONE          (a 101 to a WebSocket upgrade)
    DECIDING -> RESPONDING -> DONE              (a static file)      any phase -> DONE (error answer, client gone)

and the client's request body as a `Body`. It holds the request's keep-alive verdict, its 100-continue and upgrade
wishes, the failover plan and attempt, and produces the bytes the shell writes (heads, chunk framing, error answers)
and the access-log line. The Twisted shell (`revproxy.forward`) does the I/O and feeds it events.
"""

from __future__ import annotations

import enum
from typing import Any

from revproxy import failover, heads, http1
from revproxy.balancer import Node
from revproxy.failover import NodeFailure, Verdict
from revproxy.http1 import IDEMPOTENT, LAST_CHUNK, LENGTH, NONE, HTTPError


class Phase(enum.Enum):
    DECIDING = "deciding"  # head parsed: checks, guards and routing not done yet
    CONNECTING = "connecting"  # waiting for a connection to the current node
    SENDING = "sending"  # the request is being written to the node (its body may still be arriving)
    AWAITING = "awaiting"  # the request is all written: the node owes the response (its read timeout runs)
    RESPONDING = "responding"  # the response head went to the client; its body flows
    TUNNEL = "tunnel"  # after a 101: bytes both ways, no HTTP any more
    DONE = "done"


_NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.DECIDING: frozenset({Phase.CONNECTING, Phase.RESPONDING, Phase.DONE}),
    Phase.CONNECTING: frozenset({Phase.CONNECTING, Phase.SENDING, Phase.DONE}),
    Phase.SENDING: frozenset({Phase.AWAITING, Phase.RESPONDING, Phase.TUNNEL, Phase.CONNECTING, Phase.DONE}),
    Phase.AWAITING: frozenset({Phase.RESPONDING, Phase.TUNNEL, Phase.CONNECTING, Phase.DONE}),
    Phase.RESPONDING: frozenset({Phase.DONE}),
    Phase.TUNNEL: frozenset({Phase.DONE}),
    Phase.DONE: frozenset(),
}


# Each phase's allowed next phases as a tuple, looked up by identity: `in` on a frozenset of enum members would hash
# them through Enum.__hash__, a Python-level call, several times per request.
for _phase, _allowed in _NEXT.items():
    _phase.allowed = tuple(_allowed)  # type: ignore[attr-defined]


class Body(enum.Enum):
    """The client's request body."""

    NONE = "none"
    ARRIVING = "arriving"
    COMPLETE = "complete"


class Step(enum.Enum):
    """What a node's response head means for the exchange."""

    FORWARD = "forward"  # pass it on (the head is in `Exchange.response`)
    TUNNEL = "tunnel"  # a 101 to our upgrade: send `switching` and become a tunnel
    RETRY = "retry"  # a 502/503/504 for an idempotent request: abandon it, try the next node
    UNEXPECTED_101 = "unexpected-101"  # a 101 nobody asked for: 502


# The members the per-request code uses, as module names: on Python 3.11 each `Phase.DONE` goes through the enum
# metaclass's __getattr__ slot (hundreds of instructions, ~15 a request here); a module global is a cached load.
DECIDING, CONNECTING, SENDING, AWAITING, RESPONDING, DONE = (Phase.DECIDING, Phase.CONNECTING, Phase.SENDING,
                                                             Phase.AWAITING, Phase.RESPONDING, Phase.DONE)
ARRIVING, COMPLETE = Body.ARRIVING, Body.COMPLETE
FORWARD = Step.FORWARD


class TransitionError(RuntimeError):
    pass


class Exchange:
    """One request, from its parsed head to its access-log line."""

    __slots__ = ("attempt", "began", "body", "chunked", "client_ip", "expect_continue", "failure", "head",
                 "idempotent", "keep_alive", "node", "node_status", "phase", "plan", "sent", "stale_retried",
                 "status", "upgrade")

    def __init__(self, head: http1.Head, client_ip: str, now: float) -> None:
        self.head = head
        self.client_ip = client_ip
        self.began = now
        self.phase = DECIDING
        self.body = Body.NONE if head.framing == NONE else ARRIVING
        self.keep_alive = head.keep_alive  # the client's wish; cleared by anything that forbids reuse
        self.idempotent = head.method in IDEMPOTENT
        # Only a WebSocket upgrade becomes a tunnel; any other Upgrade (h2c, ...) is forwarded as a plain request.
        self.upgrade = (head.upgrade if b"upgrade" in head.connection and head.upgrade.lower() == b"websocket"
                        else b"")
        self.expect_continue = False
        self.plan: list[Node] = []
        self.attempt = 0
        self.node: Node | None = None
        self.node_status = "-"
        self.stale_retried = False
        self.failure: NodeFailure | None = None
        self.chunked = False  # the response goes to the client re-framed as chunked
        self.status = 0
        self.sent = 0

    def to(self, phase: Phase) -> None:
        if phase not in self.phase.allowed:  # type: ignore[attr-defined]
            raise TransitionError(f"{self.phase.name} -> {phase.name}")
        self.phase = phase

    @property
    def done(self) -> bool:
        return self.phase is DONE

    @property
    def request_complete(self) -> bool:
        return self.body is not ARRIVING

    @property
    def response_started(self) -> bool:
        return self.phase is RESPONDING or self.phase is Phase.TUNNEL

    # -- deciding ------------------------------------------------------------------------------------------------
    def check(self, max_body_size: int) -> HTTPError | None:
        """The proxy's own limits on the head; sets `expect_continue` when the client waits for a 100."""
        head = self.head
        if head.framing == LENGTH and head.length > max_body_size:
            return HTTPError(413, "request body over max_body_size")
        expect = head.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                return HTTPError(417, "only Expect: 100-continue")
            self.expect_continue = self.body is ARRIVING  # we read the body now, so tell the client to send
        return None

    def interim(self) -> bytes:
        """What goes to the client before the response: a 100 Continue when it waits for one."""
        return heads.CONTINUE if self.expect_continue else b""

    def request_head(self, client_ip: bytes, hostname: bytes = b"") -> bytes:
        return heads.request_head(self.head, client_ip, self.upgrade, hostname)

    # -- the node attempts -----------------------------------------------------------------------------------
    def begin(self, plan: list[Node]) -> Node | None:
        """The balancer's attempt order; the first node to try, or None when none is usable."""
        self.plan = plan
        return self._connect() if plan else None

    def _connect(self) -> Node:
        self.to(CONNECTING)
        self.node = self.plan[self.attempt]
        return self.node

    @property
    def attempts_left(self) -> int:
        return len(self.plan) - self.attempt - 1

    def connected(self) -> None:
        self.to(SENDING)

    def request_sent(self) -> None:
        """The whole request is written to the node: from now on the node owes the response."""
        if self.phase is SENDING:
            self.to(AWAITING)

    def body_complete(self) -> None:
        self.body = COMPLETE

    def node_failed(self, kind: NodeFailure) -> Verdict:
        """Decide (failover.after_failure) and move to the node to try next, if any."""
        self.failure = kind
        verdict = failover.after_failure(kind, idempotent=self.idempotent, response_started=self.response_started,
                                         stale_retried=self.stale_retried, request_complete=self.request_complete,
                                         attempts_left=self.attempts_left)
        self.stale_retried = verdict.action is failover.Action.RETRY_SAME
        if verdict.action is failover.Action.RETRY_SAME:
            self._connect()
        elif verdict.action is failover.Action.RETRY_NEXT:
            self.attempt += 1
            self._connect()
        return verdict

    def response_arrived(self, head: http1.Head, draining: bool) -> tuple[Step, heads.ResponseHead | bytes | None]:
        self.node_status = str(head.status)
        if head.status in failover.RETRY_STATUSES and failover.retry_status(  # (asked only of those: 2 calls less)
                head.status, idempotent=self.idempotent, attempts_left=self.attempts_left):
            self.attempt += 1
            self._connect()
            return Step.RETRY, None
        if head.status == 101:
            if not self.upgrade:
                return Step.UNEXPECTED_101, None
            self.to(Phase.TUNNEL)
            self.status = 101
            self.keep_alive = False
            return Step.TUNNEL, heads.switching_head(head, self.upgrade)
        self.to(RESPONDING)
        self.status = head.status
        keep = self.keep_alive and self.body is not ARRIVING and not draining  # (request_complete)
        response = heads.response_head(head, self.head.version, keep)
        self.chunked, self.keep_alive = response.chunked, response.keep_alive
        return FORWARD, response

    def frame(self, pieces: list[bytes], out: list[bytes]) -> None:
        """Response body pieces, framed for the client, appended to `out`."""
        if self.chunked:
            for p in pieces:
                out += http1.chunk(p)
                self.sent += len(p)
        else:
            for p in pieces:
                out.append(p)
                self.sent += len(p)

    def trailer(self) -> bytes:
        """What ends the response body towards the client."""
        return LAST_CHUNK if self.chunked else b""

    # -- endings ---------------------------------------------------------------------------------------------
    def static(self, status: int) -> None:
        self.to(RESPONDING)
        self.status, self.node_status = status, "static"

    def error(self, status: int, detail: str, extra: bytes = b"") -> bytes:
        """The proxy's own answer (nothing sent yet); decides whether the connection can stay open."""
        self.status = status
        self.keep_alive = self.keep_alive and self.request_complete and status < 500 and status != 413
        body = detail.encode() + b"\n"
        self.sent = len(body)
        return heads.simple_response(status, body, close=not self.keep_alive, extra=extra)

    def client_gone(self) -> None:
        if not self.response_started:
            self.status = 499
        self.keep_alive = False

    def finish(self) -> None:
        self.to(DONE)

    def summary(self) -> dict[str, Any]:
        """For tests and status pages."""
        return {"phase": self.phase.name, "body": self.body.name, "status": self.status, "sent": self.sent,
                "node": self.node.key if self.node else None, "attempt": self.attempt}
