"""The client side, Twisted: one client connection (plaintext, under the TLS transport), HTTP/1.1 keep-alive and
pipelining, one exchange at a time.

The connection's own state is a `ConnState`: request heads are parsed here (`HeadBuffer`, incremental), each request
becomes an `Exchange` run by a `Forwarder`, the request body is decoded and handed on, and bytes of pipelined
requests are held back (reading paused beyond 16 KiB) until the current response is done.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol, ServerFactory
from zope.interface import implementer

from revproxy import http1
from revproxy.demux import turn_inside_tls
from revproxy.exchange import Exchange
from revproxy.forward import Forwarder
from revproxy.heads import simple_response
from revproxy.http1 import MAX_HEAD, NONE, HeadBuffer, HTTPError
from revproxy.timers import Deadline

if TYPE_CHECKING:
    from revproxy.context import ProxyContext


_CR_LF = (0x0D, 0x0A)


class ConnState(enum.Enum):
    IDLE = "idle"  # between requests: the keep-alive timeout runs
    HEAD = "head"  # a request head is arriving in pieces: client_timeout runs
    BUSY = "busy"  # an exchange runs; bytes of later (pipelined) requests are held
    TUNNEL = "tunnel"  # after a 101: bytes go straight to the node
    CLOSING = "closing"  # nothing more is read


# The states as module names for the per-read code: on Python 3.11 each `ConnState.IDLE` goes through the enum
# metaclass's __getattr__ slot (hundreds of instructions, ~10 a request here); a module global is a cached load.
IDLE, HEAD, BUSY, TUNNEL, CLOSING = (ConnState.IDLE, ConnState.HEAD, ConnState.BUSY, ConnState.TUNNEL,
                                     ConnState.CLOSING)


@implementer(IHandshakeListener)
class ClientConnection(Deadline, Protocol):
    def __init__(self, ctx: ProxyContext, client_ip: str = "") -> None:
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.state = IDLE
        self.heads = HeadBuffer(MAX_HEAD)
        self.forwarder: Forwarder | None = None
        self.body: http1.BodyReader | None = None
        self.tunnel: Any = None
        self.held = False  # reading paused: too many pipelined bytes held
        self.client_ip = client_ip
        self.client_ip_bytes = client_ip.encode()
        self.counted = False  # counted in the context's connection limits (see ProxyFactory)

    def connectionMade(self) -> None:
        # Responses go out as a head write then body writes: with Nagle on, the second small TLS record waits
        # for the client's delayed ACK (40 ms per 64 KiB response).
        self.transport.setTcpNoDelay(True)
        if not self.client_ip:
            self.client_ip = client_address(self.transport.getPeer())
            self.client_ip_bytes = self.client_ip.encode()
        self.ctx.connections.add(self)
        if self.counted:
            self.ctx.idle[self] = None
        # Until the TLS handshake is done: a half-done handshake holds ~35 KiB, so it gets a short time of its own.
        self.set_deadline(self.ctx.config.tls_handshake_timeout)

    def handshakeCompleted(self) -> None:
        if self.state is IDLE:
            self.set_deadline(self.ctx.config.keepalive_timeout)

    def dataReceived(self, data: bytes) -> None:
        """The connection's first bytes land here, once: the place to look at them before they are taken as HTTP
        (protocol detection). Every later read goes straight to `received`."""
        self.dataReceived = self.received  # type: ignore[method-assign]
        if self.ctx.turn_handoff is not None and turn_inside_tls(self.ctx.turn_handoff, self, data):
            self.hand_over()  # TURN over TLS on the HTTPS port: the relay has the connection now
            return
        self.received(data)

    def hand_over(self) -> None:
        """This connection stops being HTTP (another protocol takes the transport, e.g. TURN on the HTTPS port):
        it no longer counts in the limits, and its timer stops."""
        self.ctx.connections.discard(self)
        self.ctx.release(self)
        self.cancel_deadline()
        self.state = CLOSING

    def received(self, data: bytes) -> None:
        state = self.state
        if state is TUNNEL:
            self.tunnel.write(data)
        elif self.body is not None:
            self.feed_body(data)
        elif state is CLOSING:
            return
        elif state is BUSY:  # pipelined: hold until the current response is done
            self.heads.append(data)
            if len(self.heads.data) > MAX_HEAD and not self.held:
                self.held = True
                self.transport.pauseProducing()
        else:
            self.heads.append(data, skip_blank_lines=state is IDLE)
            self.parse_heads()

    def parse_heads(self) -> None:
        heads = self.heads
        while heads.data and (self.state is IDLE or self.state is HEAD):
            if self.state is IDLE and heads.data[0] in _CR_LF:  # (a call only when there are some)
                heads.strip_blank_lines()  # RFC 9112 2.2: ignore blank lines before a request
                if not heads.data:
                    return
            try:
                raw = heads.pop()
                if raw is None:
                    if self.state is IDLE:  # a head in pieces: it must be complete within client_timeout
                        self.state = HEAD
                        self.set_deadline(self.ctx.config.client_timeout)
                    return
                head = http1.parse_request(raw)
            except HTTPError as e:
                self.refuse(e)
                return
            self.start(head)

    def start(self, head: http1.Head) -> None:
        fw = Forwarder(self, Exchange(head, self.client_ip, self.reactor.seconds()))
        self.forwarder = fw
        self.state = BUSY
        if self.counted:
            self.ctx.idle.pop(self, None)
        if head.framing == NONE:
            self.deadline = None  # (set_deadline(None), inlined: once per request)
            fw.start()
        else:
            self.body = http1.BodyReader(head.framing, head.length)
            fw.start()
            rest = self.heads.take()
            if rest and self.body is not None:
                self.feed_body(rest)

    def feed_body(self, data: bytes) -> None:
        fw = self.forwarder
        body = self.body
        try:
            pieces, rest = body.feed(data)  # type: ignore[union-attr]
        except HTTPError as e:
            self.body = None
            if fw is not None and not fw.ex.done:
                fw.fail(e.status, e.detail)
            else:
                self.refuse(e)
            return
        if fw is not None and not fw.ex.done:
            for piece in pieces:
                fw.request_data(piece)
        if self.body is None:
            return
        if body.done:  # type: ignore[union-attr]
            self.body = None
            self.set_deadline(None)
            if rest:
                self.heads.append(rest)
            if self.forwarder is not None:
                self.forwarder.request_complete()
        else:
            self.set_deadline(self.ctx.config.client_timeout)

    def start_tunnel(self, node_transport: Any) -> None:
        self.state = TUNNEL
        self.tunnel = node_transport
        self.set_deadline(None)

    def response_done(self, keep_alive: bool) -> None:
        """The exchange wrote its last byte. A connection whose request body has not all arrived is closed: the
        exchange only keeps it alive when it had (an answer before the body's end says Connection: close)."""
        self.forwarder = None
        if not keep_alive or self.ctx.draining or self.body is not None:
            self.state = CLOSING
            self.transport.loseConnection()
            return
        self.state = IDLE
        if self.counted:
            self.ctx.idle[self] = None  # the most recently idle last: closed last when room is needed
        self.set_deadline(self.ctx.config.keepalive_timeout, exact=False)
        if self.held:
            self.held = False
            self.transport.resumeProducing()
        if self.heads.data:
            self.parse_heads()

    def refuse(self, error: HTTPError) -> None:
        """Answer a bad request ourselves and close: the byte stream can no longer be trusted."""
        self.ctx.client_event("{client} refused: {status} {detail}", client=self.client_ip, status=error.status,
                              detail=error.detail)
        self.state = CLOSING
        self.body = None
        self.transport.write(simple_response(error.status, error.detail.encode() + b"\n"))
        self.transport.loseConnection()

    def _on_deadline(self) -> None:
        if self.forwarder is None or self.body is not None:
            if self.state is HEAD or self.body is not None:
                self.ctx.client_event("{client} closed: request did not finish arriving within client_timeout",
                                      client=self.client_ip)
            self.state = CLOSING
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.ctx.connections.discard(self)
        self.ctx.release(self)
        self.cancel_deadline()
        self.state = CLOSING
        if self.tunnel is not None:
            self.tunnel.loseConnection()
        if self.forwarder is not None:
            self.forwarder.client_gone()


class ProxyFactory(ServerFactory):
    noisy = False

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx

    def buildProtocol(self, addr: Any) -> ClientConnection | None:
        """None (the connection is closed at once) when the connection limits say so: no TLS work is done for it."""
        ip = client_address(addr)
        if not self.ctx.admit(ip):
            return None
        conn = ClientConnection(self.ctx, ip)
        conn.counted = True
        return conn


def client_address(addr: Any) -> str:
    host = addr.host
    return host[7:] if host.startswith("::ffff:") else host
