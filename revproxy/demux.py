"""TURN on the HTTPS port (`turn_on_https`): a connection's first bytes say whether it is HTTP or TURN.

Browsers behind firewalls that only let TLS to port 443 out need `turns:` on 443, where the proxy listens. So with
`turn_on_https` the HTTPS listener also carries TURN, told apart by the first bytes, never by ALPN (browsers' TURN
clients send none):

- on the TCP connection, before TLS: a TLS record (first byte 0x16) goes on to TLS as before; a STUN message (first
  byte 0x00 or 0x01: the two leading zero bits of every STUN message, RFC 5389 6, and a message type below 0x0200)
  is TURN over TCP, in the clear;
- inside TLS, in the first plaintext bytes: a STUN message is TURN over TLS; anything else is HTTP (a request line
  starts with a printable token character, never 0x00 or 0x01).

A TURN connection is handed to a `TurnHandoff` — the appliance composes the relay's TURN stream protocol in (the
proxy never imports the relay): it builds the protocol for a transport ("tcp" or "tls") and the client's address,
or returns None when the relay's limits refuse the connection. The connection is switched over in place: the TCP
transport's protocol (or the TLS connection's wrapped protocol) becomes the TURN protocol, which gets the bytes
read so far; nothing of the proxy stays in its path.

Cost on HTTP: the decision is made once per connection on its first read (a byte comparison), after which the TCP
transport talks to the TLS connection directly and the TLS connection to the HTTP protocol; no per-read work remains.
Without `turn_on_https` none of this is installed.
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.protocol import Protocol, ServerFactory

TLS_HANDSHAKE_RECORD = 0x16
STUN_FIRST_BYTES = (0x00, 0x01)
HEADER_WAIT = 10.0  # seconds to wait for a connection's first byte (a silent connection is closed)


class TurnHandoff(TypingProtocol):
    def build(self, transport_name: str, addr: Any) -> Protocol | None: ...


def is_stun_start(first: int) -> bool:
    """Whether a stream starting with this byte is STUN/TURN (not HTTP, not a TLS record)."""
    return first in STUN_FIRST_BYTES


def switch_protocol(transport: Any, old: Protocol, new: Protocol, data: bytes) -> None:
    """Make `new` the protocol of `transport` in place of `old`, and give it the bytes read so far."""
    transport.protocol = new
    new.makeConnection(transport)
    if data:
        new.dataReceived(data)


class FirstBytes(Protocol):
    """The TCP side of the HTTPS port with TURN on it: waits for the first byte, then becomes TLS or TURN."""

    def __init__(self, factory: DemuxFactory, addr: Any) -> None:
        self.factory = factory
        self.addr = addr
        self.timer: Any = None

    def connectionMade(self) -> None:
        self.timer = self.factory.reactor.callLater(HEADER_WAIT, self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        factory = self.factory
        if is_stun_start(data[0]):
            turn = factory.handoff.build("tcp", self.addr)
            if turn is None:
                self.transport.abortConnection()
                return
            factory.turn_connections += 1
            switch_protocol(self.transport, self, turn, data)
            return
        tls = factory.tls_factory.buildProtocol(self.addr)
        if tls is None:
            self.transport.abortConnection()
            return
        switch_protocol(self.transport, self, tls, data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


class DemuxFactory(ServerFactory):
    """The HTTPS listener's factory with `turn_on_https`: `tls_factory` (TLS around the HTTP protocol) or TURN."""

    noisy = False

    def __init__(self, tls_factory: Any, handoff: TurnHandoff, reactor: Any) -> None:
        self.tls_factory = tls_factory
        self.handoff = handoff
        self.reactor = reactor
        self.turn_connections = 0

    def buildProtocol(self, addr: Any) -> FirstBytes:
        return FirstBytes(self, addr)

    def doStart(self) -> None:
        self.tls_factory.doStart()

    def doStop(self) -> None:
        self.tls_factory.doStop()


def turn_inside_tls(handoff: TurnHandoff | None, connection: Any, data: bytes) -> bool:
    """Called with the first plaintext bytes of an HTTPS connection (`connection`, the HTTP protocol wrapped by the
    TLS transport): when they are STUN and TURN is on, switch the TLS connection over to TURN and return True."""
    if handoff is None or not data or not is_stun_start(data[0]):
        return False
    tls = connection.transport
    turn = handoff.build("tls", tls.getPeer())
    if turn is None:
        tls.abortConnection()
        return True
    tls.wrapped = turn  # the TLS transport now delivers plaintext to TURN (see TLSConnection.wrapped)
    turn.makeConnection(tls)
    turn.dataReceived(data)
    return True
