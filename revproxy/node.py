"""The node side, Twisted: one TLS connection to a Conferencing Node, and one attempt to open such a connection.

`NodeConnection` writes what its `Forwarder` gives it, parses the response head (interim 1xx responses dropped)
and decodes the body into pieces for the forwarder, then waits in the connection pool for the next request. It
tells the forwarder how it failed as a `NodeFailure`. `Connect` bounds a new connection (TCP and TLS handshake)
by the connect timeout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from appliance.tls_transport import TLSFactory
from revproxy import http1
from revproxy.balancer import Node
from revproxy.exchange import Phase
from revproxy.failover import NodeFailure
from revproxy.http1 import UNTIL_CLOSE, HeadBuffer, HTTPError
from revproxy.timers import Deadline

if TYPE_CHECKING:
    from revproxy.context import ProxyContext
    from revproxy.forward import Forwarder

log = Logger(namespace="revproxy")
MAX_RESPONSE_HEAD = 64 * 1024


@implementer(IHandshakeListener)
class NodeConnection(Deadline, Protocol):
    def __init__(self, ctx: ProxyContext, node: Node, pending: Forwarder | None) -> None:
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.node = node
        self.pending = pending
        self.forwarder: Forwarder | None = None
        self.heads = HeadBuffer(MAX_RESPONSE_HEAD, 502)
        self.head: http1.Head | None = None
        self.reader: http1.BodyReader | None = None
        self.reused = False
        self.got_any = False
        self.timed_out = False
        self.idle = False
        self.tunnel: Any = None
        self.connector: Connect | None = None

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # the request head and body are separate writes: no Nagle stall
        fw, self.pending = self.pending, None
        self.ctx.upstreams.all.add(self)
        if fw is None or fw.ex.done:
            self.transport.abortConnection()
            return
        self.attach(fw)

    def handshakeCompleted(self) -> None:
        if self.connector is not None:
            self.connector.connected()
            self.connector = None

    def attach(self, fw: Forwarder) -> None:
        self.forwarder = fw
        self.got_any = False
        self.idle = False
        fw.upstream_ready(self)

    def abandon(self) -> None:
        """Drop this connection mid-exchange: it cannot be reused."""
        self.forwarder = None
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        fw = self.forwarder
        if fw is None:  # bytes on an idle connection: the node broke framing; never reuse it
            self.transport.abortConnection()
            return
        self.received(fw, data)
        if fw.out:
            fw.flush()

    def received(self, fw: Forwarder, data: bytes) -> None:
        """The read timeout restarts only where the response goes on past this read: a response that ends here
        (nearly every API answer) clears it in `end`, so restarting it first would be a call for nothing."""
        self.got_any = True
        if self.reader is None:
            heads = self.heads
            heads.append(data)
            while True:
                try:
                    raw = heads.pop()
                    if raw is None:
                        if self.deadline is not None:
                            self.set_deadline(fw.config.upstream_read_timeout)
                        return
                    head = http1.parse_response(raw, fw.ex.head.method)
                except HTTPError as e:
                    return self.broken(fw, e.detail)
                if 100 <= head.status < 200 and head.status != 101:
                    continue  # interim response (100, 103): not forwarded
                break
            data = heads.take()
            self.head = head
            if not fw.response_head(self, head):
                return
            if self.tunnel is not None:
                if data:
                    self.tunnel.write(data)
                return
            self.reader = http1.BodyReader(head.framing, head.length)
            if self.reader.done:
                return self.end(data)
            if not data:
                if self.deadline is not None:  # (an event stream's was cancelled by response_head)
                    self.set_deadline(fw.config.upstream_read_timeout)
                fw.response_continues(self)
                return
        try:
            pieces, rest = self.reader.feed(data)
        except HTTPError as e:
            return self.broken(fw, e.detail)
        if pieces:
            fw.response_body(pieces)
        if self.reader.done:
            if self.forwarder is fw:
                self.end(rest)
            return
        if self.deadline is not None:
            self.set_deadline(fw.config.upstream_read_timeout)
        if not fw.back_pressure and self.forwarder is fw:
            fw.response_continues(self)

    def broken(self, fw: Forwarder, detail: str) -> None:
        log.warn("node {node} sent a malformed response: {detail}", node=self.node.key, detail=detail)
        self.forwarder = None
        self.transport.abortConnection()
        fw.node_failed(self, NodeFailure.BAD, detail)

    def end(self, rest: bytes) -> None:
        fw, head = self.forwarder, self.head
        self.forwarder, self.head, self.reader = None, None, None
        reusable = not rest and head.keep_alive and head.framing != UNTIL_CLOSE  # type: ignore[union-attr]
        self.deadline = None  # (set_deadline(None), inlined: once per request)
        fw.response_end(self, reusable)  # type: ignore[union-attr]

    def _on_deadline(self) -> None:
        if self.idle:
            self.transport.loseConnection()
            return
        self.timed_out = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.cancel_deadline()
        self.ctx.upstreams.discard(self)
        if self.connector is not None:
            self.connector.lost(self)
            self.connector = None
            return
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.loseConnection()
        fw, self.forwarder = self.forwarder, None
        if fw is None:
            return
        if fw.ex.phase is Phase.TUNNEL:
            fw.tunnel_closed()
            return
        if self.reader is not None and self.head is not None and self.head.framing == UNTIL_CLOSE:
            self.reader = None
            fw.response_end(self, False)
            return
        if self.timed_out:
            kind = NodeFailure.TIMEOUT
        elif self.got_any or not self.reused:
            kind = NodeFailure.LOST
        else:
            kind = NodeFailure.STALE
        fw.node_failed(self, kind)


class Connect(ClientFactory):
    """One connection attempt to a node, bounded as a whole (TCP and TLS handshake) by the connect timeout."""

    noisy = False

    def __init__(self, ctx: ProxyContext, node: Node, fw: Forwarder, timeout: float) -> None:
        self.ctx, self.node, self.forwarder = ctx, node, fw
        self.protocol_instance: NodeConnection | None = None
        self.timer = ctx.reactor.callLater(timeout, self.timed_out)
        creator = ctx.creators.get(node.key)
        wrapper = TLSFactory(creator, self)
        self.connector = ctx.reactor.connectTCP(node.host, node.port, wrapper, timeout=timeout + 1)

    def buildProtocol(self, addr: Any) -> NodeConnection:
        p = NodeConnection(self.ctx, self.node, self.forwarder)
        p.connector = self
        self.protocol_instance = p
        return p

    def connected(self) -> None:
        if self.timer.active():
            self.timer.cancel()

    def timed_out(self) -> None:
        if self.protocol_instance is not None:
            self.protocol_instance.transport.abortConnection()
        else:
            self.connector.stopConnecting()

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.report(reason.getErrorMessage())

    def lost(self, p: NodeConnection) -> None:
        """The connection closed before its TLS handshake finished: a connect failure."""
        p.forwarder = None
        self.report("closed during the TLS handshake")

    def report(self, detail: str) -> None:
        if self.timer.active():
            self.timer.cancel()
            detail = detail or "refused"
        else:
            detail = "connect timeout"
        fw, self.forwarder = self.forwarder, None
        if fw is not None and not fw.ex.done:
            fw.node_failed(None, NodeFailure.CONNECT, detail)

    def cancel(self) -> None:
        self.forwarder = None
        if self.timer.active():
            self.timer.cancel()
        p = self.protocol_instance
        if p is not None:
            p.pending = None
            p.forwarder = None
            if p.transport is not None:
                p.transport.abortConnection()
        else:
            self.connector.stopConnecting()
