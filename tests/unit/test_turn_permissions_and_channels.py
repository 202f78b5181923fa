"""Permissions and channel bindings in the TURN core: CreatePermission (RFC 5766 9) with the peer policy's refusals
(403, 443), the per-allocation cap (508) and expiry after 300 s; ChannelBind (RFC 5766 11) with its number rules,
refresh, expiry after 600 s and the 5-minute hold on an expired number. What is relayed through them:
test_turn_relaying.py. Fixtures: tests/unit/conftest.py.
"""

import pytest

import relay.handlers
from relay.stun import Attr, Method, check_integrity
from tests.support.relay_fakes import DENIED_PEER, OTHER_PEER, PEER, error_code, logged

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


# --- ChannelBind (RFC 5766 11) ---


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
