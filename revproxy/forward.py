"""The Twisted side of one exchange: guards and routing, node connections, the request body and the response moved.

A `Forwarder` runs one `Exchange` (the pure state machine) for its `ClientConnection`: it asks the balancer for an
attempt order, borrows a keep-alive connection from the pool (or opens one), streams the request body to the node
while keeping it (`BodyStore`) until the node answers so a failover can resend it, and streams the response back
with back-pressure both ways. After a 101 both connections become a raw tunnel. Every decision — failover, what the
client gets, keep-alive — is the exchange's; this class only does what it says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from revproxy import access_log, http1
from revproxy.body_store import MEMORY_BODY, BodyStore
from revproxy.exchange import ARRIVING, FORWARD, Exchange, Step
from revproxy.failover import Action, NodeFailure
from revproxy.http1 import CHUNKED, LAST_CHUNK, HTTPError

if TYPE_CHECKING:
    from revproxy.client import ClientConnection
    from revproxy.node import Connect, NodeConnection

log = Logger(namespace="revproxy")


@implementer(IPushProducer)
class Forwarder:
    """Registered as the producer on the node's transport while the request body goes out: the node's
    back-pressure pauses reading from the client."""

    def __init__(self, conn: ClientConnection, ex: Exchange) -> None:
        self.conn = conn
        self.ex = ex
        self.ctx = ctx = conn.ctx
        self.config = ctx.config
        self.store = BodyStore() if ex.body is ARRIVING else None
        self.upstream: NodeConnection | None = None
        self.connecting: Connect | None = None
        self.request_bytes = b""  # the request head for the node, built once for every attempt
        self.body_sent = 0
        self.written = False  # the whole request is written to the current node connection
        self.paused = False
        self.back_pressure = False  # the node's transport is the client's producer (see response_continues)
        self.out: list[bytes] = []  # response bytes from one read of the node, written to the client as one
        self.sent_at = 0.0  # when the request went to the current node (its latency figure)
        self.open_kind = ""  # "event_streams" or "websockets" while this exchange holds one open

    # -- deciding --------------------------------------------------------------------------------------------
    def start(self) -> None:
        ex = self.ex
        self.ctx.active += 1
        self.ctx.stats.requests += 1
        refusal = ex.check(self.config.max_body_size)
        if refusal is not None:
            return self.fail(refusal.status, refusal.detail)
        if ex.expect_continue:  # (the exchange's interim answer, asked for only when there is one)
            self.conn.transport.write(ex.interim())
        self.guard(0)

    def guard(self, index: int) -> None:
        """The decision point: each of the context's guards (PIN guard, authentication, ...) may answer the request
        itself before it goes anywhere; then it is routed."""
        guards = self.ctx.guards
        while index < len(guards):
            verdict = guards[index](self.ex)
            index += 1
            if verdict is None:  # the usual answer (a guard that is off, or lets the request through)
                continue
            if isinstance(verdict, Deferred):
                verdict.addCallback(self._guarded, index).addErrback(self._guard_failed)
                return
            return self.fail(verdict.status, verdict.detail, verdict.extra)
        self.route()

    def _guarded(self, verdict: HTTPError | None, index: int) -> None:
        if self.ex.done:
            return
        if verdict is not None:
            return self.fail(verdict.status, verdict.detail, verdict.extra)
        self.guard(index)

    def _guard_failed(self, failure: Any) -> None:
        log.failure("request guard failed", failure)
        self.fail(503, "request check unavailable")

    def route(self) -> None:
        ex, ctx, cfg = self.ex, self.ctx, self.config
        target = ex.head.target
        webapp = ctx.webapp
        if webapp is not None and target.startswith(cfg.webapp_path.encode()) and not ex.upgrade:
            return webapp.serve(self, target[len(cfg.webapp_path):])
        node = ex.begin(ctx.balancer.plan(self.conn.client_ip))
        if node is None:
            return self.fail(502, "no node available")
        self.request_bytes = ex.request_head(self.conn.client_ip_bytes, ctx.hostname)
        self.connect()

    # -- request side ----------------------------------------------------------------------------------------
    def connect(self) -> None:
        ex, cfg = self.ex, self.config
        timeout = cfg.api_connect_timeout if ex.head.target.startswith(b"/api/") else cfg.connect_timeout
        self.ctx.upstreams.acquire(ex.node, self, timeout, fresh=bool(ex.upgrade) or ex.stale_retried)  # type: ignore[arg-type]

    def upstream_ready(self, up: NodeConnection) -> None:
        self.connecting = None
        self.upstream = up
        self.body_sent = 0
        self.written = False
        self.ex.connected()
        if self.paused:
            self.resume_client()
        up.transport.write(self.request_bytes)
        self.sent_at = self.ctx.reactor.seconds()
        self.ctx.stats.node_request(self.ex.node.key)  # type: ignore[union-attr]
        if self.store is None:
            self.request_written(up)
        else:
            up.transport.registerProducer(self, True)
            self.pump()

    def request_written(self, up: NodeConnection) -> None:
        """The whole request is with the node: from now on it owes the response, and only now does its read
        timeout run (a slow upload is the client's time, bounded by client_timeout, never the node's)."""
        self.written = True
        self.ex.request_sent()
        if not self.open_kind:  # (an event stream already flowing keeps no read timeout)
            up.set_deadline(self.config.upstream_read_timeout)

    def pump(self) -> None:
        """Write the kept body to the node from where it got to, as far as its transport accepts."""
        up, store, ex = self.upstream, self.store, self.ex
        if up is None or store is None or self.written:
            return
        chunked = ex.head.framing == CHUNKED
        while not self.paused and self.body_sent < store.size:
            data = store.read(self.body_sent, MEMORY_BODY)
            self.body_sent += len(data)
            if chunked:
                up.transport.writeSequence(http1.chunk(data))
            else:
                up.transport.write(data)
            if self.upstream is not up:
                return
        if ex.request_complete and self.body_sent == store.size:
            if chunked:
                up.transport.write(LAST_CHUNK)
            self.request_written(up)
            up.transport.unregisterProducer()
            self.resume_client()  # the last write may have paused us: nobody would resume the client then

    def request_data(self, piece: bytes) -> None:
        store = self.store
        if store is None:
            return
        store.append(piece)
        if store.size > self.config.max_body_size:
            return self.fail(413, "request body over max_body_size")
        if self.upstream is not None and not self.paused:
            self.pump()

    def request_complete(self) -> None:
        self.ex.body_complete()
        if self.upstream is not None:
            self.pump()

    # IPushProducer
    def pauseProducing(self) -> None:
        self.paused = True
        if self.conn.transport is not None:
            self.conn.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.conn.transport is not None:
            self.conn.transport.resumeProducing()
        self.pump()

    def stopProducing(self) -> None:
        self.paused = True

    def resume_client(self) -> None:
        """Undo a pause from a node connection this exchange no longer writes to (failover, abandon)."""
        if self.paused:
            self.paused = False
            if self.conn.transport is not None and not self.ex.done:
                self.conn.transport.resumeProducing()

    # -- response side ---------------------------------------------------------------------------------------
    def response_head(self, up: NodeConnection, head: http1.Head) -> bool:
        """Returns False when the response is abandoned (the next node, or a 502)."""
        ex, ctx = self.ex, self.ctx
        node = ex.node
        ctx.stats.node_answered(node.key, ctx.reactor.seconds() - self.sent_at)  # type: ignore[union-attr]
        step, payload = ex.response_arrived(head, ctx.draining)
        if step is not FORWARD and step is Step.RETRY:  # (FORWARD, a module name: see exchange.FORWARD)
            log.warn("node {node} answered {status}; retrying {method} on the next node", node=node.key,  # type: ignore[union-attr]
                     status=head.status, method=ex.head.method.decode())
            self.upstream = None
            up.abandon()
            self.connect()
            return False
        if node.down_until:  # type: ignore[union-attr]
            ctx.balancer.mark_ok(node)  # type: ignore[arg-type]
        if step is not FORWARD:
            if step is Step.UNEXPECTED_101:
                self.upstream = None
                up.abandon()
                self.fail(502, "unexpected 101 from the node")
                return False
            self.start_tunnel(up, payload)  # type: ignore[arg-type]  # (Step.TUNNEL)
            return True
        self.out += payload.parts  # type: ignore[union-attr]
        conn = self.conn
        if payload.streaming:  # type: ignore[union-attr]  # /events: no read timeout; its own keep-alive events
            up.cancel_deadline()  # keep it honest, and no timers held for the life of the stream
            self.open_kind = "event_streams"
            ctx.stats.event_streams += 1
            if ex.request_complete:  # (a request body still arriving keeps its client_timeout)
                conn.cancel_deadline()
        return True

    def response_continues(self, up: NodeConnection) -> None:
        """The response goes on past this read from the node: from now on the client's back-pressure pauses
        reading from the node. A response that arrives whole in one read (nearly every API answer) is never
        registered: registering, unregistering and resuming the node's reading cost ~10 calls per request."""
        self.back_pressure = True
        self.conn.transport.registerProducer(up.transport, True)

    def response_body(self, pieces: list[bytes]) -> None:
        self.ex.frame(pieces, self.out)

    def flush(self) -> None:
        """Write what one read from the node produced as one TLS write: head, body and last chunk share records,
        with no per-write cost and no reactor round trip (Twisted's small-write aggregation) in between."""
        out, self.out = self.out, []
        if out and self.conn.transport is not None:
            self.conn.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def response_end(self, up: NodeConnection, reusable: bool) -> None:
        self.upstream = None
        transport = self.conn.transport
        trailer = self.ex.trailer()
        if trailer:
            self.out.append(trailer)
        self.flush()
        paused_maybe = self.back_pressure
        if paused_maybe:
            self.back_pressure = False
            if transport.producer is not None:
                transport.unregisterProducer()
        if reusable and self.written:
            if paused_maybe:
                # The client's backpressure may have paused reading from the node, and unregistering does not
                # resume it: a pooled connection that never reads would hang the next request on it.
                up.transport.resumeProducing()
            self.ctx.upstreams.release(up)
        else:
            up.transport.loseConnection()
        self.finish()

    def node_failed(self, up: NodeConnection | None, kind: NodeFailure, detail: str = "") -> None:
        self.upstream = None
        self.connecting = None
        ex = self.ex
        if ex.done:
            return
        node = ex.node
        self.ctx.stats.upstream_failure(kind.value)
        verdict = ex.node_failed(kind)
        action = verdict.action
        if action is Action.ABORT:
            log.warn("node {node} failed mid-response ({kind}); closing the client connection", node=node.key,  # type: ignore[union-attr]
                     kind=kind.value)
            ex.keep_alive = False
            self.conn.transport.abortConnection()
            self.finish()
            return
        if action is Action.RETRY_SAME:
            return self.connect()
        if verdict.mark_down:
            self.ctx.balancer.mark_failed(node)  # type: ignore[arg-type]
            log.warn("node {node} failed ({kind}{detail}); marked down for {t}s, trying the next node",
                     node=node.key, kind=kind.value, detail=f": {detail}" if detail else "",  # type: ignore[union-attr]
                     t=self.config.fail_timeout)
            if action is Action.RETRY_NEXT:
                return self.connect()
            return self.fail(verdict.status, "no node answered")
        if not ex.request_complete:
            log.warn("node {node} failed ({kind}) while the client was still sending; not retried",
                     node=node.key, kind=kind.value)  # type: ignore[union-attr]
        else:
            log.warn("node {node} failed ({kind}) on a non-idempotent request", node=node.key, kind=kind.value)  # type: ignore[union-attr]
        self.fail(verdict.status, f"node failed: {kind.value}")

    def start_tunnel(self, up: NodeConnection, switching: bytes) -> None:
        conn = self.conn
        conn.transport.write(switching)
        self.open_kind = "websockets"
        self.ctx.stats.websockets += 1
        up.set_deadline(None)
        up.tunnel = conn.transport
        conn.start_tunnel(up.transport)
        conn.transport.registerProducer(up.transport, True)
        up.transport.registerProducer(conn.transport, True)
        pending = conn.heads.take()
        if pending:
            up.transport.write(pending)

    def tunnel_closed(self) -> None:
        self.finish()

    # -- endings ---------------------------------------------------------------------------------------------
    def fail(self, status: int, detail: str, extra: bytes = b"") -> None:
        """Answer with an error ourselves (nothing sent yet), or cut the client off (response under way)."""
        ex = self.ex
        if ex.done:
            return
        self.release_upstream()
        if ex.response_started:
            ex.keep_alive = False
            self.conn.transport.abortConnection()
            self.finish()
            return
        self.conn.transport.write(ex.error(status, detail, extra))
        self.finish()

    def release_upstream(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        up, self.upstream = self.upstream, None
        if up is not None:
            up.abandon()
        self.resume_client()

    def client_gone(self) -> None:
        """The client went away: close the node's connection at once (a half-read response cannot be reused)."""
        if self.ex.done:
            return
        self.ex.client_gone()
        self.release_upstream()
        self.finish()

    def finish(self) -> None:
        ex = self.ex
        if ex.done:
            return
        ex.finish()
        self.out = []  # a response cut off mid-way: nothing more goes to the client
        self.ctx.active -= 1
        stats = self.ctx.stats
        stats.response(ex.status)
        for watcher in self.ctx.finished:
            watcher(ex)
        if self.open_kind:
            setattr(stats, self.open_kind, getattr(stats, self.open_kind) - 1)
        if self.store is not None:
            self.store.close()
        access = self.ctx.access
        if access is not None:
            access(access_log.line(ex, self.ctx.reactor.seconds()))
        conn = self.conn
        if conn.transport is not None and conn.forwarder is self:
            conn.response_done(ex.keep_alive)
