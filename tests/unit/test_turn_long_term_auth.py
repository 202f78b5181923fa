"""Long-term credentials in the TURN core (RFC 5389 10.2): the 401 challenge, bad MESSAGE-INTEGRITY and unknown users,
stale, forged and foreign nonces (438), what is logged as an auth failure and what is not, and the integrity,
fingerprint and SOFTWARE of authenticated responses. Fixtures: tests/unit/conftest.py.
"""

from relay.stun import Attr, Method, check_integrity, encode
from tests.support.relay_fakes import REALM, error_code, logged

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
