"""TURN over TLS in memory: the relay's TLS listener protocol around the real core, with a real TLS client (iosim
pumps the bytes, task.Clock drives the timers). The real `twistd` process is driven in the integration tests."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from twisted.internet import protocol, ssl
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, connectedServerAndClient

from appliance.certs import BundleError
from relay.stun import Attr, Message, MessageClass, Method, encode, parse, tcp_frame_length
from relay.tls import HANDSHAKE_TIMEOUT, RelayTLS, tls_factory
from tests.support.relay_fakes import SERVER, TurnHarness
from tests.support.revproxy_process import Pki

CLIENT = IPv4Address("TCP", "198.51.100.20", 40123)


class TCPStringTransport(StringTransport):
    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class FrameClient(protocol.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.frames: list[bytes] = []
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while (size := tcp_frame_length(self.buffer[:20])) is not None and len(self.buffer) >= size:
            self.frames.append(self.buffer[:size])
            self.buffer = self.buffer[size:]

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


def connect(harness: TurnHarness, pki: Pki, clock: Clock):
    server_factory = tls_factory(harness.server, SERVER, clock, RelayTLS(str(pki.bundle)))
    with open(pki.root, "rb") as f:
        options = ssl.optionsForClientTLS("localhost", trustRoot=ssl.Certificate.loadPEM(f.read()))
    client_factory = TLSMemoryBIOFactory(options, True, protocol.Factory.forProtocol(FrameClient))
    client_factory.protocol = TLSMemoryBIOProtocol  # writes go out at once, not on a later reactor turn

    def server():
        return server_factory.buildProtocol(CLIENT)

    def client():
        return client_factory.buildProtocol(IPv4Address("TCP", *SERVER))

    def server_transport(p):
        return FakeTransport(p, isServer=True, hostAddress=IPv4Address("TCP", *SERVER), peerAddress=CLIENT)

    client_tls, server_tls, pump = connectedServerAndClient(server, client, serverTransportFactory=server_transport,
                                                            clock=clock)
    return client_tls, server_tls, pump


def accepted(pki: Pki):
    """A tls_listen connection as the server accepted it, on an in-memory TCP transport, nothing received yet:
    (harness, clock, the server's TLS protocol, its transport)."""
    harness, clock = TurnHarness(), Clock()
    server_tls = tls_factory(harness.server, SERVER, clock, RelayTLS(str(pki.bundle))).buildProtocol(CLIENT)
    transport = TCPStringTransport(peerAddress=CLIENT, hostAddress=IPv4Address("TCP", *SERVER))
    server_tls.makeConnection(transport)
    return harness, clock, server_tls, transport


def binding() -> bytes:
    return encode(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12), []))


def test_binding_over_tls_is_answered_with_the_clients_address(pki: Pki) -> None:
    harness, clock = TurnHarness(), Clock()
    client_tls, server_tls, pump = connect(harness, pki, clock)
    client_tls.write(binding())
    pump.flush()
    reply = parse(client_tls.wrappedProtocol.frames[0])
    assert reply.msg_class == MessageClass.SUCCESS
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) == ("198.51.100.20", 40123)
    assert server_tls.wrapped.five_tuple[0] == "tls"


def test_allocation_over_tls_counts_as_tls_and_pads_channel_data(pki: Pki) -> None:
    harness, clock = TurnHarness(), Clock()
    client_tls, server_tls, pump = connect(harness, pki, clock)
    turn = harness.client("alice", address=("198.51.100.20", 40123), transport="tls")

    def exchange(data: bytes) -> Message:
        before = len(client_tls.wrappedProtocol.frames)
        client_tls.write(data)
        pump.flush()
        return parse(client_tls.wrappedProtocol.frames[before])

    challenge = exchange(encode(turn.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])))
    turn.nonce = challenge.get(Attr.NONCE)
    reply = exchange(turn.signed(turn.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])))
    assert reply.msg_class == MessageClass.SUCCESS, reply
    (allocation,) = harness.server.allocations.values()
    assert allocation.five_tuple[0] == "tls"
    assert allocation.pad  # ChannelData over TLS is padded as over TCP (RFC 5766 11.5)
    server_tls.transport.loseConnection()
    pump.flush()
    assert not harness.server.allocations  # the allocation goes with its connection


def test_handshake_that_does_not_finish_in_time_is_closed_and_counted(pki: Pki) -> None:
    harness, clock, server_tls, transport = accepted(pki)
    server_tls.dataReceived(b"\x16\x03\x01")  # the start of a ClientHello, and then nothing
    clock.advance(HANDSHAKE_TIMEOUT - 0.1)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    assert harness.server.stats["tls_handshake_timeouts"] == 1


def test_garbage_instead_of_a_handshake_closes_the_connection(pki: Pki) -> None:
    _, clock, server_tls, transport = accepted(pki)
    server_tls.dataReceived(b"GET / HTTP/1.1\r\n\r\n" * 10)
    assert transport.disconnecting
    server_tls.connectionLost(Failure(ConnectionDone()))
    assert not [call for call in clock.getDelayedCalls() if call.active()]  # no timer outlives the connection


def test_reload_with_a_bad_bundle_keeps_the_old_context(pki: Pki, tmp_path: Path) -> None:
    tls = RelayTLS(str(pki.bundle))
    context = tls.context
    bad = tmp_path / "bad.pem"
    bad.write_bytes(pki.key_pem + pki.leaf_pem)  # key before certificate: the wrong order
    with pytest.raises(BundleError, match=r"bad\.pem"):
        tls.reload(str(bad))
    assert tls.context is context and tls.path == str(pki.bundle)
    tls.reload()
    assert tls.context is not context


def test_no_alpn_protocol_is_offered(pki: Pki) -> None:
    """TURN over TLS is no HTTP server: a client offering http/1.1 gets no ALPN protocol selected."""
    import ssl as stdlib_ssl

    client_context = stdlib_ssl.create_default_context(cafile=str(pki.root))
    client_context.set_alpn_protocols(["http/1.1"])
    c_in, c_out, s_in, s_out = (stdlib_ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(c_in, c_out, server_hostname="localhost")
    server = RelayTLS(str(pki.bundle)).wrap(s_in, s_out)
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(stdlib_ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert server.version() is not None and client.version() is not None  # the handshake finished
    assert client.selected_alpn_protocol() is None and server.selected_alpn_protocol() is None
