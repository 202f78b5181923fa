"""Log lines an attacker can trigger are rate-limited, and the next line says how many were held back."""

from relay.ratelimit import LogLimiter
from tests.support.relay_fakes import TurnHarness


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
    from twisted.logger import globalLogPublisher

    harness = TurnHarness()
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(500):
            client = harness.client("alice", password="wrong")
            client.allocate()
    finally:
        globalLogPublisher.removeObserver(events.append)
    failures = [e for e in events if e.get("event") == "auth_failure"]
    assert harness.server.stats["auth_failures"] == 500
    assert 0 < len(failures) <= 60  # the burst of 50, plus what the fake clock's passing time refills
