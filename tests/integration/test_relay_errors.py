"""Every STUN/TURN error code the relay gives, from the real `twistd relay` process, over raw sockets on loopback.

Peers named here that the policy denies (10.0.0.1, 169.254.169.254, ...) only ever appear inside requests: the relay
refuses the permission and no datagram is sent to them.
"""

from __future__ import annotations

import contextlib
import os
import socket

import pytest

from relay import stun
from relay.stun import Attr, Method
from tests.support.relay_process import EchoPeer, RawTurnClient, error_code, relay_fixture

# Three relay ports, two allocations per user: enough to reach both 486 and 508.
relay = relay_fixture("relay-errors", min_port=44990, max_port=44992, user_quota=2,
                      users={"alice": "secret", "bob": "hunter2", "carol": "pw"})


@pytest.fixture
def client(relay):
    clients = []

    def make(**kwargs) -> RawTurnClient:
        made = RawTurnClient(relay.address, **kwargs)
        clients.append(made)
        return made

    yield make
    for made in clients:
        # Free the allocation (if any) so the tiny port range serves the next test.
        with contextlib.suppress(OSError):
            made.request(Method.REFRESH, [(Attr.LIFETIME, 0)])
        made.close()


def test_unauthenticated_allocate_gets_401_with_realm_and_nonce(client):
    response = client().learn_nonce()
    assert error_code(response) == 401
    assert response.get(Attr.REALM) == "rpturn.test"
    assert response.get(Attr.NONCE)
    assert response.integrity_offset is None  # nothing to sign with yet


def test_bad_message_integrity_gets_401(client):
    turn = client(password="not-the-password")
    response = turn.allocate()
    assert error_code(response) == 401


def test_unknown_user_gets_401(client):
    assert error_code(client(username="mallory").allocate()) == 401


def test_stale_or_forged_nonce_gets_438_with_a_fresh_nonce(client):
    turn = client()
    turn.learn_nonce()
    turn.nonce = "forged-" + turn.nonce[7:]
    transaction_id = os.urandom(12)
    turn.send_bytes(turn.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], transaction_id=transaction_id))
    response = turn.recv_message(transaction_id)
    assert error_code(response) == 438
    fresh = response.get(Attr.NONCE)
    assert fresh and fresh != turn.nonce
    turn.nonce = fresh
    assert error_code(turn.allocate()) is None


def test_allocate_success_is_signed_and_carries_relayed_and_mapped_addresses(client):
    turn = client()
    response = turn.allocate()
    assert response.msg_class == stun.MessageClass.SUCCESS
    assert stun.check_integrity(response, turn.key)
    assert response.get(Attr.XOR_RELAYED_ADDRESS)[0] == "127.0.0.1"
    assert response.get(Attr.XOR_MAPPED_ADDRESS) == turn.local_address
    assert response.get(Attr.LIFETIME) == 600
    assert response.get(Attr.SOFTWARE)


def test_error_responses_to_authenticated_requests_are_signed(client):
    turn = client()
    response = turn.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 6)])
    assert error_code(response) == 442
    assert stun.check_integrity(response, turn.key)


def test_fingerprint_in_request_means_fingerprint_in_response(client):
    turn = client()
    response = turn.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)], fingerprint=True)
    assert error_code(response) is None
    raw = response.raw
    assert int.from_bytes(raw[-8:-6], "big") == Attr.FINGERPRINT


def test_second_allocate_on_same_five_tuple_gets_437(client):
    turn = client()
    assert error_code(turn.allocate()) is None
    assert error_code(turn.allocate()) == 437


def test_retransmitted_allocate_gets_the_identical_answer(client):
    turn = client()
    turn.learn_nonce()
    request = turn.signed(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
    turn.send_bytes(request)
    first = turn.recv_frame()
    turn.send_bytes(request)
    second = turn.recv_frame()
    assert first == second
    assert error_code(stun.parse(first)) is None


@pytest.mark.parametrize("method", [Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND])
def test_requests_without_an_allocation_get_437(client, method):
    attributes = {
        Method.REFRESH: [(Attr.LIFETIME, 600)],
        Method.CREATE_PERMISSION: [(Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 9))],
        Method.CHANNEL_BIND: [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 9))],
    }[method]
    assert error_code(client().request(method, attributes)) == 437


def test_other_user_on_the_allocations_five_tuple_gets_441(client, relay):
    alice = client()
    assert error_code(alice.allocate()) is None
    # Same socket (same 5-tuple), other credentials.
    bob = RawTurnClient(relay.address, username="bob", password="hunter2")
    bob.sock.close()
    bob.sock = alice.sock
    response = bob.request(Method.REFRESH, [(Attr.LIFETIME, 600)])
    assert error_code(response) == 441


def test_tcp_relay_transport_gets_442(client):
    assert error_code(client().request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 6)])) == 442


def test_allocate_without_requested_transport_gets_400(client):
    assert error_code(client().request(Method.ALLOCATE, [])) == 400


@pytest.mark.parametrize("peer", ["10.0.0.1", "192.168.1.1", "169.254.169.254", "::ffff:10.0.0.1", "64:ff9b::a00:1",
                                  "2002:a00:1::1", "0.0.0.0", "100.64.0.1", "224.0.0.1"])
def test_permission_towards_a_denied_peer_gets_403(client, peer):
    turn = client()
    assert error_code(turn.allocate()) is None
    response = turn.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, (peer, 5000))])
    assert error_code(response) == 403


@pytest.mark.parametrize(("method", "attributes", "code"), [
    pytest.param(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4001), (Attr.XOR_PEER_ADDRESS, ("172.16.0.5", 5000))],
                 403, id="channel_bind_towards_a_denied_peer_gets_403"),
    pytest.param(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 5000)),
                                            (Attr.XOR_PEER_ADDRESS, ("10.1.2.3", 5000))],
                 403, id="permission_with_one_denied_peer_among_several_gets_403"),
    pytest.param(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x3FFF), (Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 5000))],
                 400, id="channel_number_out_of_range_gets_400"),
])
def test_refused_request_after_an_allocation(client, method, attributes, code):
    turn = client()
    assert error_code(turn.allocate()) is None
    assert error_code(turn.request(method, attributes)) == code


def test_channel_already_bound_to_another_peer_gets_400(client):
    turn = client()
    assert error_code(turn.allocate()) is None
    bind = [(Attr.CHANNEL_NUMBER, 0x4002), (Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 5000))]
    assert error_code(turn.request(Method.CHANNEL_BIND, bind)) is None
    other = [(Attr.CHANNEL_NUMBER, 0x4002), (Attr.XOR_PEER_ADDRESS, ("127.0.0.1", 5001))]
    assert error_code(turn.request(Method.CHANNEL_BIND, other)) == 400


def test_unknown_comprehension_required_attribute_gets_420_listing_it(client):
    turn = client()
    response = turn.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17), (0x7F01, b"\x00\x00\x00\x00")])
    assert error_code(response) == 420
    assert 0x7F01 in response.get(Attr.UNKNOWN_ATTRIBUTES)


def test_user_quota_gets_486_and_exhausted_ports_get_508(client):
    alice1, alice2, alice3 = client(), client(), client()
    assert error_code(alice1.allocate()) is None
    assert error_code(alice2.allocate()) is None
    assert error_code(alice3.allocate()) == 486  # user_quota = 2
    bob1, bob2 = client(username="bob", password="hunter2"), client(username="bob", password="hunter2")
    assert error_code(bob1.allocate()) is None  # the third and last relay port
    assert error_code(bob2.allocate()) == 508


def test_refresh_with_lifetime_zero_deletes_and_frees_the_port(client):
    turn = client()
    assert error_code(turn.allocate()) is None
    assert error_code(turn.request(Method.REFRESH, [(Attr.LIFETIME, 0)])) is None
    assert error_code(turn.request(Method.REFRESH, [(Attr.LIFETIME, 600)])) == 437


def test_send_indication_without_permission_is_not_relayed(client):
    peer = EchoPeer()
    try:
        turn = client()
        assert error_code(turn.allocate()) is None
        indication = stun.Message(Method.SEND, stun.MessageClass.INDICATION, os.urandom(12), [
            (Attr.XOR_PEER_ADDRESS, peer.address), (Attr.DATA, b"should not pass")])
        turn.send_bytes(stun.encode(indication))
        with pytest.raises(socket.timeout):
            turn.sock.settimeout(0.5)
            turn.recv_frame()
        assert peer.echoed == 0
    finally:
        peer.close()
