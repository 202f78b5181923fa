"""Log lines an attacker can trigger are rate-limited, and the next line says how many were held back."""

from relay.ratelimit import LogLimiter
from tests.support.relay_fakes import with_settings


def test_burst_passes_then_lines_are_held_back_and_counted():
    limiter = LogLimiter(rate=10.0, burst=3.0)
    assert [limiter.allow(0.0) for _ in range(5)] == [0, 0, 0, None, None]
    assert limiter.allow(0.1) == 2  # one token back after 0.1 s; two lines were suppressed


def test_a_quiet_period_refills_the_bucket_up_to_the_burst():
    limiter = LogLimiter(rate=1.0, burst=2.0)
    assert limiter.allow(0.0) == 0 and limiter.allow(0.0) == 0 and limiter.allow(0.0) is None
    assert limiter.allow(100.0) == 1
    assert limiter.allow(100.0) == 0
    assert limiter.allow(100.0) is None


def test_an_auth_failure_flood_is_counted_but_logged_only_at_the_limit():
    # From 500 sources (in memory, nothing is sent): one source's flood would mostly stop at its own rate limit
    # before the credential check, and this test is about the log lines of the failures that reach it; the global
    # budget for unauthenticated requests (its own tests: test_relay_flood_budget) is off for the same reason.
    harness = with_settings(unauthenticated_budget=0)
    for i in range(500):
        client = harness.client("alice", password="wrong", address=(f"198.51.{100 + i // 250}.{i % 250 + 1}", 40000))
        client.allocate()
    failures = [e for e in harness.events if e.get("event") == "auth_failure"]
    assert harness.server.stats["auth_failures"] == 500
    assert 0 < len(failures) <= 60  # the burst of 50, plus what the fake clock's passing time refills
