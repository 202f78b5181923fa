"""UDP GSO in the relay's batched writes (relay._mmsg.send): consecutive datagrams of one size to one address go
down the stack as one message, and what arrives is still those datagrams, each on its own, in order, whatever the
mix of sizes and destinations; where the kernel refuses a GSO message, its datagrams go one by one."""

from __future__ import annotations

import socket
import struct

import pytest

from relay import _mmsg
from tests.support.relay_loopback import drain, udp_socket

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_NO_CHECK = 11  # <asm-generic/socket.h>: a socket without UDP checksums, on which the kernel refuses GSO


def send(sock: socket.socket, items: list[tuple[bytes, tuple[str, int]]]) -> int:
    return _mmsg.send(sock.fileno(), int(sock.family), items)


def mixed_burst(first: tuple[str, int], second: tuple[str, int]) -> list[tuple[bytes, tuple[str, int]]]:
    """Runs of one size (one longer than a GSO message may be), a shorter last one, sizes that grow, empty
    datagrams, a segment too big to coalesce, the two destinations interleaved and in runs."""
    items = [(b"%03d" % n + b"a" * 97, first) for n in range(70)]  # 70 x 100 bytes: more than 64 segments
    items += [(b"short", first), (b"b" * 100, first), (b"c" * 150, first)]  # shorter ends a run, longer starts one
    items += [(b"", first), (b"", first), (b"d" * 10, second), (b"e" * 10, first), (b"f" * 10, second)]
    items += [(b"g" * 1300, second)] * 3  # above the coalescing limit: one message each
    items += [(bytes([n]) * 40, second) for n in range(20)]
    return items


def expected_at(items, address) -> list[bytes]:
    return [data for data, to in items if to == address]


@pytest.mark.parametrize("gso", ["used", "refused"])
def test_every_datagram_arrives_on_its_own_in_order(gso):
    """Mixed sizes, empty datagrams and interleaved destinations arrive as sent, whether the kernel takes the GSO
    messages or refuses them (then the datagrams go one by one)."""
    first, second, out = udp_socket(), udp_socket(), udp_socket()
    if gso == "refused":
        out.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)  # EINVAL for every GSO message on this socket
    items = mixed_burst(first.getsockname(), second.getsockname())
    assert send(out, items) == 0
    for peer in (first, second):
        assert [data for data, _ in drain(peer)] == expected_at(items, peer.getsockname())
    for sock in (first, second, out):
        sock.close()


def test_a_run_goes_as_one_gso_message():
    """A receiver with UDP_GRO takes a GSO message whole (one buffer and its segment size): the run was coalesced.
    Datagrams sent one by one would arrive one by one."""
    receiver, out = udp_socket(), udp_socket()
    receiver.setsockopt(SOL_UDP, UDP_GRO, 1)
    run = [(bytes([n]) * 100, receiver.getsockname()) for n in range(10)]
    assert send(out, run) == 0
    data, ancillary, _flags, _addr = receiver.recvmsg(65536, socket.CMSG_SPACE(4))
    assert data == b"".join(payload for payload, _ in run)
    assert [struct.unpack("=H", value[:2])[0] for level, kind, value in ancillary
            if (level, kind) == (SOL_UDP, UDP_GRO)] == [100]
    receiver.close()
    out.close()


def test_a_run_to_an_address_this_socket_cannot_reach_fails_alone():
    peer, out = udp_socket(), udp_socket()
    items = [(b"x" * 50, peer.getsockname())] * 3 + [(b"y" * 50, ("::1", 9))] * 4 + [(b"z" * 50, peer.getsockname())]
    assert send(out, items) == 4
    assert [data for data, _ in drain(peer)] == [b"x" * 50] * 3 + [b"z" * 50]
    peer.close()
    out.close()
