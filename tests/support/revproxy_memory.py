"""The proxy's protocols in memory: a `ProxyContext` on a `MemoryReactorClock`, client connections on in-memory
transports, and node connections answered by the test — no sockets, no TLS, no subprocess.

`Harness.client()` gives a connected `ClientConnection` and its transport; node connections the proxy opens are
listed by the reactor, and `Harness.node_connection()` completes the oldest pending one (as if TCP and TLS had
succeeded) and returns its protocol and transport, so a test writes the node's bytes with `dataReceived`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from revproxy.balancer import Balancer, Node
from revproxy.client import ClientConnection, ProxyFactory
from revproxy.config import NodeSpec, ProxyConfig
from revproxy.context import ProxyContext
from revproxy.node import NodeConnection
from revproxy.redirect import RedirectConnection


class MemoryTransport(StringTransport):
    """A StringTransport that ends like a real one: connectionLost once, from the reactor, after a close."""

    def __init__(self, reactor: MemoryReactorClock, peer: str = "192.0.2.10") -> None:
        super().__init__(peerAddress=IPv4Address("TCP", peer, 40000))
        self.reactor = reactor
        self.protocol: Any = None
        self.aborted = False
        self.closed = False
        self.tcp_nodelay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.tcp_nodelay = enabled

    def loseConnection(self) -> None:
        super().loseConnection()
        self._end()

    def abortConnection(self) -> None:
        self.aborted = True
        self._end()

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            self.reactor.callLater(0, self.protocol.connectionLost, Failure(ConnectionError("closed")))

    def take(self) -> bytes:
        data = self.value()
        self.clear()
        return data


class Harness:
    def __init__(self, nodes: int = 2, **config: Any) -> None:
        self.reactor = MemoryReactorClock()
        specs = tuple(NodeSpec(f"10.0.0.{i + 1}", 443) for i in range(nodes))
        self.config = ProxyConfig(nodes=specs, hostname="proxy.example.com", **config)
        self.nodes = [Node(s.name, s.host, s.port) for s in specs]
        balancer = Balancer(self.nodes, fail_timeout=self.config.fail_timeout, clock=self.reactor.seconds)
        self.ctx = ProxyContext(self.config, balancer, self.reactor, {n.key: None for n in self.nodes})
        self.taken = 0  # node connection attempts already handed to the test

    def client(self, peer: str = "192.0.2.10") -> tuple[ClientConnection, MemoryTransport]:
        proto = ClientConnection(self.ctx)
        transport = MemoryTransport(self.reactor, peer)
        transport.protocol = proto
        proto.makeConnection(transport)
        proto.handshakeCompleted()
        return proto, transport

    def forwarded(self, data: bytes, peer: str = "192.0.2.10") -> tuple[ClientConnection, MemoryTransport,
                                                                          NodeConnection, MemoryTransport]:
        """A client that sent `data`, and the node connection the proxy opened for it, completed."""
        client, client_transport = self.client(peer)
        client.dataReceived(data)
        node, node_transport = self.node_connection()
        return client, client_transport, node, node_transport

    def accept(self, peer: str) -> tuple[ClientConnection, MemoryTransport] | None:
        """A connection through the listener's factory (the connection limits apply); None when refused. The TLS
        handshake is not done yet."""
        proto = ProxyFactory(self.ctx).buildProtocol(IPv4Address("TCP", peer, 40000))
        if proto is None:
            return None
        transport = MemoryTransport(self.reactor, peer)
        transport.protocol = proto
        proto.makeConnection(transport)
        return proto, transport

    def redirect(self) -> tuple[RedirectConnection, MemoryTransport]:
        """A connection to the plain-HTTP (redirect) listener."""
        proto = RedirectConnection(self.ctx)
        transport = MemoryTransport(self.reactor)
        transport.protocol = proto
        proto.makeConnection(transport)
        return proto, transport

    def settle(self, seconds: float = 0.0) -> None:
        self.reactor.advance(seconds)

    def pending_connects(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, *_ in self.reactor.tcpClients[self.taken:]]

    def node_connection(self) -> tuple[NodeConnection, MemoryTransport]:
        """The oldest connection attempt not yet taken, completed: TCP up and the TLS handshake done."""
        host, _, tls_factory, *_ = self.reactor.tcpClients[self.taken]
        self.taken += 1
        connect = tls_factory.wrapped
        proto = connect.buildProtocol(None)
        transport = MemoryTransport(self.reactor, host)
        transport.protocol = proto
        proto.makeConnection(transport)
        proto.handshakeCompleted()
        return proto, transport

    def fail_connect(self, reason: str = "refused") -> None:
        tls_factory = self.reactor.tcpClients[self.taken][2]
        self.taken += 1
        tls_factory.wrapped.clientConnectionFailed(None, Failure(ConnectionRefusedError(reason)))

    def access_lines(self, events: list[dict[str, Any]]) -> list[str]:
        return [e["line"] for e in events if "line" in e]


def response(status: int = 200, body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), extra, body)
