"""Allocate in the TURN core (RFC 5766 6): the relayed and mapped addresses, the granted lifetime, REQUESTED-TRANSPORT,
DONT-FRAGMENT, REQUESTED-ADDRESS-FAMILY and unknown attributes, one allocation per 5-tuple, retransmitted requests
answered from the transaction cache, and the allocation_created log line. Ports, reservations and quotas:
test_turn_ports_and_quotas.py. Fixtures: tests/unit/conftest.py.
"""

from relay.stun import Attr, Method, check_integrity, parse
from tests.support.relay_fakes import TurnHarness, error_code, logged, with_settings

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


def test_allocation_creation_is_logged(harness, client, events):
    client.allocate()
    (event,) = logged(events, "allocation_created")
    port = client.allocation.port
    assert event["user"] == "alice" and event["relayed"] == f"127.0.0.1:{port}" and event["lifetime"] == 600
    assert event["five_tuple"] == "udp 198.51.100.7:40000->127.0.0.1:3478"


# --- retransmissions (the transaction cache) ---


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
