"""The relay core's counters as the management listener reads them (relay.stats over a real TurnServer on fakes)."""

from __future__ import annotations

from relay.allocation import TurnSettings
from relay.stats import relay_snapshot
from relay.stun import Message, MessageClass, Method, encode
from tests.support.relay_fakes import REALM, SERVER, TurnHarness, error_code


def figures(harness: TurnHarness) -> dict:
    server = harness.server
    return relay_snapshot(server.stats, server.allocations.values(), {})


def quotas(user_quota: int, total_quota: int) -> TurnHarness:
    return TurnHarness(settings=TurnSettings(realm=REALM, relay_ip="127.0.0.1", user_quota=user_quota,
                                             total_quota=total_quota))


def test_486_is_counted_by_cause_with_both_quotas_set():
    harness = quotas(user_quota=1, total_quota=2)
    assert error_code(harness.client("alice", address=("198.51.100.7", 1)).allocate()) is None
    assert error_code(harness.client("alice", address=("198.51.100.7", 2)).allocate()) == 486  # alice's one
    assert error_code(harness.client("bob", address=("198.51.100.7", 3)).allocate()) is None
    assert error_code(harness.client("carol", address=("198.51.100.7", 4)).allocate()) == 486  # all two
    assert figures(harness)["counters"]["quota_rejections"] == {"user_quota": 1, "total_quota": 1}


def test_508_without_a_free_port_is_counted_by_cause():
    harness = TurnHarness(min_port=50000, max_port=50001, busy_ports=(50000, 50001))
    assert error_code(harness.client("alice").allocate()) == 508
    capacity = figures(harness)["counters"]["capacity_rejections"]
    assert capacity == {"no_relay_port": 1, "reservation_token": 0, "permission_limit": 0}


def test_binding_requests_and_auth_failures_by_reason():
    harness = TurnHarness()
    request = Message(Method.BINDING, MessageClass.REQUEST, b"0123456789ab", [])
    for _ in range(3):
        assert harness.server.handle_stun(encode(request), ("udp", ("198.51.100.7", 9), SERVER), lambda _: None)
    assert error_code(harness.client("alice", password="wrong").allocate()) == 401
    c = figures(harness)["counters"]
    assert c["binding_requests"] == 3
    assert c["auth_failures"] == {"bad_message_integrity": 1}


def test_relayed_counts_stay_when_the_allocation_is_deleted():
    harness = TurnHarness()
    client = harness.client("alice")
    client.allocate()
    peer = ("127.0.0.1", 9000)
    client.create_permission(peer)
    for size in (10, 20, 30):
        client.send_indication(peer, b"x" * size)
    client.relay_socket().receive(b"y" * 40, peer)
    live = figures(harness)
    assert live["gauges"]["allocations"] == {"udp": 1, "tcp": 0, "tls": 0}
    assert live["counters"]["packets"] == {"client_to_peer": 3, "peer_to_client": 1}
    assert live["counters"]["bytes"] == {"client_to_peer": 60, "peer_to_client": 40}
    client.refresh(0)
    gone = figures(harness)
    assert gone["gauges"]["allocations"] == {"udp": 0, "tcp": 0, "tls": 0}
    assert gone["counters"]["packets"] == live["counters"]["packets"]  # counters never go down
    assert gone["counters"]["bytes"] == live["counters"]["bytes"]
    assert gone["counters"]["allocations_deleted"] == 1
