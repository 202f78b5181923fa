"""The proxy's client and node protocols under random interleavings (hypothesis state machine, in memory):
clients send GETs and POSTs (pipelined, bodies in pieces), nodes answer, fail or stay silent, clients leave,
time passes. Whatever happens: no handler raises, every answer a client gets is whole and in the order of its
requests, the exchanges in flight are counted right, and nothing is left behind once everything is closed."""

import re

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from revproxy.exchange import Phase
from tests.support.revproxy_memory import Harness
from tests.support.strategies import scaled

_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def responses(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Whole responses (status, body) at the start of `data` (Content-Length framed), and what is left."""
    out = []
    while True:
        m = _STATUS.match(data)
        if not m:
            return out, data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return out, data
        head = data[:end].lower()
        length = int(re.search(rb"content-length: (\d+)", head).group(1))
        if len(data) < end + 4 + length:
            return out, data
        out.append((int(m.group(1)), data[end + 4: end + 4 + length]))
        data = data[end + 4 + length:]


class ProxyMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(nodes=2, client_timeout=5.0, upstream_read_timeout=3.0, connect_timeout=1.0,
                         keepalive_timeout=20.0)
        self.clients: list = []  # [protocol, transport, targets sent]
        self.nodes: list = []
        self.serial = 0

    @precondition(lambda self: len(self.clients) < 3)
    @rule()
    def open_client(self) -> None:
        proto, transport = self.h.client(peer=f"192.0.2.{len(self.clients) + 1}")
        self.clients.append([proto, transport, []])

    def _client(self, i: int) -> list | None:
        live = [c for c in self.clients if not c[1].closed]
        return live[i % len(live)] if live else None

    @rule(i=st.integers(0, 2), body=st.one_of(st.none(), st.binary(max_size=300)), cuts=st.integers(1, 3))
    def send_request(self, i: int, body: bytes | None, cuts: int) -> None:
        c = self._client(i)
        if c is None:
            return
        self.serial += 1
        target = b"/r%d" % self.serial
        if body is None:
            data = b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target
        else:
            data = b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (target, len(body), body)
        c[2].append(target)
        step = max(1, len(data) // cuts)
        for k in range(0, len(data), step):
            c[0].dataReceived(data[k: k + step])

    @precondition(lambda self: self.h.pending_connects())
    @rule(fail=st.booleans())
    def node_connects(self, fail: bool) -> None:
        if fail:
            self.h.fail_connect()
        else:
            self.nodes.append(self.h.node_connection())

    @rule(i=st.integers(0, 5), status=st.sampled_from([200, 200, 200, 503]))
    def node_answers(self, i: int, status: int) -> None:
        waiting = [n for n in self.nodes if n[0].forwarder is not None and n[0].head is None
                   and n[0].forwarder.ex.phase is Phase.AWAITING]
        if waiting:
            node, _ = waiting[i % len(waiting)]
            target = node.forwarder.ex.head.target
            node.dataReceived(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(target), target))

    @rule(i=st.integers(0, 5))
    def node_fails(self, i: int) -> None:
        live = [n for n in self.nodes if not n[1].closed]
        if live:
            live[i % len(live)][1].abortConnection()

    @rule(i=st.integers(0, 2))
    def client_leaves(self, i: int) -> None:
        c = self._client(i)
        if c is not None:
            c[1].abortConnection()

    @rule(seconds=st.sampled_from([0.0, 0.5, 2.0, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.h.settle(seconds)

    @rule()
    def everything_answered(self) -> None:
        """Nodes connect and answer until nothing moves: then every open client has an answer to every request
        (pipelined ones included)."""
        for _ in range(50):
            moved = False
            while self.h.pending_connects():
                self.nodes.append(self.h.node_connection())
                moved = True
            for node, _ in self.nodes:
                fw = node.forwarder
                if fw is not None and node.head is None and fw.ex.phase is Phase.AWAITING:
                    target = fw.ex.head.target
                    node.dataReceived(b"HTTP/1.1 200 X\r\nContent-Length: %d\r\n\r\n%s" % (len(target), target))
                    moved = True
            self.h.settle(0)
            if not moved:
                break
        for proto, transport, targets in self.clients:
            if not transport.closed and proto.body is None:
                got, rest = responses(transport.value())
                assert len(got) == len(targets) and rest == b"", (len(got), len(targets), rest[:80])

    @invariant()
    def answers_are_whole_and_in_order(self) -> None:
        for _, transport, targets in self.clients:
            got, _ = responses(transport.value())
            assert len(got) <= len(targets)
            for (status, body), target in zip(got, targets, strict=False):
                if status == 200:
                    assert body == target, (body, target)

    @invariant()
    def exchanges_in_flight_are_counted(self) -> None:
        live = sum(1 for c in self.clients if c[0].forwarder is not None and not c[0].forwarder.ex.done)
        assert self.h.ctx.active == live

    def teardown(self) -> None:
        for _, transport, _ in self.clients:
            transport.abortConnection()
        for _, transport in self.nodes:
            transport.abortConnection()
        self.h.settle(0)
        self.h.settle(60)
        assert self.h.ctx.active == 0 and self.h.ctx.connections == set() and self.h.ctx.upstreams.all == set()


TestProxyMachine = ProxyMachine.TestCase
TestProxyMachine.settings = scaled(0.05)
