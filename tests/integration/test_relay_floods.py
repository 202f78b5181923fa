"""The real relay under floods an adversarial review found: idle TCP connections kept alive by Bindings, big
half-frames, a user churning allocations or filling the retransmission cache, a stream that turns unframeable.
Each test sets a small limit in the config so the flood is a few hundred packets, not twenty thousand."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import struct
import time

from relay import stun
from relay.stun import Attr, Method
from tests.support.relay_process import RawTurnClient, RelayProcess, binding_request, error_code, udp_binding


def tcp_binding(conn: socket.socket, timeout: float = 2.0) -> stun.Message | None:
    """One Binding over an open TCP connection: the answer, or None when the relay closed the connection."""
    request, transaction_id = binding_request()
    conn.settimeout(timeout)
    try:
        conn.sendall(request)
        data = b""
        while len(data) < 20 or len(data) < 20 + struct.unpack("!H", data[2:4])[0]:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
    except (ConnectionError, TimeoutError, OSError):
        return None
    response = stun.parse(data)
    assert response.transaction_id == transaction_id
    return response


def connect(relay: RelayProcess, source: str = "127.0.0.1") -> socket.socket:
    return relay.connect_tcp(source)


def closed_by_peer(conn: socket.socket, timeout: float) -> bool:
    """Did the relay close this connection within `timeout` (reading and dropping whatever it sent)?"""
    conn.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not conn.recv(65536):
                return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return False


def test_connections_without_an_allocation_are_limited_per_source_address(tmp_path):
    relay = RelayProcess(tmp_path, tcp_unallocated_per_ip=5).start()
    conns = []
    try:
        conns = [connect(relay) for _ in range(5)]
        assert all(tcp_binding(conn) is not None for conn in conns)
        sixth = connect(relay)
        conns.append(sixth)
        assert tcp_binding(sixth) is None, "a sixth connection holding no allocation was served"
        other = connect(relay, "127.0.0.2")  # another source is not affected
        conns.append(other)
        assert tcp_binding(other) is not None
        # A connection that allocates leaves the count: its source may open another one.
        conns[0].close()  # make room for the allocating client itself
        time.sleep(0.2)
        client = RawTurnClient(relay.address, transport="tcp")
        conns.append(client.sock)
        assert error_code(client.allocate()) is None
        again = connect(relay)  # 4 idle connections and this one
        conns.append(again)
        assert tcp_binding(again) is not None
        over = connect(relay)
        conns.append(over)
        assert tcp_binding(over) is None
    finally:
        for conn in conns:
            conn.close()
        relay.stop()


def test_a_flood_of_idle_connections_leaves_file_descriptors_for_relay_sockets(tmp_path):
    relay = RelayProcess(tmp_path, tcp_unallocated_per_ip=1000).start()
    conns = []
    try:
        # The relay raised its open-files limit at start; lower it to 160: at most 40 idle connections.
        resource.prlimit(relay.process.pid, resource.RLIMIT_NOFILE, (160, 160))
        served = 0
        for i in range(200):
            conn = connect(relay, f"127.0.{1 + i // 250}.{1 + i % 250}")
            conns.append(conn)
            if tcp_binding(conn, timeout=1.0) is not None:
                served += 1
        assert served <= 40
        # Every descriptor a flood could take would have been gone by now: an allocation still gets its socket.
        client = RawTurnClient(relay.address)
        assert error_code(client.allocate()) is None
        client.close()
    finally:
        for conn in conns:
            conn.close()
        relay.stop()


def test_a_connection_without_an_allocation_is_closed_after_its_lifetime_whatever_it_sends(tmp_path):
    with (RelayProcess(tmp_path, tcp_unallocated_lifetime=5).start() as relay,
          contextlib.closing(connect(relay)) as conn):
        started = time.monotonic()
        answered = 0
        while time.monotonic() - started < 9:
            if tcp_binding(conn, timeout=1.0) is None:
                break
            answered += 1
            time.sleep(0.5)
        lasted = time.monotonic() - started
        assert answered >= 5 and lasted < 8, f"still open after {lasted:.1f} s of Bindings"


def test_a_connection_without_an_allocation_cannot_buffer_a_big_half_frame(tmp_path):
    with RelayProcess(tmp_path).start() as relay, contextlib.closing(connect(relay)) as conn:
        # A Binding header announcing 60000 bytes, then 8 KiB of it: more than anyone without an allocation needs.
        conn.sendall(struct.pack("!HHI", 0x0001, 60000, stun.MAGIC_COOKIE) + os.urandom(12) + b"\0" * 8192)
        assert closed_by_peer(conn, 3.0)


def test_the_answer_to_a_valid_frame_goes_out_before_an_unframeable_stream_is_closed(tmp_path):
    with RelayProcess(tmp_path).start() as relay, contextlib.closing(connect(relay)) as conn:
        request, transaction_id = binding_request()
        conn.sendall(request + b"\xc0" * 32)  # a Binding, then bytes that are neither STUN nor ChannelData
        conn.settimeout(3)
        data = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        response = stun.parse(data)
        assert response.transaction_id == transaction_id and response.get(Attr.XOR_MAPPED_ADDRESS) is not None


def test_one_user_filling_the_retransmission_cache_does_not_evict_another_users_answer(tmp_path):
    relay = RelayProcess(tmp_path, users={"alice": "secret", "bob": "bobs"}, transactions_per_user=50,
                         transaction_cache_bytes=65536).start()
    try:
        bob = RawTurnClient(relay.address, username="bob", password="bobs")
        bob.learn_nonce()
        transaction_id = os.urandom(12)
        allocate = bob.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], transaction_id=transaction_id)
        bob.send_bytes(allocate)
        first = bob.recv_message(transaction_id)
        assert error_code(first) is None
        alice = RawTurnClient(relay.address)
        for _ in range(400):  # each answered (437: no allocation) and cached
            alice.request(Method.REFRESH, [(Attr.LIFETIME, 600)])
        bob.send_bytes(allocate)  # bob's retransmission: the same answer, not 437 for his own allocation
        again = bob.recv_message(transaction_id)
        assert error_code(again) is None and again.get(Attr.XOR_RELAYED_ADDRESS) == first.get(Attr.XOR_RELAYED_ADDRESS)
        alice.close()
        bob.close()
    finally:
        relay.stop()


def test_allocation_log_lines_are_rate_limited_per_user_with_a_summary(tmp_path):
    relay = RelayProcess(tmp_path, users={"alice": "secret", "bob": "bobs"}).start()
    try:
        alice = RawTurnClient(relay.address)
        for _ in range(300):
            assert error_code(alice.allocate()) is None
            assert error_code(alice.request(Method.REFRESH, [(Attr.LIFETIME, 0)])) is None
        bob = RawTurnClient(relay.address, username="bob", password="bobs")
        assert error_code(bob.allocate()) is None
        deadline = time.monotonic() + 8
        while "not logged" not in relay.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = relay.log()
        alice_lines = [line for line in log.splitlines() if "TURN allocation" in line and "'alice'" in line]
        assert len(alice_lines) < 200, f"{len(alice_lines)} allocation lines for 600 events"
        assert any("not logged" in line for line in alice_lines)
        assert any("TURN allocation created" in line and "'bob'" in line for line in log.splitlines())
        alice.close()
        bob.close()
    finally:
        relay.stop()


def test_requests_from_a_source_without_allocation_are_rate_limited_and_others_still_answered(tmp_path):
    relay = RelayProcess(tmp_path, unauthenticated_rate=10, unauthenticated_burst=40).start()
    try:
        flooder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flooder.bind(("127.1.0.7", 0))
        flooder.settimeout(0.5)
        for i in range(200):  # paced (about 0.4 s in all) so that no datagram is lost in a kernel buffer
            flooder.sendto(binding_request()[0], relay.address)
            if i % 20 == 19:
                time.sleep(0.02)
        answered = 0
        try:
            while True:
                flooder.recv(2048)
                answered += 1
        except TimeoutError:
            pass
        flooder.close()
        assert 40 <= answered <= 60, f"{answered} of 200 Bindings from one source answered"
        # Another source is untouched, and a source that authenticated is trusted for its next 5-tuples.
        assert udp_binding(*relay.address, source="127.1.0.8") is not None
        alice = RawTurnClient(relay.address, source="127.1.0.9")
        assert error_code(alice.allocate()) is None
        for _ in range(60):
            assert udp_binding(*relay.address, source="127.1.0.9") is not None
        alice.close()
    finally:
        relay.stop()


def test_a_user_name_cannot_forge_a_log_line(tmp_path):
    relay = RelayProcess(tmp_path).start()
    try:
        forger = RawTurnClient(relay.address, username="eve\x85INFO forged\r\nINFO forged too", password="x")
        assert error_code(forger.allocate()) == 401  # unknown user: logged as an auth failure
        deadline = time.monotonic() + 3
        while "auth failure" not in relay.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        (line,) = [line for line in relay.log().splitlines() if "auth failure" in line]
        assert "eve\\x85INFO forged\\x0d\\x0aINFO forged too" in line
        assert not any(line.startswith("INFO forged") for line in relay.log().splitlines())
        forger.close()
    finally:
        relay.stop()
