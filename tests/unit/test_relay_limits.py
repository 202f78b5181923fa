"""The relay core's flood bounds, pure: control connections without an allocation, per-source token buckets, the
retransmission cache's per-user and byte bounds, and per-user limits on allocation log lines."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.config import ConfigError
from relay.config import relay_config_from_table
from relay.control_connections import Admission, ControlConnections
from relay.events import SUMMARY_INTERVAL, EventLog
from relay.service import turn_settings
from relay.source_limit import SourceRateLimiter
from relay.transactions import ENTRY_OVERHEAD, TransactionCache
from tests.support.relay_fakes import SERVER, TurnHarness, error_code


def tcp(host: str, port: int = 40000) -> tuple:
    return ("tcp", (host, port), SERVER)


# --- control connections ---


def test_connections_without_allocation_are_capped_per_source_and_in_all():
    closed = []
    connections = ControlConnections(per_ip=2, max_total=3, lifetime=60)
    assert connections.opened(tcp("10.0.0.1", 1), closed.append, 0.0) is Admission.ADMITTED
    assert connections.opened(tcp("10.0.0.1", 2), closed.append, 0.0) is Admission.ADMITTED
    assert connections.opened(tcp("10.0.0.1", 3), closed.append, 0.0) is Admission.PER_SOURCE_LIMIT
    assert connections.opened(tcp("10.0.0.2", 1), closed.append, 0.0) is Admission.ADMITTED
    assert connections.opened(tcp("10.0.0.3", 1), closed.append, 0.0) is Admission.GLOBAL_LIMIT
    connections.allocated(tcp("10.0.0.1", 1))  # an allocation takes it out of both counts
    assert connections.opened(tcp("10.0.0.1", 3), closed.append, 0.0) is Admission.ADMITTED


def test_global_cap_is_at_most_a_quarter_of_the_open_files_limit():
    connections = ControlConnections(per_ip=100, max_total=10_000)
    assert connections.cap(400) == 100 and connections.cap(None) == 10_000 and connections.cap(1_000_000) == 10_000


def test_connection_is_closed_when_its_lifetime_runs_out_and_restarts_after_losing_its_allocation():
    closed = []
    connections = ControlConnections(lifetime=60)
    first, second = tcp("10.0.0.1", 1), tcp("10.0.0.1", 2)
    connections.opened(first, lambda: closed.append(first), 0.0)
    connections.opened(second, lambda: closed.append(second), 10.0)
    connections.allocated(second)
    assert connections.expire(59.0) == 0
    assert connections.expire(60.0) == 1 and closed == [first]
    connections.deallocated(second, 100.0)
    assert connections.expire(159.0) == 0 and connections.expire(160.0) == 1 and closed == [first, second]
    assert len(connections) == 0


def test_core_counts_refused_connections_and_an_allocation_lifts_the_limit():
    harness = TurnHarness()
    server = harness.server
    server.connections.per_ip = 1
    first = harness.client("alice", address=("198.51.100.7", 40000), transport="tcp")
    assert server.tcp_connection_made(first.five_tuple, lambda: None)
    assert not server.tcp_connection_made(tcp("198.51.100.7", 40001), lambda: None)
    assert server.stats["tcp_refused_per_source"] == 1
    assert error_code(first.allocate()) is None
    assert server.tcp_connection_made(tcp("198.51.100.7", 40002), lambda: None)


def test_core_closes_an_unallocated_connection_after_its_lifetime():
    harness = TurnHarness()
    closed = []
    assert harness.server.tcp_connection_made(tcp("198.51.100.7"), lambda: closed.append(True))
    harness.advance(harness.settings.tcp_unallocated_lifetime + 1)
    assert closed == [True] and harness.server.stats["tcp_unallocated_expired"] == 1


# --- per-source buckets ---


def test_a_source_gets_its_burst_then_its_rate():
    limiter = SourceRateLimiter(rate=10, burst=5)
    assert [limiter.allow("10.0.0.1", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.allow("10.0.0.2", 0.0)  # another source has its own bucket
    assert not limiter.allow("10.0.0.1", 0.05) and limiter.allow("10.0.0.1", 0.2)


def test_the_bucket_table_stays_bounded():
    limiter = SourceRateLimiter(rate=1, burst=2, max_sources=100)
    for i in range(10_000):
        limiter.allow(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 0.0)
    assert len(limiter) <= 100


def test_a_source_that_authenticated_skips_its_bucket_for_a_while():
    limiter = SourceRateLimiter(rate=1, burst=1, trust_lifetime=600)
    limiter.trust("10.0.0.1", 0.0)
    assert all(limiter.allow("10.0.0.1", 1.0) for _ in range(100))
    assert limiter.allow("10.0.0.1", 700.0) and not limiter.allow("10.0.0.1", 700.0)


def test_core_drops_requests_beyond_a_sources_bucket_before_parsing():
    harness = TurnHarness()
    server = harness.server
    flooder = harness.client("alice", address=("203.0.113.9", 5000))
    limit = int(harness.settings.unauthenticated_burst)
    answers = [flooder.send_raw(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + bytes(12)) for _ in range(limit + 10)]
    assert sum(answer is not None for answer in answers) == limit
    assert server.stats["rate_limited"] == 10
    other = harness.client("bob", address=("203.0.113.10", 5000))
    assert error_code(other.allocate()) is None  # another source is untouched


# --- retransmission cache ---


def test_one_user_evicts_only_its_own_entries():
    cache = TransactionCache(per_user=3)
    five_tuple = ("udp", ("10.0.0.1", 1), SERVER)
    cache.put(five_tuple, b"bob-0", b"answer", 40.0, "bob")
    for i in range(100):
        cache.put(five_tuple, b"alice-%d" % i, b"answer", 40.0, "alice")
    assert cache.get(five_tuple, b"bob-0") == b"answer"
    assert cache.get(five_tuple, b"alice-99") == b"answer" and cache.get(five_tuple, b"alice-96") is None
    assert len(cache) == 4 and cache.evicted == 97


def test_the_cache_holds_at_most_its_byte_budget():
    cache = TransactionCache(per_user=10_000, max_bytes=100 * (100 + ENTRY_OVERHEAD))
    five_tuple = ("udp", ("10.0.0.1", 1), SERVER)
    for i in range(1000):
        cache.put(five_tuple, b"%d" % i, b"x" * 100, 40.0, f"user{i % 7}")
    assert len(cache) == 100 and cache.bytes <= cache.max_bytes
    cache.expire(40.0)
    assert len(cache) == 0 and cache.bytes == 0


# --- allocation log lines ---


def test_allocation_lines_are_limited_per_user_with_one_summary():
    lines = []
    now = [0.0]
    events = EventLog(lambda text, **fields: lines.append(fields), lambda: now[0], allocation_rate=1,
                      allocation_burst=3)

    class Fake:
        five_tuple = ("udp", ("10.0.0.1", 1), SERVER)
        relayed_address = ("127.0.0.1", 50000)
        lifetime = 600

    alice, bob = Fake(), Fake()
    alice.username, bob.username = "alice", "bob"
    for _ in range(50):
        events.allocation_created(alice)
    events.allocation_created(bob)
    assert [line["user"] for line in lines] == ["alice"] * 3 + ["bob"]
    events.flush(SUMMARY_INTERVAL)
    (summary,) = [line for line in lines if line["event"] == "allocation_lines_suppressed"]
    assert summary["user"] == "alice" and summary["suppressed"] == 47


def test_logged_user_names_are_escaped():
    lines = []
    events = EventLog(lambda text, **fields: lines.append(text))

    class Fake:
        five_tuple = ("udp", ("10.0.0.1", 1), SERVER)
        relayed_address = ("127.0.0.1", 50000)
        lifetime = 600
        username = "eve\x85forged line\nINFO"

    events.allocation_created(Fake())
    (text,) = lines
    assert len(text.splitlines()) == 1 and "\\x85" in text and "\\x0a" in text


# --- configuration and reload ---


def test_the_limits_are_config_keys_with_one_line_errors():
    table = {"users": {"alice": "secret"}, "tcp_unallocated_per_ip": 8, "tcp_unallocated_max": 100,
             "tcp_unallocated_lifetime": 20, "tcp_unallocated_buffer": 2048, "transactions_per_user": 10,
             "transaction_cache_bytes": 1 << 20, "unauthenticated_rate": 0, "unauthenticated_burst": 5}
    config = relay_config_from_table(table, "conf.toml")
    settings = turn_settings(config, "127.0.0.1")
    assert {key: getattr(settings, key) for key in table if key != "users"} == {
        key: value for key, value in table.items() if key != "users"}
    assert dataclasses.replace(config).tcp_unallocated_per_ip == 8
    with pytest.raises(ConfigError) as refused:
        relay_config_from_table({**table, "tcp_unallocated_buffer": 100}, "conf.toml")
    assert str(refused.value).startswith("conf.toml: [relay] tcp_unallocated_buffer: ")
    assert "\n" not in str(refused.value)


def test_reload_applies_new_limits_to_the_live_tables():
    harness = TurnHarness()
    server = harness.server
    new = dataclasses.replace(harness.settings, tcp_unallocated_per_ip=3, tcp_unallocated_max=7,
                              tcp_unallocated_lifetime=9.0, transactions_per_user=11, transaction_cache_bytes=99999,
                              unauthenticated_rate=2.0, unauthenticated_burst=4.0)
    server.reconfigure(settings=new)
    assert (server.connections.per_ip, server.connections.max_total, server.connections.lifetime) == (3, 7, 9.0)
    assert (server.transactions.per_user, server.transactions.max_bytes) == (11, 99999)
    assert (server.sources.rate, server.sources.burst) == (2.0, 4.0)


def test_permission_denied_lines_share_the_users_limit():
    harness = TurnHarness()
    client = harness.client("alice")
    assert error_code(client.allocate()) is None
    for _ in range(300):
        assert error_code(client.create_permission(("10.0.0.1", 9000))) == 403
    denied = [event for event in harness.events if event["event"] == "permission_denied"]
    assert 0 < len(denied) < 150 and harness.server.stats["permissions_denied"] == 300
