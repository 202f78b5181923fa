"""TURN over TLS (`turns:`, RFC 5766 2.1 / RFC 7350's port 5349): the `tls_listen` listeners of the relay.

A TLS listener is the TCP listener (relay.shell.TurnTCPConnection: framing, idle and flood bounds) with TLS under
it; the 5-tuple's transport is "tls", so allocations count as `tls` in the figures and log lines name it, and
ChannelData is padded as over TCP.

The certificate is the appliance's bundle (appliance.certs: same format and checks as the proxy's), served with the
same policy: TLS 1.2 and 1.3 only, the proxy's TLS 1.2 cipher list (`appliance.certs.TLS12_CIPHERS`), no
compression, no renegotiation, the full chain sent. `RelayTLS.reload` builds a new context from the file (SIGHUP):
a bad file raises and the old context stays; connections already open keep theirs.

Why Twisted's TLSMemoryBIOProtocol over pyOpenSSL here, when the proxy has its own transport over the stdlib's
`ssl.SSLObject` (cheaper per connection): the relay must not import the proxy, TURN-over-TLS clients are a few
browsers per call rather than thousands of idle keep-alive connections, and per packet the cost is the same
OpenSSL record work either way.

A handshake must finish within `HANDSHAKE_TIMEOUT` seconds or the connection is closed (counted): a flood of
half-done handshakes holds a socket and OpenSSL's buffers for that long at most, not for the TCP idle timeout.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLServerConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from appliance.certs import TLS12_CIPHERS, BundleError, read_bundle
from relay.shell import TurnTCPConnection, TurnTCPFactory

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "RelayTLS",
    "TurnStreamConnection",
    "TurnStreamFactory",
    "TurnTLSConnection",
    "listen_tls",
    "tls_context",
    "tls_factory",
]

HANDSHAKE_TIMEOUT = 10.0  # seconds from TCP accept to a finished TLS handshake


def tls_context(path: str) -> SSL.Context:
    """A server context for the bundle at `path`; BundleError (naming the file) when it cannot be used."""
    read_bundle(path)  # order, key match, no encryption: one clear message before OpenSSL's own
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)  # idle connections give their record buffers back
    context.set_cipher_list(TLS12_CIPHERS.encode())
    context.set_session_id(b"rpturn-relay")
    try:
        context.use_certificate_chain_file(path)  # the leaf, then every later certificate as the chain
        context.use_privatekey_file(path)
        context.check_privatekey()
    except SSL.Error as exc:
        raise BundleError(f"{path}: OpenSSL refused it: {exc}") from None
    return context


@implementer(IOpenSSLServerConnectionCreator)
class RelayTLS:
    """Gives each new connection the current context; `reload` swaps it (a bad bundle raises, the old stays)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.context = tls_context(path)

    def reload(self, path: str | None = None) -> None:
        path = path or self.path
        self.context = tls_context(path)
        self.path = path

    def serverConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tls_protocol)  # Twisted's info callback finds the protocol through it
        return connection


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


class _TLSFactory(TLSMemoryBIOFactory):
    noisy = False
    # Not Twisted's default BufferingTLSTransport: it holds every write until the next reactor iteration to
    # aggregate small ones, which for relayed media is a delay per packet and a timer call per write.
    protocol = TLSMemoryBIOProtocol

    def buildProtocol(self, addr: Any) -> Any:
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:  # the TCP factory's limits refused the connection
            return None
        return self.protocol(self, wrapped)


def tls_factory(core: Any, local: tuple[str, int], clock: Any, tls: RelayTLS) -> TLSMemoryBIOFactory:
    """The factory of a `tls_listen` port: TLS around a TURN control connection."""
    return _TLSFactory(tls, False, TurnTLSFactory(core, local, clock))


def listen_tls(reactor: Any, core: Any, host: str, port: int, tls: RelayTLS, sock: Any = None) -> Any:
    """A `tls_listen` listener on host:port, on `sock` when the supervisor handed one down."""
    from appliance.sockets import bind_tcp

    factory = tls_factory(core, (host, port), reactor, tls)
    if sock is None:
        sock = bind_tcp(host, port)
    sock.setblocking(False)
    # adoptStreamPort duplicates the descriptor: the reactor's copy is the one that stays open.
    port_object = reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    sock.close()
    return port_object
