"""The TURN core with TURN REST API shared secrets (time-limited credentials) and in restricted mode, through the
in-memory harness: any configured secret verifies, expired/unparseable/wrong-secret usernames get 401 with the
reason logged, static users keep working; outsiders' TURN gets no answer while their Bindings do."""

from __future__ import annotations

from relay.restauth import SharedSecrets, make_credentials
from relay.restricted import TurnClients
from relay.stats import relay_snapshot
from relay.stun import Attr, MessageClass, Method, check_integrity, encode, long_term_key
from tests.support.relay_fakes import REALM, TurnHarness, error_code

OLD, NEW = "old-secret-0123456789", "new-secret-0123456789"
INSIDE = ("10.40.0.10", 40000)
OUTSIDE = ("203.0.113.5", 40000)
PEER = ("127.0.0.1", 5000)


def harness_with_secrets(*secrets: str) -> TurnHarness:
    harness = TurnHarness()
    harness.server.reconfigure(secrets=SharedSecrets(list(secrets)))
    return harness


def rest_client(harness: TurnHarness, secret: str, ttl: int = 600, user: str | None = "browser", **kwargs):
    username, password = make_credentials(secret, user, ttl, harness.clock())
    harness.users[username] = password  # only for the fake client to sign with; the server does not see it
    return harness.client(username, password=password, **kwargs)


def failure_reasons(harness: TurnHarness) -> list[str]:
    return [e["reason"] for e in harness.events if e.get("event") == "auth_failure"]


def test_each_of_two_secrets_authenticates_and_signs_the_answer():
    harness = harness_with_secrets(OLD, NEW)
    for index, secret in enumerate((OLD, NEW)):
        client = rest_client(harness, secret, address=("198.51.100.7", 40000 + index))
        reply = client.allocate()
        assert reply.msg_class == MessageClass.SUCCESS, reply
        assert check_integrity(reply, client.key)
    assert len(harness.server.allocations) == 2


def test_expired_credentials_get_401_with_the_reason_logged():
    harness = harness_with_secrets(OLD)
    client = rest_client(harness, OLD, ttl=60)
    harness.clock.advance(61)
    reply = client.allocate()
    assert error_code(reply) == 401 and reply.get(Attr.NONCE)
    assert failure_reasons(harness) == ["expired credentials"]


def test_unparseable_username_gets_401_with_the_reason_logged():
    harness = harness_with_secrets(OLD)
    client = harness.client("mallory", password="whatever", address=OUTSIDE)
    harness.users["mallory"] = "whatever"
    assert error_code(client.allocate()) == 401
    assert failure_reasons(harness) == ["unparseable timestamp in username"]


def test_credentials_from_another_secret_get_401():
    harness = harness_with_secrets(OLD)
    assert error_code(rest_client(harness, "not-the-configured-secret").allocate()) == 401
    assert failure_reasons(harness) == ["bad MESSAGE-INTEGRITY (shared secret)"]


def test_a_dropped_secret_no_longer_verifies_after_reload():
    harness = harness_with_secrets(OLD, NEW)
    client = rest_client(harness, OLD)
    harness.server.reconfigure(secrets=SharedSecrets([NEW]))
    assert error_code(client.allocate()) == 401


def test_static_users_keep_working_alongside_secrets():
    harness = harness_with_secrets(OLD)
    assert harness.client("alice").allocate().msg_class == MessageClass.SUCCESS
    assert not failure_reasons(harness)


def test_without_secrets_a_rest_username_is_an_unknown_user():
    harness = TurnHarness()
    assert error_code(rest_client(harness, OLD).allocate()) == 401
    assert failure_reasons(harness) == ["unknown user"]


def test_the_key_is_the_long_term_key_of_the_rest_password():
    harness = harness_with_secrets(OLD)
    client = rest_client(harness, OLD)
    username, password = client.username, harness.users[client.username]
    assert client.key == long_term_key(username, REALM, password)
    assert client.allocate().msg_class == MessageClass.SUCCESS


# --- restricted mode ----------------------------------------------------------------------------------------


def restricted() -> TurnHarness:
    harness = TurnHarness()
    harness.server.reconfigure(turn_clients=TurnClients(["10.40.0.0/24"]))
    return harness


def test_outsider_binding_is_answered():
    harness = restricted()
    client = harness.client("alice", address=OUTSIDE)
    reply = client.send_raw(encode(client.message(Method.BINDING)))
    assert reply is not None and reply.msg_class == MessageClass.SUCCESS
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) == OUTSIDE


def test_outsider_turn_gets_no_answer_at_all_and_is_counted():
    harness = restricted()
    client = harness.client("alice", address=OUTSIDE)
    client.nonce = harness.nonces.issue(OUTSIDE[0], harness.clock())  # a correctly signed request
    message = client.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])
    assert client.send_raw(client.signed(message)) is None
    assert client.send_raw(encode(message)) is None  # not even the 401 challenge
    client.send_indication(PEER, b"x")
    client.channel_data(0x4000, b"x")
    assert harness.server.stats["turn_restricted"] == 4
    assert not harness.server.allocations
    snapshot = relay_snapshot(harness.server.stats, harness.server.allocations.values(), {})
    assert snapshot["counters"]["dropped"]["turn_restricted"] == 4  # rpturn_turn_dropped_packets{reason=...}


def test_listed_source_allocates_and_relays():
    harness = restricted()
    client = harness.client("alice", address=INSIDE)
    assert client.allocate().msg_class == MessageClass.SUCCESS
    assert client.channel_bind(0x4000, PEER).msg_class == MessageClass.SUCCESS
    client.channel_data(0x4000, b"media")
    assert client.relay_socket().writes == [(b"media", PEER)]
    assert harness.server.stats["turn_restricted"] == 0


def test_dual_stack_mapped_address_of_a_listed_source_is_allowed():
    harness = restricted()
    client = harness.client("alice", address=("::ffff:10.40.0.11", 40000))
    assert client.allocate().msg_class == MessageClass.SUCCESS
