"""The real relay under hostile input and operator signals: it stays up, logs no traceback, keeps allocations."""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import time

import pytest

from relay import stun
from relay.stun import Attr, Method
from tests.support.relay_process import RawTurnClient, RelayProcess, error_code, udp_binding


def valid_messages() -> list[bytes]:
    """A few well-formed client messages to truncate, flip and splice."""
    txid = os.urandom(12)
    binding = stun.encode(stun.Message(Method.BINDING, stun.MessageClass.REQUEST, txid, []), fingerprint=True)
    allocate = stun.encode(
        stun.Message(Method.ALLOCATE, stun.MessageClass.REQUEST, txid, [
            (Attr.REQUESTED_TRANSPORT, 17), (Attr.USERNAME, "alice"), (Attr.REALM, "rpturn.test"),
            (Attr.NONCE, "n" * 40)]),
        integrity_key=stun.long_term_key("alice", "rpturn.test", "secret"), fingerprint=True)
    send = stun.encode(stun.Message(Method.SEND, stun.MessageClass.INDICATION, txid, [
        (Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 9)), (Attr.DATA, b"x" * 33)]))
    channel = stun.encode_channel_data(0x4000, b"payload" * 10)
    return [binding, allocate, send, channel]


def garbage_datagrams(rng: random.Random, count: int) -> list[bytes]:
    samples = valid_messages()
    out = []
    for i in range(count):
        kind = i % 6
        base = samples[i % len(samples)]
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(0, 200)))
        elif kind == 1:
            out.append(base[: rng.randrange(0, len(base))])
        elif kind == 2:
            flipped = bytearray(base)
            position = rng.randrange(len(flipped))
            flipped[position] ^= 1 << rng.randrange(8)
            out.append(bytes(flipped))
        elif kind == 3:
            # A header that claims more (or less) than is there.
            out.append(base[:2] + struct.pack("!H", rng.randrange(0, 65536)) + base[4:])
        elif kind == 4:
            out.append(struct.pack("!HH", rng.randrange(0x4000, 0x8000), rng.randrange(0, 65536)) + rng.randbytes(20))
        else:
            out.append(rng.randbytes(rng.choice([1500, 9000, 65000])))
    return out


@pytest.fixture
def relay(tmp_path):
    process = RelayProcess(tmp_path).start()
    yield process
    process.stop()


def test_thousands_of_malformed_datagrams_and_streams_leave_the_relay_serving(relay):
    rng = random.Random(5769)
    datagrams = garbage_datagrams(rng, 6000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        for i, datagram in enumerate(datagrams):
            sock.sendto(datagram, relay.address)
            if i % 200 == 0:
                time.sleep(0.005)  # bounded rate: we test parsing, not the kernel's buffers

    streams = [rng.randbytes(5000), b"\x00\x01\xff\xfc" + b"\x00" * 16, b"\xc0" * 64,
               valid_messages()[1][:30], b"".join(valid_messages()) + rng.randbytes(300),
               struct.pack("!HH", 0x4000, 0xFFFF) + b"x" * 70000]
    streams += [rng.randbytes(rng.randrange(1, 3000)) for _ in range(60)]
    for stream in streams:
        with socket.create_connection(relay.address, timeout=2) as conn:
            try:
                conn.sendall(stream)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(65536)
            except OSError:
                pass  # the relay may close a connection it cannot frame: that is the point

    time.sleep(0.5)
    assert relay.process.poll() is None, "the relay died"
    response = udp_binding(*relay.address, timeout=2)
    assert response is not None and response.get(Attr.XOR_MAPPED_ADDRESS)[0] == "127.0.0.1"
    log = relay.log()
    assert "Traceback" not in log
    assert "Unhandled" not in log
    # No per-packet logging: 6000 datagrams and 66 streams may not add thousands of lines.
    assert len(log.splitlines()) < 200


def test_sighup_reloads_users_and_keeps_allocations(relay):
    alice = RawTurnClient(relay.address)
    assert error_code(alice.allocate()) is None
    dave = RawTurnClient(relay.address, username="dave", password="new-pass")
    assert error_code(dave.allocate()) == 401

    config = relay.config_path.read_text()
    relay.config_path.write_text(config + '"dave" = "new-pass"\n')
    relay.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "configuration reloaded" not in relay.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "configuration reloaded" in relay.log()

    assert error_code(dave.allocate()) is None
    assert error_code(alice.request(Method.REFRESH, [(Attr.LIFETIME, 600)])) is None  # still there
    assert relay.process.poll() is None
    alice.close()
    dave.close()


def test_sighup_with_a_broken_config_keeps_running_on_the_old_one(relay):
    relay.config_path.write_text("[relay\n")
    relay.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "reload failed" not in relay.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reload failed" in relay.log()
    alice = RawTurnClient(relay.address)
    assert error_code(alice.allocate()) is None
    alice.close()


def test_sigterm_stops_cleanly_and_deletes_allocations(relay):
    alice = RawTurnClient(relay.address)
    assert error_code(alice.allocate()) is None
    assert relay.stop() == 0
    log = relay.log()
    assert "(shutdown)" in log
    assert "Traceback" not in log
    alice.close()
