"""An allocation's lifetime in the TURN core: Refresh (RFC 5766 7) extending it or deleting it with LIFETIME 0,
expiry, a lost TCP connection, close() and reconfigure(), and the allocation_refreshed / allocation_deleted log
lines with their reason and traffic. Fixtures: tests/unit/conftest.py.
"""

import dataclasses

from relay.policy import PeerPolicy
from relay.stun import Attr, Method, parse
from tests.support.relay_fakes import OTHER_PEER, PEER, error_code, logged

# --- Refresh (RFC 5766 7) ---


def test_refresh_extends_the_lifetime(harness, allocated):
    harness.advance(500)
    assert allocated.refresh().get(Attr.LIFETIME) == 600
    harness.advance(500)
    assert allocated.allocation is not None


def test_refresh_is_logged(allocated, events):
    allocated.refresh(1000)
    (event,) = logged(events, "allocation_refreshed")
    assert event["lifetime"] == 1000 and event["user"] == "alice"


def test_refresh_with_lifetime_0_deletes_the_allocation_frees_the_port_and_closes_the_socket(harness, allocated):
    socket = allocated.relay_socket()
    reply = allocated.refresh(0)
    assert error_code(reply) is None and reply.get(Attr.LIFETIME) == 0
    assert not harness.server.allocations and socket.closed and harness.ports.held == set()


def test_refresh_without_allocation_gets_437(client):
    assert error_code(client.refresh()) == 437


def test_refresh_by_another_user_on_the_same_five_tuple_gets_441(harness, allocated):
    bob = harness.client("bob")  # same client address and port as alice
    assert error_code(bob.refresh()) == 441
    assert allocated.allocation is not None


def test_retransmitted_refresh_0_gets_the_same_success_not_437(harness, allocated):
    request = allocated.signed(allocated.message(Method.REFRESH, [(Attr.LIFETIME, 0)]))
    first = harness.server.handle_stun(request, allocated.five_tuple, allocated.received)
    assert harness.server.handle_stun(request, allocated.five_tuple, allocated.received) == first
    assert error_code(parse(first)) is None


# --- expiry and deletion ---


def test_expired_allocation_frees_its_port_and_closes_its_relay_socket(harness, allocated):
    socket = allocated.relay_socket()
    harness.advance(599)
    assert allocated.allocation is not None
    harness.advance(1)
    assert allocated.allocation is None and socket.closed and harness.ports.held == set()
    assert harness.server.quota.per_user == {}


def test_client_can_allocate_again_after_expiry(harness, allocated):
    harness.advance(600)
    assert error_code(allocated.allocate()) is None


def test_expired_permission_stops_relaying_both_ways(harness, allocated):
    allocated.create_permission(PEER)
    harness.advance(300)
    allocated.send_indication(PEER, b"late")
    allocated.relay_socket().receive(b"late", PEER)
    assert allocated.relay_socket().writes == [] and allocated.received.sent == []


def test_lost_tcp_connection_deletes_its_allocation(harness, events):
    client = harness.client("alice", transport="tcp")
    client.allocate()
    socket = client.relay_socket()
    harness.server.connection_lost(client.five_tuple)
    assert client.allocation is None and socket.closed and harness.ports.held == set()
    assert logged(events, "allocation_deleted")[0]["reason"] == "connection-lost"


def test_close_deletes_every_allocation_and_reservation(harness):
    harness.client("alice", address=("198.51.100.7", 1)).allocate((Attr.EVEN_PORT, True))
    harness.client("bob", address=("198.51.100.7", 2)).allocate()
    harness.server.close()
    assert not harness.server.allocations and harness.ports.held == set() and harness.opener.open_ports == set()


def test_deletion_is_logged_with_reason_and_traffic_each_way(harness, allocated, events):
    allocated.create_permission(PEER)
    allocated.send_indication(PEER, b"12345")
    allocated.relay_socket().receive(b"123", PEER)
    harness.advance(600)
    (event,) = logged(events, "allocation_deleted")
    assert event["reason"] == "expired" and event["user"] == "alice"
    assert (event["packets_from_client"], event["bytes_from_client"]) == (1, 5)
    assert (event["packets_to_client"], event["bytes_to_client"]) == (1, 3)


def test_refresh_0_is_logged_as_the_deletion_reason(allocated, events):
    allocated.refresh(0)
    assert logged(events, "allocation_deleted")[0]["reason"] == "refresh-0"


def test_shutdown_is_logged_as_the_deletion_reason(harness, allocated, events):
    harness.server.close()
    assert logged(events, "allocation_deleted")[0]["reason"] == "shutdown"


def test_reconfigure_keeps_allocations_and_applies_the_new_policy_to_new_permissions(harness, allocated):
    allocated.create_permission(PEER)
    harness.server.reconfigure(policy=PeerPolicy(), settings=dataclasses.replace(harness.settings, software="x"))
    assert allocated.allocation is not None and PEER[0] in allocated.allocation.permissions
    reply = allocated.create_permission(OTHER_PEER)
    assert error_code(reply) == 403 and reply.get(Attr.SOFTWARE) == "x"
