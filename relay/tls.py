"""TURN over TLS (`turns:`, RFC 5766 2.1 / RFC 7350's port 5349): the `tls_listen` listeners of the relay.

A TLS listener is the TCP listener (relay.shell.TurnTCPConnection: framing, idle and flood bounds) with TLS under
it; the 5-tuple's transport is "tls", so allocations count as `tls` in the figures and log lines name it, and
ChannelData is padded as over TCP.

The certificate is the appliance's bundle, served exactly as the proxy serves it: `appliance.certs.ServerTLS`
(same format and checks, TLS 1.2 and 1.3 only, the same cipher list, no compression or renegotiation, the full chain
sent) over the appliance's TLS transport on the stdlib's `ssl.SSLObject` (`appliance.tls_transport`). `RelayTLS.reload`
builds a new context from the file (SIGHUP): a bad file raises and the old context stays; connections already open
keep theirs.

Why that transport and not Twisted's TLSMemoryBIOProtocol over pyOpenSSL: measured with rpturn-uclient at 1000 pps
over 10 TLS allocations, the RTT p50 was ~2.6 ms through pyOpenSSL and ~0.4 ms through the stdlib transport (every
pyOpenSSL read goes through cffi, allocates a 32 KiB buffer and ends in an exception; see appliance.tls_transport).

A handshake must finish within `HANDSHAKE_TIMEOUT` seconds or the connection is closed (counted): a flood of
half-done handshakes holds a socket and OpenSSL's buffers for that long at most, not for the TCP idle timeout.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IHandshakeListener
from zope.interface import implementer

from appliance.certs import ServerTLS
from appliance.tls_transport import TLSFactory
from relay.shell import TurnTCPConnection, TurnTCPFactory

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "RelayTLS",
    "TurnStreamConnection",
    "TurnStreamFactory",
    "TurnTLSConnection",
    "listen_tls",
    "tls_factory",
]

HANDSHAKE_TIMEOUT = 10.0  # seconds from TCP accept to a finished TLS handshake


class RelayTLS(ServerTLS):
    """The bundle for `tls_listen`: each new connection gets the current context; `reload` swaps it (a bad bundle
    raises BundleError naming the file, and the old context stays). No ALPN protocol is offered: TURN over TLS
    needs none, and the proxy's "http/1.1" would tell a client it reached an HTTP server."""

    def __init__(self, path: str) -> None:
        super().__init__(path, alpn=())

    def reload(self, path: str | None = None) -> None:
        super().reload(path or self.path)


class TurnStreamConnection(TurnTCPConnection):
    """A TURN control connection whose 5-tuple names `transport_name` ("tcp" or "tls"): TLS, if any, is done by
    whoever owns the transport (our TLS listener below, or the proxy's HTTPS port with turn_on_https)."""

    transport_name = "tls"

    def __init__(self, core: Any, local: tuple[str, int], clock: Any, transport_name: str | None = None) -> None:
        super().__init__(core, local, clock)
        if transport_name is not None:
            self.transport_name = transport_name

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.five_tuple and self.five_tuple[0] != self.transport_name:
            self.five_tuple = (self.transport_name, *self.five_tuple[1:])  # a shell without transport_name


@implementer(IHandshakeListener)
class TurnTLSConnection(TurnStreamConnection):
    """A TURN control connection inside our own TLS: transport "tls" in the 5-tuple, and a bounded handshake."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handshake_timer = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.handshake_timer = self.clock.callLater(HANDSHAKE_TIMEOUT, self.handshake_timed_out)

    def handshakeCompleted(self) -> None:
        if self.handshake_timer is not None and self.handshake_timer.active():
            self.handshake_timer.cancel()
        self.handshake_timer = None

    def handshake_timed_out(self) -> None:
        self.handshake_timer = None
        self.core.stats["tls_handshake_timeouts"] += 1
        self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:
        if self.handshake_timer is not None and self.handshake_timer.active():
            self.handshake_timer.cancel()
        self.handshake_timer = None
        super().connectionLost(reason)


class TurnTLSFactory(TurnTCPFactory):
    def buildProtocol(self, addr: Any) -> TurnTLSConnection:
        return TurnTLSConnection(self.core, self.local, self.clock)


class TurnStreamFactory(TurnTCPFactory):
    """TURN control connections over streams someone else accepted (the proxy's HTTPS port)."""

    def __init__(self, core: Any, local: tuple[str, int], clock: Any, transport_name: str) -> None:
        super().__init__(core, local, clock)
        self.transport_name = transport_name

    def buildProtocol(self, addr: Any) -> TurnStreamConnection:
        return TurnStreamConnection(self.core, self.local, self.clock, self.transport_name)


def tls_factory(core: Any, local: tuple[str, int], clock: Any, tls: RelayTLS) -> TLSFactory:
    """The factory of a `tls_listen` port: TLS around a TURN control connection (None from the TCP factory's
    limits closes the connection before any TLS work)."""
    return TLSFactory(tls, TurnTLSFactory(core, local, clock))


def listen_tls(reactor: Any, core: Any, host: str, port: int, tls: RelayTLS, sock: Any = None) -> Any:
    """A `tls_listen` listener on host:port, on `sock` when the supervisor handed one down."""
    from appliance.sockets import listen_on

    return listen_on(reactor, tls_factory(core, (host, port), reactor, tls), host, port, sock)
