"""Relay ports and the limits on allocations in the TURN core: EVEN-PORT and RESERVATION-TOKEN (RFC 5766 6.2), a full
or unbindable port range (508), and the per-user and total allocation quotas (486). Fixtures:
tests/unit/conftest.py; `TurnHarness(min_port=..., max_port=..., busy_ports=...)` sets up the port range.
"""

from relay.stun import Attr
from tests.support.relay_fakes import SERVER, TurnHarness, error_code, with_settings

# --- EVEN-PORT and reservations (RFC 5766 6.2) ---


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
    # the odd port is held bound until the token is redeemed: no other process can take it meanwhile
    assert harness.ports.held == {port, port + 1} and harness.opener.open_ports == {port, port + 1}


def test_an_even_port_pair_whose_odd_port_another_process_holds_is_not_reserved():
    """Reserving a port nobody can bind would turn the RTCP Allocate into a 508: that pair is passed over."""
    harness = TurnHarness(min_port=50000, max_port=50003, busy_ports=(50001,))
    reply = harness.client("alice").allocate((Attr.EVEN_PORT, True))
    _, port = reply.get(Attr.XOR_RELAYED_ADDRESS)
    assert port == 50002 and reply.get(Attr.RESERVATION_TOKEN) is not None
    assert harness.opener.open_ports == {50002, 50003}
    rtcp = harness.client("alice", address=("198.51.100.7", 40001))
    second = rtcp.allocate((Attr.RESERVATION_TOKEN, reply.get(Attr.RESERVATION_TOKEN)))
    assert second.get(Attr.XOR_RELAYED_ADDRESS)[1] == 50003


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


# --- the port range ---


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


# --- quotas ---


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
