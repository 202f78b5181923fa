"""Twisted driver for the sans-I/O `relay.client.TurnClient`: moves its bytes over UDP, TCP or TLS and runs its
timer.

    client = yield connect(reactor, "127.0.0.1", 3478, credentials=Credentials("u", "p"))
    allocation = yield client.allocate()
    yield client.create_permission([peer]); yield client.channel_bind(peer)
    client.on_data = lambda event: ...        # DataReceived events
    client.send(peer, b"payload")
    client.close()

Every request returns a Deferred that fires with the `Success` event or fails with `RequestFailed` (a final STUN
error response, or no response: `code == relay.client.TIMEOUT`) or `TransportFailed` (connection refused or lost).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure as TwistedFailure

from relay import stun
from relay.client import (
    TIMEOUT,
    Address,
    Allocation,
    Credentials,
    DataReceived,
    Failure,
    Success,
    TurnClient,
)
from relay.client_stream import StreamFramer

log = Logger()


class RequestFailed(Exception):
    """A request got a final error response (`code`, `reason`) or none at all (`code == TIMEOUT`)."""

    def __init__(self, failure: Failure) -> None:
        self.failure = failure
        self.code = failure.code
        self.reason = failure.reason
        super().__init__(f"{failure.code} {failure.reason}" if failure.code != TIMEOUT else "no response")


class TransportFailed(Exception):
    """The connection to the server was refused or lost; nothing pending can complete."""


class TwistedTurnClient:
    """One `TurnClient` bound to one transport; see the module docstring."""

    def __init__(self, client: TurnClient, clock: IReactorTime) -> None:
        self.client = client
        self.clock = clock
        self.on_data: Callable[[DataReceived], None] | None = None
        self._write: Callable[[bytes], None] | None = None
        self._close: Callable[[], None] | None = None
        self._pending: dict[bytes, defer.Deferred[Success]] = {}
        self._timer: IDelayedCall | None = None

    # -- requests ---------------------------------------------------------------------------------------------

    def binding(self) -> defer.Deferred[Success]:
        return self._request(self.client.request_binding)

    def allocate(self, lifetime: int | None = None) -> defer.Deferred[Allocation]:
        d = self._request(lambda now: self.client.request_allocate(now, lifetime))
        return d.addCallback(lambda _: self.client.allocation)

    def refresh(self, lifetime: int | None = None) -> defer.Deferred[Success]:
        return self._request(lambda now: self.client.request_refresh(now, lifetime))

    def create_permission(self, peers: list[Address]) -> defer.Deferred[Success]:
        return self._request(lambda now: self.client.request_create_permission(now, peers))

    def channel_bind(self, peer: Address, channel: int | None = None) -> defer.Deferred[Success]:
        return self._request(lambda now: self.client.request_channel_bind(now, peer, channel))

    def send(self, peer: Address, payload: bytes) -> None:
        self.client.send_data(peer, payload)
        self._flush()

    def close(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._write = None
        if self._close is not None:
            close, self._close = self._close, None
            close()

    # -- what the transports call -----------------------------------------------------------------------------

    def attach(self, write: Callable[[bytes], None], close: Callable[[], None]) -> None:
        self._write, self._close = write, close
        self._flush()

    def frame_received(self, frame: bytes) -> None:
        for event in self.client.receive(frame, self.clock.seconds()):
            self._dispatch(event)
        self._flush()

    def transport_failed(self, reason: str) -> None:
        self._write = None
        pending, self._pending = self._pending, {}
        for d in pending.values():
            d.errback(TransportFailed(reason))
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    # -- internals --------------------------------------------------------------------------------------------

    def _request(self, start: Callable[[float], bytes]) -> defer.Deferred[Any]:
        d: defer.Deferred[Success] = defer.Deferred()
        self._pending[start(self.clock.seconds())] = d
        self._flush()
        return d

    def _dispatch(self, event: Success | Failure | DataReceived) -> None:
        if isinstance(event, DataReceived):
            if self.on_data is not None:
                self.on_data(event)
            return
        d = self._pending.pop(event.handle, None)
        if d is None:
            return  # a keepalive request the client made on its own
        if isinstance(event, Success):
            d.callback(event)
        else:
            d.errback(RequestFailed(event))

    def _flush(self) -> None:
        if self._write is not None:
            for data in self.client.data_to_send():
                self._write(data)
        self._arm_timer()

    def _arm_timer(self) -> None:
        when = self.client.next_timeout()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if when is not None and self._write is not None:
            self._timer = self.clock.callLater(max(0.0, when - self.clock.seconds()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        for event in self.client.handle_timeout(self.clock.seconds()):
            self._dispatch(event)
        self._flush()


class _UDPTransport(protocol.DatagramProtocol):
    def __init__(self, driver: TwistedTurnClient, server: Address) -> None:
        self.driver = driver
        self.server = server
        self.closing = False

    def startProtocol(self) -> None:
        # Connected: the kernel drops datagrams from anyone but the server, and reports ICMP refusals.
        self.transport.connect(*self.server)
        self.driver.attach(self.transport.write, self.close)

    def close(self) -> None:
        self.closing = True
        self.transport.stopListening()

    def stopProtocol(self) -> None:
        # The epoll reactor sees an ICMP refusal on a connected UDP socket as EPOLLERR without EPOLLIN and closes
        # the port without calling connectionRefused: a close we did not ask for is that refusal.
        if not self.closing:
            self.driver.transport_failed("connection refused (ICMP port unreachable)")

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        self.driver.frame_received(data)

    def connectionRefused(self) -> None:
        self.driver.transport_failed("connection refused (ICMP port unreachable)")


class _TCPTransport(protocol.Protocol):
    def __init__(self, driver: TwistedTurnClient, ready: defer.Deferred[TwistedTurnClient]) -> None:
        self.driver = driver
        self.ready = ready  # not "connected": Protocol.connected is Twisted's flag
        self.framer = StreamFramer()

    def connectionMade(self) -> None:
        self.driver.attach(self.transport.write, self.transport.loseConnection)
        self.ready.callback(self.driver)

    def dataReceived(self, data: bytes) -> None:
        try:
            frames = self.framer.feed(data)
        except stun.StunDecodeError as e:
            log.warn("unframeable stream from the server: {error}", error=str(e))
            self.transport.abortConnection()
            return
        for frame in frames:
            self.driver.frame_received(frame)

    def connectionLost(self, reason: TwistedFailure = protocol.connectionDone) -> None:
        self.driver.transport_failed(f"connection lost: {reason.getErrorMessage()}")


class _TCPFactory(protocol.ClientFactory):
    def __init__(self, driver: TwistedTurnClient) -> None:
        self.driver = driver
        self.connected: defer.Deferred[TwistedTurnClient] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> _TCPTransport:
        return _TCPTransport(self.driver, self.connected)

    def clientConnectionFailed(self, connector: Any, reason: TwistedFailure) -> None:
        self.connected.errback(TransportFailed(f"cannot connect: {reason.getErrorMessage()}"))


def connect(
    reactor: Any,
    host: str,
    port: int,
    *,
    tcp: bool = False,
    tls: bool = False,
    ca_file: str | None = None,
    server_name: str | None = None,
    credentials: Credentials | None = None,
    connect_timeout: float = 5.0,
    **client_options: Any,
) -> defer.Deferred[TwistedTurnClient]:
    """A client of the STUN/TURN server at host:port over UDP (the default), TCP or TLS, ready for requests.

    Over TLS the server's certificate is verified against `ca_file` (for `server_name`, default `host`) when one is
    given; without it any certificate is accepted, as turnutils_uclient does."""
    client = TurnClient(credentials, reliable=tcp or tls, **client_options)
    driver = TwistedTurnClient(client, reactor)
    if tls:
        factory = _TCPFactory(driver)
        reactor.connectSSL(host, port, factory, _client_tls_options(ca_file, server_name or host),
                           timeout=connect_timeout)
        return factory.connected
    if tcp:
        factory = _TCPFactory(driver)
        reactor.connectTCP(host, port, factory, timeout=connect_timeout)
        return factory.connected
    interface = "::" if ":" in host else "0.0.0.0"
    if host.startswith("127.") or host == "::1":
        interface = host if host == "::1" else "127.0.0.1"
    reactor.listenUDP(0, _UDPTransport(driver, (host, port)), interface=interface, maxPacketSize=65535)
    return defer.succeed(driver)


def _client_tls_options(ca_file: str | None, server_name: str) -> Any:
    from twisted.internet import ssl

    if ca_file is None:
        return ssl.CertificateOptions(raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
    with open(ca_file, "rb") as f:
        authority = ssl.Certificate.loadPEM(f.read())
    return ssl.optionsForClientTLS(server_name, trustRoot=authority)
