"""The core's per-listener look-up of UDP allocations by client address (`TurnServer.udp_allocations`), which the
UDP listener uses for every datagram instead of a 5-tuple: it must stay in step with the allocation table."""

from __future__ import annotations

from relay.shell import TurnUDPListener
from relay.stun import encode_channel_data
from tests.support.relay_fakes import SERVER, TurnHarness

PEER = ("127.0.0.1", 5000)


def test_a_udp_allocation_is_found_by_its_client_address_until_it_is_deleted():
    harness = TurnHarness()
    client = harness.client("alice", address=("198.51.100.7", 40000))
    client.allocate()
    assert harness.server.udp_allocations(SERVER) == {("198.51.100.7", 40000): client.allocation}
    assert harness.server.udp_allocations(("127.0.0.1", 3479)) == {}  # another listener's clients are not here
    client.refresh(lifetime=0)
    assert harness.server.udp_allocations(SERVER) == {}


def test_expired_allocations_leave_the_look_up():
    harness = TurnHarness()
    client = harness.client("alice")
    client.allocate(lifetime=600)
    harness.advance(601)
    assert client.allocation is None
    assert harness.server.udp_allocations(SERVER) == {}


def test_tcp_allocations_are_not_in_the_udp_look_up():
    harness = TurnHarness()
    client = harness.client("alice", transport="tcp")
    client.allocate()
    assert client.allocation is not None
    assert harness.server.udp_allocations(SERVER) == {}


def test_the_listener_relays_channel_data_of_a_client_it_finds_by_address():
    harness = TurnHarness()
    client = harness.client("alice", address=("198.51.100.7", 40000))
    client.allocate()
    client.channel_bind(0x4000, PEER)
    listener = TurnUDPListener(harness.server, SERVER)
    listener.datagramReceived(encode_channel_data(0x4000, b"media"), ("198.51.100.7", 40000))
    assert client.relay_socket().writes == [(b"media", PEER)]
    listener.datagramReceived(encode_channel_data(0x4000, b"x"), ("198.51.100.7", 40001))  # no allocation
    listener.datagramReceived(b"\x40\x00\x00", ("198.51.100.7", 40000))  # shorter than the header
    assert client.relay_socket().writes == [(b"media", PEER)]
    assert harness.server.stats["channel_data_dropped"] == 2


def test_a_new_allocation_from_the_same_address_replaces_the_old_in_the_look_up():
    harness = TurnHarness()
    client = harness.client("alice", address=("198.51.100.7", 40000))
    client.allocate()
    first = client.allocation
    client.refresh(lifetime=0)
    client.allocate()
    assert client.allocation is not first
    assert harness.server.udp_allocations(SERVER) == {("198.51.100.7", 40000): client.allocation}
