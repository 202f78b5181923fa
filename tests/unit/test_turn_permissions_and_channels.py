"""The pure TURN core: Binding, long-term auth, Allocate/Refresh/CreatePermission/ChannelBind, relaying, expiry.

Everything runs against a real TurnServer with real credentials, nonces, peer policy and port pool; only the
clock, the relay sockets and the client's transport are fakes (tests/support/relay_fakes.py). No packet leaves the
process.
"""

import dataclasses
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

import relay.handlers
from relay.allocation import TurnSettings
from relay.policy import PeerPolicy
from relay.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    check_integrity,
    encode,
    encode_channel_data,
    parse,
    parse_channel_data,
)
from tests.support.relay_fakes import REALM, SERVER, TurnHarness, error_code
from tests.support.strategies import scaled

PEER = ("127.0.0.2", 9000)
OTHER_PEER = ("127.0.0.3", 9001)
DENIED_PEER = ("10.0.0.1", 9000)  # asked for, refused: nothing is ever sent there


@pytest.fixture
def harness():
    return TurnHarness()


@pytest.fixture
def client(harness):
    return harness.client("alice")


@pytest.fixture
def allocated(client):
    assert error_code(client.allocate()) is None
    return client


@pytest.fixture
def long_lived(client):
    """An allocation that outlives its channels (3600 s)."""
    assert client.allocate(lifetime=3600).get(Attr.LIFETIME) == 3600
    return client


@pytest.fixture
def events(harness):
    """The structured log events the core emits (through the harness's sink)."""
    return harness.events


def logged(events, name):
    return [event for event in events if event.get("event") == name]


def with_settings(**changes) -> TurnHarness:
    return TurnHarness(settings=TurnSettings(realm=REALM, relay_ip="127.0.0.1", **changes))


def raw_handle(harness, data, client_address=("198.51.100.7", 40000)):
    reply = harness.server.handle_stun(data, ("udp", client_address, SERVER), lambda _: None)
    return reply


# --- Binding (RFC 5389) ---


def test_binding_gets_xor_mapped_address_and_software_without_auth(harness):
    request = Message(Method.BINDING, MessageClass.REQUEST)
    reply = parse(raw_handle(harness, encode(request)))
    assert reply.msg_class == MessageClass.SUCCESS and reply.transaction_id == request.transaction_id
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) == ("198.51.100.7", 40000)
    assert reply.get(Attr.SOFTWARE) == "rpturn"
    assert reply.get(Attr.MESSAGE_INTEGRITY) is None


def test_binding_response_has_fingerprint_when_request_had_one(harness):
    reply = parse(raw_handle(harness, encode(Message(Method.BINDING, MessageClass.REQUEST), fingerprint=True)))
    assert reply.get(Attr.FINGERPRINT) is not None


def test_binding_response_has_no_fingerprint_when_request_had_none(harness):
    reply = parse(raw_handle(harness, encode(Message(Method.BINDING, MessageClass.REQUEST))))
    assert reply.get(Attr.FINGERPRINT) is None


def test_binding_from_rfc3489_client_gets_mapped_address_and_its_transaction_id(harness):
    request = Message(Method.BINDING, MessageClass.REQUEST, cookie=0x01020304)
    reply = parse(raw_handle(harness, encode(request)))
    assert reply.cookie == 0x01020304 and reply.transaction_id == request.transaction_id
    assert reply.get(Attr.MAPPED_ADDRESS) == ("198.51.100.7", 40000)
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) is None


def test_binding_over_ipv6_reports_the_ipv6_address(harness):
    reply = parse(raw_handle(harness, encode(Message(Method.BINDING, MessageClass.REQUEST)), ("2001:db8::7", 5)))
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) == ("2001:db8::7", 5)


def test_binding_indication_is_ignored_silently(harness):
    assert raw_handle(harness, encode(Message(Method.BINDING, MessageClass.INDICATION))) is None
    assert harness.server.stats["indications"] == 1


def test_binding_with_unknown_comprehension_required_attribute_gets_420_listing_it(harness):
    request = Message(Method.BINDING, MessageClass.REQUEST).add(0x0031, b"\0\0\0\0")
    reply = parse(raw_handle(harness, encode(request)))
    assert error_code(reply) == 420 and reply.get(Attr.UNKNOWN_ATTRIBUTES) == (0x0031,)


def test_binding_with_unknown_comprehension_optional_attribute_succeeds(harness):
    request = Message(Method.BINDING, MessageClass.REQUEST).add(0x8031, b"\0\0\0\0")
    assert error_code(parse(raw_handle(harness, encode(request)))) is None


def test_rfc3489_change_request_without_flags_is_ignored(harness):
    request = Message(Method.BINDING, MessageClass.REQUEST, cookie=0x01020304).add(0x0003, b"\0\0\0\0")
    assert error_code(parse(raw_handle(harness, encode(request)))) is None


def test_rfc3489_change_request_asking_for_another_address_gets_420(harness):
    request = Message(Method.BINDING, MessageClass.REQUEST, cookie=0x01020304).add(0x0003, b"\0\0\0\x06")
    reply = parse(raw_handle(harness, encode(request)))
    assert error_code(reply) == 420 and reply.get(Attr.UNKNOWN_ATTRIBUTES) == (0x0003,)


def test_malformed_datagram_is_dropped_and_counted(harness):
    assert raw_handle(harness, b"\x00\x01\x00\x04" + os.urandom(16)) is None
    assert raw_handle(harness, b"") is None
    assert harness.server.stats["malformed"] == 2


def test_request_with_unknown_method_gets_400(harness):
    reply = parse(raw_handle(harness, encode(Message(0x0EF, MessageClass.REQUEST))))
    assert error_code(reply) == 400


def test_response_sent_by_a_client_is_ignored(harness):
    assert raw_handle(harness, encode(Message(Method.BINDING, MessageClass.SUCCESS))) is None


# --- long-term credentials (RFC 5389 10.2) ---


def test_allocate_without_credentials_gets_401_with_realm_and_nonce(client):
    reply = client.send_raw(encode(client.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])))
    assert error_code(reply) == 401
    assert reply.get(Attr.REALM) == REALM and reply.get(Attr.NONCE)
    assert reply.get(Attr.MESSAGE_INTEGRITY) is None


def test_unauthenticated_request_leaves_no_state_behind(harness, client):
    for _ in range(3):
        client.send_raw(encode(client.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])))
    assert not harness.server.allocations and not harness.server.transactions


def test_bad_message_integrity_gets_401(harness):
    client = harness.client("alice", password="wrong")
    reply = client.allocate()
    assert error_code(reply) == 401 and reply.get(Attr.NONCE) and reply.get(Attr.MESSAGE_INTEGRITY) is None
    assert not harness.server.allocations


def test_unknown_user_gets_401(harness):
    harness.users["mallory"] = "x"
    mallory = harness.client("mallory")
    del harness.users["mallory"]
    assert error_code(mallory.allocate()) == 401


def test_stale_nonce_gets_438_with_a_fresh_nonce(harness, client):
    old_nonce = client.challenge()
    harness.clock.advance(601)
    message = client.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
    reply = client.send_raw(client.signed(message, nonce=old_nonce))
    assert error_code(reply) == 438
    fresh = reply.get(Attr.NONCE)
    assert fresh and fresh != old_nonce and reply.get(Attr.REALM) == REALM
    assert error_code(client.send_raw(client.signed(client.message(message.method, message.attributes),
                                                    nonce=fresh))) is None


def test_forged_nonce_gets_438(client):
    reply = client.send_raw(client.signed(client.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
                                          nonce="not-a-nonce-of-ours"))
    assert error_code(reply) == 438 and reply.get(Attr.NONCE)


def test_nonce_issued_to_another_client_address_gets_438(harness, client):
    other = harness.client("alice", address=("203.0.113.9", 40000))
    reply = client.send_raw(client.signed(client.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
                                          nonce=other.challenge()))
    assert error_code(reply) == 438


def test_integrity_without_username_realm_nonce_gets_400(client):
    message = client.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
    reply = client.send_raw(encode(message, integrity_key=client.key))
    assert error_code(reply) == 400


def test_auth_failure_is_logged_with_source_user_and_reason(harness, events):
    harness.client("alice", password="wrong").allocate()
    (event,) = logged(events, "auth_failure")
    assert event["user"] == "alice" and "198.51.100.7:40000" in event["source"]
    assert event["reason"] == "bad MESSAGE-INTEGRITY"


def test_stale_nonce_is_counted_but_not_logged_as_a_failure(harness, client, events):
    old_nonce = client.challenge()
    harness.clock.advance(601)
    client.send_raw(client.signed(client.message(Method.REFRESH), nonce=old_nonce))
    assert not logged(events, "auth_failure") and harness.server.stats["stale_nonces"] == 1


def test_forged_nonce_is_logged_as_an_auth_failure(client, events):
    client.send_raw(client.signed(client.message(Method.REFRESH), nonce="forged"))
    (event,) = logged(events, "auth_failure")
    assert event["reason"] == "invalid nonce"


def test_first_unauthenticated_request_is_not_logged_as_a_failure(client, events):
    client.challenge()
    assert not logged(events, "auth_failure")


def test_success_response_carries_message_integrity_with_the_users_key(client):
    reply = client.allocate()
    assert reply.get(Attr.MESSAGE_INTEGRITY) is not None and check_integrity(reply, client.key)


def test_error_response_after_authentication_carries_message_integrity(client):
    reply = client.refresh()
    assert error_code(reply) == 437 and check_integrity(reply, client.key)


def test_authenticated_response_has_fingerprint_when_request_had_one(client):
    reply = client.send_raw(client.signed(client.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]),
                                          fingerprint=True))
    assert error_code(reply) is None and reply.get(Attr.FINGERPRINT) is not None
    assert check_integrity(reply, client.key)


def test_authenticated_response_has_software(client):
    assert client.allocate().get(Attr.SOFTWARE) == "rpturn"


# --- Allocate (RFC 5766 6) ---


def test_allocate_returns_relayed_and_mapped_address_and_default_lifetime(harness, client):
    reply = client.allocate()
    host, port = reply.get(Attr.XOR_RELAYED_ADDRESS)
    assert host == "127.0.0.1" and harness.min_port <= port <= harness.max_port
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) == ("198.51.100.7", 40000)
    assert reply.get(Attr.LIFETIME) == 600
    assert harness.opener.open_ports == {port} and harness.ports.held == {port}


def test_relayed_address_advertises_external_ip():
    harness = with_settings(external_ip="203.0.113.50")
    host, port = harness.client().allocate().get(Attr.XOR_RELAYED_ADDRESS)
    assert host == "203.0.113.50" and port in harness.opener.open_ports


def test_requested_lifetime_is_capped_at_the_maximum(client):
    assert client.allocate(lifetime=86400).get(Attr.LIFETIME) == 3600


def test_requested_lifetime_below_the_default_gets_the_default(client):
    assert client.allocate(lifetime=30).get(Attr.LIFETIME) == 600


def test_requested_lifetime_between_default_and_maximum_is_granted(client):
    assert client.allocate(lifetime=1200).get(Attr.LIFETIME) == 1200


def test_requested_transport_other_than_udp_gets_442(harness, client):
    reply = client.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 6)])
    assert error_code(reply) == 442 and not harness.server.allocations


def test_allocate_without_requested_transport_gets_400(client):
    assert error_code(client.request(Method.ALLOCATE, [])) == 400


def test_dont_fragment_in_allocate_sets_df_on_the_relay_socket(client):
    assert error_code(client.allocate((Attr.DONT_FRAGMENT, True))) is None
    assert client.relay_socket().dont_fragment


def test_allocate_without_dont_fragment_leaves_df_alone(allocated):
    assert not allocated.relay_socket().dont_fragment


def test_dont_fragment_where_the_os_cannot_set_df_gets_420_listing_it():
    harness = TurnHarness(df_supported=False)
    client = harness.client("alice")
    reply = client.allocate((Attr.DONT_FRAGMENT, True))
    assert error_code(reply) == 420 and reply.get(Attr.UNKNOWN_ATTRIBUTES) == (Attr.DONT_FRAGMENT,)
    assert check_integrity(reply, client.key) and not harness.server.allocations
    assert harness.ports.held == set() and harness.opener.open_ports == set() and not harness.server.quota.per_user


def test_dont_fragment_refused_with_r_bit_releases_the_reserved_port_too():
    harness = TurnHarness(df_supported=False)
    reply = harness.client("alice").allocate((Attr.DONT_FRAGMENT, True), (Attr.EVEN_PORT, True))
    assert error_code(reply) == 420 and harness.ports.held == set() and not harness.server.reservations


def test_unknown_comprehension_required_attribute_in_allocate_gets_420_listing_it(client):
    reply = client.allocate((0x0031, b"\0\0\0\0"))
    assert error_code(reply) == 420 and reply.get(Attr.UNKNOWN_ATTRIBUTES) == (0x0031,)


def test_requested_address_family_ipv4_is_accepted(client):
    assert error_code(client.allocate((0x0017, b"\x01\0\0\0"))) is None


def test_requested_address_family_ipv6_gets_440(harness, client):
    reply = client.allocate((0x0017, b"\x02\0\0\0"))
    assert error_code(reply) == 440 and not harness.server.allocations


def test_second_allocate_on_the_same_five_tuple_gets_437(allocated):
    assert error_code(allocated.allocate()) == 437


def test_allocate_from_another_five_tuple_gets_its_own_allocation(harness, allocated):
    other = harness.client("alice", address=("198.51.100.7", 40001))
    assert error_code(other.allocate()) is None
    assert len(harness.server.allocations) == 2 and len(harness.opener.open_ports) == 2


def test_retransmitted_allocate_gets_identical_response_bytes(harness, client):
    request = client.signed(client.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    first = harness.server.handle_stun(request, client.five_tuple, client.received)
    again = harness.server.handle_stun(request, client.five_tuple, client.received)
    assert again == first and error_code(parse(first)) is None
    assert len(harness.server.allocations) == 1 and harness.server.stats["retransmissions"] == 1


def test_retransmission_is_forgotten_after_40_seconds(harness, client):
    request = client.signed(client.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)]))
    harness.server.handle_stun(request, client.five_tuple, client.received)
    harness.advance(41)
    assert error_code(parse(harness.server.handle_stun(request, client.five_tuple, client.received))) == 437


def test_same_transaction_id_from_another_five_tuple_is_not_a_retransmission(harness, client):
    message = client.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
    harness.server.handle_stun(client.signed(message), client.five_tuple, client.received)
    other = harness.client("alice", address=("198.51.100.7", 40001))
    reply = other.send_raw(other.signed(message))
    assert error_code(reply) is None and len(harness.server.allocations) == 2


def test_even_port_gets_an_even_relay_port(client):
    for _ in range(5):
        client.five_tuple = ("udp", ("198.51.100.7", 41000 + _), SERVER)
        _, port = client.allocate((Attr.EVEN_PORT, False)).get(Attr.XOR_RELAYED_ADDRESS)
        assert port % 2 == 0


def test_even_port_with_r_bit_reserves_the_next_port_and_returns_a_token(harness, client):
    reply = client.allocate((Attr.EVEN_PORT, True))
    _, port = reply.get(Attr.XOR_RELAYED_ADDRESS)
    token = reply.get(Attr.RESERVATION_TOKEN)
    assert port % 2 == 0 and len(token) == 8
    assert harness.ports.held == {port, port + 1} and harness.opener.open_ports == {port}


def test_reservation_token_allocates_the_reserved_port(harness, client):
    reply = client.allocate((Attr.EVEN_PORT, True))
    _, port = reply.get(Attr.XOR_RELAYED_ADDRESS)
    rtcp = harness.client("alice", address=("198.51.100.7", 40001))
    second = rtcp.allocate((Attr.RESERVATION_TOKEN, reply.get(Attr.RESERVATION_TOKEN)))
    assert second.get(Attr.XOR_RELAYED_ADDRESS)[1] == port + 1
    assert harness.opener.open_ports == {port, port + 1} and not harness.server.reservations


def test_unknown_reservation_token_gets_508(client):
    assert error_code(client.allocate((Attr.RESERVATION_TOKEN, b"12345678"))) == 508


def test_reservation_token_can_be_used_only_once(harness, client):
    token = client.allocate((Attr.EVEN_PORT, True)).get(Attr.RESERVATION_TOKEN)
    assert error_code(harness.client("alice", address=("198.51.100.7", 1)).allocate(
        (Attr.RESERVATION_TOKEN, token))) is None
    assert error_code(harness.client("alice", address=("198.51.100.7", 2)).allocate(
        (Attr.RESERVATION_TOKEN, token))) == 508


def test_reservation_expires_after_30_seconds_and_frees_the_port(harness, client):
    reply = client.allocate((Attr.EVEN_PORT, True))
    _, port = reply.get(Attr.XOR_RELAYED_ADDRESS)
    harness.advance(29)
    assert port + 1 in harness.ports.held
    harness.advance(1)
    assert harness.ports.held == {port} and not harness.server.reservations
    late = harness.client("alice", address=("198.51.100.7", 40001))
    assert error_code(late.allocate((Attr.RESERVATION_TOKEN, reply.get(Attr.RESERVATION_TOKEN)))) == 508


def test_even_port_together_with_reservation_token_gets_400(client):
    reply = client.allocate((Attr.EVEN_PORT, False), (Attr.RESERVATION_TOKEN, b"12345678"))
    assert error_code(reply) == 400


def test_no_free_port_gets_508():
    harness = TurnHarness(min_port=50000, max_port=50000)
    assert error_code(harness.client("alice").allocate()) is None
    assert error_code(harness.client("bob", address=("198.51.100.8", 40000)).allocate()) == 508


def test_no_free_even_odd_pair_gets_508():
    harness = TurnHarness(min_port=50001, max_port=50002)
    assert error_code(harness.client("alice").allocate((Attr.EVEN_PORT, True))) == 508
    assert harness.ports.free_count == 2


def test_port_that_cannot_be_bound_is_skipped_for_another(harness):
    harness = TurnHarness(min_port=50000, max_port=50001, busy_ports=(50000,))
    _, port = harness.client("alice").allocate().get(Attr.XOR_RELAYED_ADDRESS)
    assert port == 50001 and harness.ports.unusable <= {50000}


def test_no_bindable_port_gets_508():
    harness = TurnHarness(min_port=50000, max_port=50003, busy_ports=range(50000, 50004))
    assert error_code(harness.client("alice").allocate()) == 508
    assert harness.ports.held == set() and harness.opener.open_ports == set()


def test_user_quota_reached_gets_486():
    harness = with_settings(user_quota=2)
    for port in (1, 2):
        assert error_code(harness.client("alice", address=("198.51.100.7", port)).allocate()) is None
    assert error_code(harness.client("alice", address=("198.51.100.7", 3)).allocate()) == 486
    assert error_code(harness.client("bob", address=("198.51.100.7", 4)).allocate()) is None


def test_total_quota_reached_gets_486():
    harness = with_settings(total_quota=2)
    assert error_code(harness.client("alice", address=("198.51.100.7", 1)).allocate()) is None
    assert error_code(harness.client("bob", address=("198.51.100.7", 2)).allocate()) is None
    assert error_code(harness.client("carol", address=("198.51.100.7", 3)).allocate()) == 486


def test_quota_counts_down_when_an_allocation_is_deleted():
    harness = with_settings(user_quota=1)
    first = harness.client("alice", address=("198.51.100.7", 1))
    first.allocate()
    first.refresh(0)
    assert error_code(harness.client("alice", address=("198.51.100.7", 2)).allocate()) is None
    assert harness.server.quota.per_user == {"alice": 1}


def test_allocation_creation_is_logged(harness, client, events):
    client.allocate()
    (event,) = logged(events, "allocation_created")
    port = client.allocation.port
    assert event["user"] == "alice" and event["relayed"] == f"127.0.0.1:{port}" and event["lifetime"] == 600
    assert event["five_tuple"] == "udp 198.51.100.7:40000->127.0.0.1:3478"


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


# --- CreatePermission (RFC 5766 9) ---


def test_create_permission_installs_a_permission_for_every_peer(allocated):
    reply = allocated.create_permission(PEER, OTHER_PEER)
    assert error_code(reply) is None and check_integrity(reply, allocated.key)
    assert set(allocated.allocation.permissions) == {PEER[0], OTHER_PEER[0]}


def test_create_permission_with_one_denied_peer_gets_403_and_installs_none(allocated):
    assert error_code(allocated.create_permission(PEER, DENIED_PEER)) == 403
    assert allocated.allocation.permissions == {}


def test_denied_permission_is_logged(allocated, events):
    allocated.create_permission(DENIED_PEER)
    (event,) = logged(events, "permission_denied")
    assert event["peer"] == "10.0.0.1" and "private" in event["reason"] and event["user"] == "alice"


def test_peer_in_ipv4_mapped_form_of_a_denied_address_gets_403(allocated):
    assert error_code(allocated.create_permission(("::ffff:10.0.0.1", 9000))) == 403


def test_ipv6_peer_for_an_ipv4_relay_gets_443(allocated):
    assert error_code(allocated.create_permission(("2001:db8::1", 9000))) == 443


def test_permissions_beyond_the_per_allocation_cap_get_508_and_install_nothing(allocated, monkeypatch):
    monkeypatch.setattr(relay.handlers, "MAX_PERMISSIONS", 3)
    assert error_code(allocated.create_permission(("127.0.0.1", 1), ("127.0.0.2", 1))) is None
    assert error_code(allocated.create_permission(("127.0.0.3", 1), ("127.0.0.4", 1))) == 508
    assert set(allocated.allocation.permissions) == {"127.0.0.1", "127.0.0.2"}
    assert error_code(allocated.create_permission(("127.0.0.1", 1), ("127.0.0.3", 1))) is None  # a refresh + one
    bind = [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, ("127.0.0.9", 5))]
    assert error_code(allocated.request(Method.CHANNEL_BIND, bind)) == 508


def test_create_permission_without_peer_gets_400(allocated):
    assert error_code(allocated.request(Method.CREATE_PERMISSION, [])) == 400


def test_create_permission_without_allocation_gets_437(client):
    assert error_code(client.create_permission(PEER)) == 437


def test_create_permission_by_another_user_gets_441(harness, allocated):
    assert error_code(harness.client("bob").create_permission(PEER)) == 441


def test_permission_expires_after_300_seconds(harness, allocated):
    allocated.create_permission(PEER)
    harness.advance(299)
    assert PEER[0] in allocated.allocation.permissions
    harness.advance(1)
    assert allocated.allocation.permissions == {}


def test_create_permission_again_refreshes_it(harness, allocated):
    allocated.create_permission(PEER)
    harness.advance(200)
    allocated.create_permission(PEER)
    harness.advance(200)
    assert PEER[0] in allocated.allocation.permissions


# --- ChannelBind and ChannelData (RFC 5766 11) ---


def test_channel_bind_relays_channel_data_both_ways(allocated):
    assert error_code(allocated.channel_bind(0x4000, PEER)) is None
    allocated.channel_data(0x4000, b"to peer")
    socket = allocated.relay_socket()
    assert socket.writes == [(b"to peer", PEER)]
    socket.receive(b"to client", PEER)
    assert allocated.received.sent == [encode_channel_data(0x4000, b"to client")]


def test_channel_data_to_a_tcp_client_is_padded_to_4_bytes(harness):
    client = harness.client("alice", transport="tcp")
    client.allocate()
    client.channel_bind(0x7FFF, PEER)
    client.relay_socket().receive(b"abcde", PEER)
    (frame,) = client.received.sent
    assert len(frame) == 12 and parse_channel_data(frame) == (0x7FFF, b"abcde")


def test_channel_bind_installs_the_permission(allocated):
    allocated.channel_bind(0x4001, PEER)
    assert PEER[0] in allocated.allocation.permissions


@pytest.mark.parametrize("number", [0x3FFF, 0x8000, 0x0000, 0xFFFF])
def test_channel_number_outside_0x4000_to_0x7fff_gets_400(allocated, number):
    assert error_code(allocated.channel_bind(number, PEER)) == 400


def test_channel_bind_of_a_number_bound_to_another_peer_gets_400(allocated):
    allocated.channel_bind(0x4000, PEER)
    assert error_code(allocated.channel_bind(0x4000, OTHER_PEER)) == 400


def test_channel_bind_of_a_peer_bound_to_another_number_gets_400(allocated):
    allocated.channel_bind(0x4000, PEER)
    assert error_code(allocated.channel_bind(0x4001, PEER)) == 400


def test_channel_bind_of_same_number_and_peer_refreshes_the_binding(harness, long_lived):
    long_lived.channel_bind(0x4000, PEER)
    harness.advance(500)
    assert error_code(long_lived.channel_bind(0x4000, PEER)) is None
    harness.advance(500)
    assert long_lived.allocation.channels == {0x4000: PEER}


def test_channel_bind_to_a_denied_peer_gets_403(allocated):
    assert error_code(allocated.channel_bind(0x4000, DENIED_PEER)) == 403
    assert allocated.allocation.channels == {} and allocated.allocation.permissions == {}


def test_channel_bind_without_channel_number_or_peer_gets_400(allocated):
    assert error_code(allocated.request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000)])) == 400
    assert error_code(allocated.request(Method.CHANNEL_BIND, [(Attr.XOR_PEER_ADDRESS, PEER)])) == 400


def test_channel_bind_without_allocation_gets_437(client):
    assert error_code(client.channel_bind(0x4000, PEER)) == 437


def test_channel_expires_after_600_seconds(harness, long_lived):
    long_lived.channel_bind(0x4000, PEER)
    harness.advance(599)
    assert 0x4000 in long_lived.allocation.channels
    harness.advance(1)
    assert long_lived.allocation.channels == {} and long_lived.allocation.channel_of_peer == {}


def test_expired_channel_number_is_kept_from_other_peers_for_5_minutes(harness, long_lived):
    long_lived.channel_bind(0x4000, PEER)
    harness.advance(600)
    assert error_code(long_lived.channel_bind(0x4000, OTHER_PEER)) == 400
    assert error_code(long_lived.channel_bind(0x4001, PEER)) == 400
    harness.advance(300)
    assert error_code(long_lived.channel_bind(0x4000, OTHER_PEER)) is None


def test_expired_channel_can_be_bound_again_to_the_same_peer(harness, long_lived):
    long_lived.channel_bind(0x4000, PEER)
    harness.advance(600)
    assert error_code(long_lived.channel_bind(0x4000, PEER)) is None


def test_channel_data_on_an_unbound_channel_is_dropped(allocated):
    allocated.create_permission(PEER)
    allocated.channel_data(0x4000, b"x")
    assert allocated.relay_socket().writes == [] and allocated.allocation.client_packets_dropped == 1


def test_channel_data_with_length_past_its_end_is_dropped(harness, allocated):
    allocated.channel_bind(0x4000, PEER)
    harness.server.handle_channel_data(b"\x40\x00\x00\x10abc", allocated.five_tuple)
    assert allocated.relay_socket().writes == []


def test_channel_data_shorter_than_its_header_is_dropped(harness, allocated):
    allocated.channel_bind(0x4000, PEER)
    harness.server.handle_channel_data(b"\x40\x00", allocated.five_tuple)
    assert allocated.relay_socket().writes == [] and harness.server.stats["channel_data_dropped"] == 1


def test_channel_data_without_allocation_is_dropped(harness, client):
    client.channel_data(0x4000, b"x")
    assert harness.server.stats["channel_data_dropped"] == 1


def test_channel_data_after_its_permission_expired_is_dropped(harness, allocated):
    allocated.channel_bind(0x4000, PEER)
    harness.advance(300)  # the permission (300 s) ran out, the channel (600 s) did not
    allocated.channel_data(0x4000, b"x")
    allocated.relay_socket().receive(b"y", PEER)
    assert allocated.relay_socket().writes == [] and allocated.received.sent == []


# --- Send and Data indications (RFC 5766 10) ---


def test_send_indication_is_relayed_to_a_peer_with_permission(allocated):
    allocated.create_permission(PEER)
    allocated.send_indication(PEER, b"hello")
    assert allocated.relay_socket().writes == [(b"hello", PEER)]
    assert (allocated.allocation.packets_from_client, allocated.allocation.bytes_from_client) == (1, 5)


def test_send_indication_to_a_peer_without_permission_is_dropped(allocated):
    allocated.create_permission(PEER)
    allocated.send_indication(OTHER_PEER, b"hello")
    assert allocated.relay_socket().writes == []


def test_send_indication_to_a_denied_peer_is_never_relayed(allocated):
    allocated.create_permission(DENIED_PEER)
    allocated.send_indication(DENIED_PEER, b"hello")
    assert allocated.relay_socket().writes == []


def test_send_indication_with_dont_fragment_is_relayed_ignoring_it(harness, allocated):
    allocated.create_permission(PEER)
    message = allocated.message(Method.SEND, [(Attr.XOR_PEER_ADDRESS, PEER), (Attr.DONT_FRAGMENT, True),
                                              (Attr.DATA, b"df")], msg_class=MessageClass.INDICATION)
    assert harness.server.handle_stun(encode(message), allocated.five_tuple, allocated.received) is None
    assert allocated.relay_socket().writes == [(b"df", PEER)]


def test_send_indication_without_allocation_is_dropped(harness, client):
    client.send_indication(PEER, b"hello")
    assert harness.server.stats["send_dropped"] == 1


def test_peer_datagram_without_channel_reaches_the_client_as_a_data_indication(allocated):
    allocated.create_permission(PEER)
    allocated.relay_socket().receive(b"from peer", PEER)
    (data,) = allocated.received.sent
    indication = parse(data)
    assert (indication.method, indication.msg_class) == (Method.DATA, MessageClass.INDICATION)
    assert indication.get(Attr.XOR_PEER_ADDRESS) == PEER and indication.get(Attr.DATA) == b"from peer"
    assert (allocated.allocation.packets_to_client, allocated.allocation.bytes_to_client) == (1, 9)


def test_data_indications_get_distinct_transaction_ids(allocated):
    allocated.create_permission(PEER)
    for _ in range(3):
        allocated.relay_socket().receive(b"x", PEER)
    assert len({parse(data).transaction_id for data in allocated.received.sent}) == 3


def test_peer_datagram_from_an_ip_without_permission_is_dropped_and_counted(allocated):
    allocated.create_permission(PEER)
    allocated.relay_socket().receive(b"intruder", OTHER_PEER)
    assert allocated.received.sent == [] and allocated.allocation.peer_packets_dropped == 1


def test_permission_covers_every_port_of_the_peer_ip(allocated):
    allocated.create_permission(PEER)
    allocated.relay_socket().receive(b"other port", (PEER[0], 1234))
    assert len(allocated.received.sent) == 1


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


# --- robustness: no input makes handle_stun raise ---


@scaled(0.5)
@given(st.binary(max_size=200))
def test_any_bytes_get_a_response_or_none_never_an_exception(data):
    harness = TurnHarness()
    reply = raw_handle(harness, data)
    assert reply is None or parse(reply).msg_class in (MessageClass.SUCCESS, MessageClass.ERROR)


KNOWN_ATTRIBUTES = frozenset(Attr)
_ATTRIBUTE_VALUES = st.one_of(
    st.tuples(st.sampled_from([Attr.LIFETIME, Attr.CHANNEL_NUMBER]), st.integers(0, 0xFFFF)),
    st.tuples(st.just(Attr.LIFETIME), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just(Attr.REQUESTED_TRANSPORT), st.integers(0, 255)),
    st.tuples(st.just(Attr.XOR_PEER_ADDRESS), st.tuples(
        st.sampled_from(["127.0.0.2", "10.0.0.1", "::1", "2001:db8::1", "0.0.0.0", "198.51.100.1"]),
        st.integers(0, 65535))),
    st.tuples(st.just(Attr.EVEN_PORT), st.booleans()),
    st.tuples(st.just(Attr.RESERVATION_TOKEN), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just(Attr.DONT_FRAGMENT), st.just(True)),
    st.tuples(st.just(Attr.DATA), st.binary(max_size=20)),
    st.tuples(st.integers(0x0000, 0xFFFF).filter(lambda kind: kind not in KNOWN_ATTRIBUTES), st.binary(max_size=12)),
)


@scaled(0.25)
@given(st.lists(st.tuples(st.sampled_from([Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION,
                                           Method.CHANNEL_BIND, Method.BINDING, Method.SEND]),
                          st.lists(_ATTRIBUTE_VALUES, max_size=5)), min_size=1, max_size=6))
def test_authenticated_requests_with_arbitrary_attributes_never_raise(requests):
    harness = TurnHarness()
    client = harness.client("alice")
    for method, attributes in requests:
        message = client.message(method, attributes)
        try:
            data = client.signed(message)
        except (ValueError, OverflowError, KeyError):
            continue  # the codec refuses to encode it: nothing to send
        reply = harness.server.handle_stun(data, client.five_tuple, client.received)
        if reply is not None:
            parse(reply)
    harness.advance(4000)
    assert not harness.server.allocations and harness.ports.held == set()

