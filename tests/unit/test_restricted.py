"""Restricted mode's predicate: which sources may use TURN."""

import pytest

from relay.restricted import TurnClients


def test_empty_list_allows_everyone():
    clients = TurnClients([])
    assert not clients.restricted
    assert clients.allows("203.0.113.9") and clients.allows("::1")


@pytest.mark.parametrize("ip, allowed", [
    ("10.40.0.10", True), ("10.40.0.255", True), ("10.40.1.1", False), ("127.0.0.2", True), ("127.0.0.1", False),
    ("::ffff:10.40.0.7", True), ("::ffff:127.0.0.1", False), ("2001:db8::5", True), ("2001:db9::5", False),
    ("not an address", False), ("", False),
])
def test_listed_networks_only(ip, allowed):
    clients = TurnClients(["10.40.0.0/24", "127.0.0.2/32", "2001:db8::/32"])
    assert clients.restricted
    assert clients.allows(ip) is allowed
    assert clients.allows(ip) is allowed  # and again, from the cache


def test_cache_stays_bounded_under_a_flood_of_sources():
    clients = TurnClients(["10.0.0.0/8"])
    for i in range(20000):
        clients.allows(f"198.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(clients._cache) <= 4096
    assert clients.allows("10.1.2.3")


def test_sloppy_network_is_refused():
    with pytest.raises(ValueError):
        TurnClients(["10.40.0.1/24"])


@pytest.mark.parametrize("cidrs", [[], ["10.40.0.0/24", "127.0.0.0/8"]])
def test_turn_off_allows_nobody(cidrs):
    clients = TurnClients(cidrs, enabled=False)
    assert clients.restricted
    assert not any(clients.allows(ip) for ip in ("10.40.0.10", "127.0.0.1", "::1", "203.0.113.9"))
