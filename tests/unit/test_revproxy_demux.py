"""The HTTPS port's first-bytes demultiplexer (turn_on_https), in memory: STUN goes to the TURN handoff, TLS and
HTTP go on as before, a silent connection is closed."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from revproxy.demux import HEADER_WAIT, DemuxFactory, is_stun_start, turn_inside_tls

CLIENT = IPv4Address("TCP", "198.51.100.9", 50000)
BINDING = bytes.fromhex("000100002112a442") + bytes(12)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data


class Handoff:
    def __init__(self, refuse: bool = False) -> None:
        self.built: list[tuple[str, object, Recorder]] = []
        self.refuse = refuse

    def build(self, transport_name: str, addr: object) -> Recorder | None:
        if self.refuse:
            return None
        protocol = Recorder()
        self.built.append((transport_name, addr, protocol))
        return protocol


class TLSFactory:
    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: object) -> Recorder:
        self.built.append(Recorder())
        return self.built[-1]


def connection(handoff: Handoff, clock: Clock):
    tls = TLSFactory()
    factory = DemuxFactory(tls, handoff, clock)
    protocol = factory.buildProtocol(CLIENT)
    transport = StringTransport(peerAddress=CLIENT)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return factory, tls, protocol, transport


def test_first_bytes_of_stun_and_http_and_tls():
    assert is_stun_start(BINDING[0]) and is_stun_start(0x01)
    assert not is_stun_start(ord("G")) and not is_stun_start(0x16) and not is_stun_start(0x40)


def test_stun_in_the_clear_is_handed_to_turn_over_tcp():
    handoff, clock = Handoff(), Clock()
    factory, tls, _, transport = connection(handoff, clock)
    transport.protocol.dataReceived(BINDING[:5])
    (name, addr, turn), = handoff.built
    assert (name, addr) == ("tcp", CLIENT)
    assert transport.protocol is turn and turn.transport is transport
    assert turn.data == BINDING[:5]
    transport.protocol.dataReceived(BINDING[5:])  # later reads go straight to TURN
    assert turn.data == BINDING and not tls.built and factory.turn_connections == 1
    assert not clock.getDelayedCalls()


def test_tls_goes_to_the_tls_factory_as_before():
    handoff, clock = Handoff(), Clock()
    _, tls, _, transport = connection(handoff, clock)
    transport.protocol.dataReceived(b"\x16\x03\x01\x02\x00")
    (tls_protocol,) = tls.built
    assert transport.protocol is tls_protocol and tls_protocol.data == b"\x16\x03\x01\x02\x00"
    assert not handoff.built


def test_turn_refused_by_the_relays_limits_closes_the_connection():
    _, _, _, transport = connection(Handoff(refuse=True), Clock())
    transport.protocol.dataReceived(BINDING)
    assert transport.disconnecting


def test_a_connection_that_sends_nothing_is_closed():
    clock = Clock()
    _, _, _, transport = connection(Handoff(), clock)
    clock.advance(HEADER_WAIT - 0.1)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting


class FakeTLS(StringTransport):
    def __init__(self) -> None:
        super().__init__(peerAddress=CLIENT)
        self.wrapped: Protocol | None = None


def test_stun_inside_tls_switches_the_tls_connection_to_turn_over_tls():
    handoff = Handoff()
    http = Recorder()
    tls = FakeTLS()
    tls.wrapped = http
    http.makeConnection(tls)
    assert turn_inside_tls(handoff, http, BINDING)
    (name, addr, turn), = handoff.built
    assert name == "tls" and addr == CLIENT
    assert tls.wrapped is turn and turn.data == BINDING and http.data == b""


def test_http_inside_tls_stays_http_and_without_turn_nothing_is_looked_at():
    http = Recorder()
    tls = FakeTLS()
    http.makeConnection(tls)
    assert not turn_inside_tls(Handoff(), http, b"GET / HTTP/1.1\r\n")
    assert not turn_inside_tls(None, http, BINDING)
