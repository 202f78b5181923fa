"""Properties of the relay's flood gate with a global budget (relay.source_limit): whatever flooders that have
spent their buckets do (how fast, in what order), a quiet client and a source that authenticated are never
dropped; whatever any sources do, no more than the budget gets through and the tables stay within their bounds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.source_limit import BUDGET_SHED, OVER_BUDGET_COST, SourceRateLimiter
from tests.support.strategies import scaled

RATE, BURST = 10.0, 40.0
QUIET_GAP = OVER_BUDGET_COST / RATE  # a quiet client sends at most one request this often
FLOODERS = 40

# Each step: time passes (at most 50 ms, so every flooder keeps sending faster than its rate), every flooder sends
# one request, and one of them sends a burst more.
flood_steps = st.lists(st.tuples(st.floats(0.005, 0.05), st.integers(0, FLOODERS - 1), st.integers(0, 30)),
                       min_size=40, max_size=150)


@scaled(0.25)
@given(flood_steps, st.integers(1, 300), st.lists(st.floats(QUIET_GAP, 3.0), min_size=1, max_size=20))
def test_a_quiet_client_and_a_trusted_node_are_never_dropped_while_spenders_flood(steps, budget, quiet_gaps):
    limiter = SourceRateLimiter(rate=RATE, burst=BURST, budget=budget)
    limiter.trust("192.0.2.200", 0.0)  # a Conferencing Node that authenticated
    flooders = [f"10.0.0.{i}" for i in range(FLOODERS)]
    for source in flooders:  # the flood is on already: its sources have spent their buckets
        for _ in range(int(BURST) + 5):
            limiter.check(source, 0.0)
    limiter._budget_tokens = 0.0  # and the budget (whatever it let through just now)
    now = 0.0
    quiet_at = QUIET_GAP  # the quiet client's first request
    gaps = iter(quiet_gaps * 50)
    for step, loud, extra in steps:
        now += step
        while quiet_at <= now:
            if quiet_at > 1.0 / budget:  # the budget has had time to give it a token
                assert limiter.check("192.0.2.1", quiet_at) is None, "the quiet client was dropped"
            # (and it asks no more than the half of the budget kept for quiet sources holds)
            quiet_at += max(next(gaps, QUIET_GAP), 2.0 / budget)
        for source in flooders:
            limiter.check(source, now)
        for _ in range(extra):
            limiter.check(flooders[loud], now)
        assert limiter.check("192.0.2.200", now) is None, "the node that authenticated was dropped"


@scaled(0.25)
@given(st.lists(st.tuples(st.integers(0, 500), st.floats(0, 0.2), st.integers(1, 20)), max_size=150),
       st.integers(1, 300), st.one_of(st.integers(5, 60), st.just(100_000)))
def test_no_more_than_the_budget_gets_through_and_memory_stays_bounded(requests, budget, max_sources):
    limiter = SourceRateLimiter(rate=RATE, burst=BURST, max_sources=max_sources, budget=budget)
    handled = 0
    now = 0.0
    for source, step, count in requests:
        now += step
        for _ in range(count):
            handled += limiter.check(f"10.1.{source >> 8}.{source & 255}", now) is None
        assert len(limiter) <= max_sources and len(limiter._trusted) <= max_sources
        assert handled <= budget * (now + 1)


@scaled(0.25)
@given(st.integers(1, 50), st.integers(20, 200), st.floats(0.5, 3.0))
def test_sources_at_their_full_rate_far_over_the_budget_are_shed_and_bounded_by_it(budget, sources, seconds):
    limiter = SourceRateLimiter(rate=RATE, burst=BURST, budget=budget)
    handled = shed = 0
    ticks = int(seconds * RATE)
    for tick in range(1, ticks + 1):
        now = tick / RATE
        for i in range(sources):
            verdict = limiter.check(f"10.2.{i >> 8}.{i & 255}", now)
            handled += verdict is None
            shed += verdict == BUDGET_SHED
    assert handled <= budget * (ticks / RATE + 1)
    if sources * RATE > 2 * budget and seconds >= 1.0:
        assert shed > 0
