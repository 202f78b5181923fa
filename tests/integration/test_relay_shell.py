"""The Twisted shell's own pieces: UDP sockets, DONT-FRAGMENT, TCP framing across segment boundaries."""

import os
import socket
import time

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from relay import stun
from relay.datagram import IP_MTU_DISCOVER, IP_PMTUDISC_DO
from relay.shell import TCP_IDLE_TIMEOUT, DatagramSocket, open_udp_socket, unmap
from relay.stun import Attr, Method
from tests.support.relay_fakes import TurnHarness
from tests.support.relay_process import RawTurnClient, RelayProcess, error_code


class RecordingReactor:
    def __init__(self):
        self.readers = set()

    def addReader(self, reader):
        self.readers.add(reader)

    def removeReader(self, reader):
        self.readers.discard(reader)


def test_dont_fragment_sets_df_on_the_relay_socket():
    reactor = RecordingReactor()
    endpoint = DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0), lambda data, addr: None, "test")
    try:
        assert endpoint.set_dont_fragment()
        assert endpoint.sock.getsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER) == IP_PMTUDISC_DO
    finally:
        endpoint.close()
    assert reactor.readers == set()


def test_datagram_socket_reads_a_burst_and_survives_a_failing_handler():
    reactor = RecordingReactor()
    seen = []

    def handler(data, addr):
        seen.append(data)
        if data == b"boom":
            raise RuntimeError("handler bug")

    endpoint = DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0), handler, "test")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for payload in (b"one", b"boom", b"three"):
            sender.sendto(payload, endpoint.sock.getsockname())
    time.sleep(0.05)
    endpoint.doRead()
    endpoint.close()
    assert seen == [b"one", b"boom", b"three"]


def test_writes_that_the_kernel_refuses_are_counted_not_raised():
    reactor = RecordingReactor()
    endpoint = DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0), lambda data, addr: None, "test")
    endpoint.write(b"x" * 70000, ("127.0.0.1", 9))  # larger than any UDP datagram: EMSGSIZE
    endpoint.close()
    assert endpoint.write_errors == 1


def test_dual_stack_addresses_are_unmapped():
    assert unmap("::ffff:192.0.2.1") == "192.0.2.1"
    assert unmap("2001:db8::1") == "2001:db8::1"


def test_tcp_frames_split_byte_by_byte_are_reassembled(tmp_path):
    relay = RelayProcess(tmp_path).start()
    try:
        turn = RawTurnClient(relay.address, transport="tcp")
        turn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        turn.learn_nonce()
        transaction_id = os.urandom(12)
        request = turn.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], transaction_id=transaction_id)
        binding = stun.encode(stun.Message(Method.BINDING, stun.MessageClass.REQUEST, os.urandom(12), []))
        for byte in request + binding:  # one segment per byte, and two messages back to back
            turn.sock.send(bytes([byte]))
        response = turn.recv_message(transaction_id)
        assert error_code(response) is None
        assert turn.recv_message().method == Method.BINDING
        turn.close()
    finally:
        relay.stop()


def tcp_connection(harness, clock):
    from twisted.internet.testing import StringTransport

    from relay.shell import TurnTCPFactory

    class TCPTransport(StringTransport):
        def setTcpNoDelay(self, enabled):
            self.nodelay = enabled

    connection = TurnTCPFactory(harness.server, ("127.0.0.1", 3478), clock).buildProtocol(None)
    transport = TCPTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    connection.makeConnection(transport)
    return connection, transport


def test_idle_tcp_connection_without_allocation_is_closed():
    harness, clock = TurnHarness(), Clock()
    connection, transport = tcp_connection(harness, clock)
    connection.dataReceived(b"\x00\x01\x00\x08")  # half a Binding request, then nothing
    clock.advance(TCP_IDLE_TIMEOUT + 1)
    assert transport.disconnecting
    assert harness.server.stats["tcp_idle_closed"] == 1


def test_tcp_connection_that_keeps_sending_frames_stays_open():
    harness, clock = TurnHarness(), Clock()
    connection, transport = tcp_connection(harness, clock)
    binding = stun.encode(stun.Message(Method.BINDING, stun.MessageClass.REQUEST, os.urandom(12), []))
    for _ in range(5):
        connection.dataReceived(binding)
        clock.advance(TCP_IDLE_TIMEOUT)
    assert not transport.disconnecting
    connection.connectionLost(None)
    assert not clock.getDelayedCalls()


def test_dual_stack_listener_answers_ipv4_and_ipv6_clients(tmp_path):
    relay = RelayProcess(tmp_path, host="127.0.0.1", listen_host="::").start()  # start() probes over IPv4
    try:
        for host in ("127.0.0.1", "::1"):
            turn = RawTurnClient((host, relay.port))
            response = turn.allocate()
            assert error_code(response) is None
            assert response.get(Attr.XOR_MAPPED_ADDRESS) == turn.local_address  # IPv4 seen unmapped
            assert response.get(Attr.XOR_RELAYED_ADDRESS)[0] == "127.0.0.1"
            turn.close()
        assert "Traceback" not in relay.log()
    finally:
        relay.stop()
