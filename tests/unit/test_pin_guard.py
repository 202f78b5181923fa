"""The PIN guard's core: counting 403s per address in a window, bans that end, other addresses unaffected, bounded
memory, the guarded path and the config table (the model-based property is in tests/property)."""

from __future__ import annotations

import pytest

from revproxy.pin_guard import PinGuard, PinGuardSettings, Verdict, is_guarded, settings_from_table
from tests.support.clock import FakeClock


def guard(**settings) -> tuple[PinGuard, FakeClock]:
    clock = FakeClock(1000.0)
    return PinGuard(PinGuardSettings(enabled=True, **settings), clock), clock


def test_tenth_403_within_the_window_bans_for_ban_seconds():
    g, clock = guard()
    for _ in range(9):
        assert g.record_response("192.0.2.1", 403) is False
        clock.now += 1
    assert g.verdict("192.0.2.1") is Verdict.ALLOW
    assert g.record_response("192.0.2.1", 403) is True
    assert g.verdict("192.0.2.1") is Verdict.BLOCK
    assert g.verdict("192.0.2.2") is Verdict.ALLOW  # others unaffected
    clock.now += 299
    assert g.verdict("192.0.2.1") is Verdict.BLOCK
    clock.now += 1
    assert g.verdict("192.0.2.1") is Verdict.ALLOW
    assert (g.failures_total, g.bans_total, g.blocked_total) == (10, 1, 2)


def test_failures_older_than_the_window_do_not_count():
    g, clock = guard(max_failures=3, window=10)
    g.record_response("192.0.2.1", 403)
    clock.now += 6
    g.record_response("192.0.2.1", 403)
    clock.now += 5  # the first is now 11 s old
    assert g.record_response("192.0.2.1", 403) is False
    assert g.record_response("192.0.2.1", 403) is True


def test_only_403_counts():
    g, _ = guard(max_failures=2)
    for status in (200, 401, 404, 429, 500, 502):
        assert g.record_response("192.0.2.1", status) is False
    assert g.tracked() == 0


def test_mapped_ipv6_is_the_same_client():
    g, _ = guard(max_failures=2)
    g.record_response("::ffff:192.0.2.7", 403)
    g.record_response("192.0.2.7", 403)
    assert g.verdict("::ffff:192.0.2.7") is Verdict.BLOCK and g.verdict("192.0.2.7") is Verdict.BLOCK


def test_memory_is_bounded_under_many_addresses():
    g, clock = guard(max_failures=2, max_clients=1000)
    for i in range(20_000):
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        g.record_response(ip, 403)
        g.record_response(ip, 403)  # banned
        clock.now += 0.001
    assert g.tracked() <= 1000 and g.banned() <= 1000
    assert g.forgotten_total >= 19_000
    assert g.verdict("10.0.78.31") is Verdict.BLOCK  # the most recent bans are the ones kept (i = 19999)


@pytest.mark.parametrize("method, target, guarded", [
    ("POST", "/api/client/v2/conferences/meet.alice/request_token", True),
    (b"POST", b"/api/client/v2/conferences/123/request_token?x=1", True),
    ("GET", "/api/client/v2/conferences/meet.alice/request_token", False),
    ("POST", "/api/client/v2/conferences/meet.alice/request_token/x", False),
    ("POST", "/api/client/v2/conferences//request_token", False),
    ("POST", "/api/client/v2/conferences/a/b/request_token", False),
    ("POST", "/api/client/v2/conferences/meet.alice/release_token", False),
])
def test_guarded_path(method, target, guarded):
    assert is_guarded(method, target) is guarded


def test_config_table():
    assert settings_from_table({}) == PinGuardSettings()
    assert settings_from_table({"enabled": True, "max_failures": 5, "window": 60, "ban": 30.5}) == PinGuardSettings(
        True, 5, 60.0, 30.5)
    for table, problem in [({"enabled": "yes"}, "enabled: expected true or false"),
                           ({"max_failures": 0}, "max_failures: expected a whole number"),
                           ({"window": -1}, "window: expected seconds"),
                           ({"bam": 1}, "bam: unknown key")]:
        with pytest.raises(ValueError, match=problem):
            settings_from_table(table)
