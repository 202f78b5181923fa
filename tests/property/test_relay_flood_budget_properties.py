"""Properties of the relay's flood gate with a global budget (relay.source_limit): whatever the flood does (which
sources, how fast, in what order), a quiet client and a source that authenticated are never dropped, and the
tables stay within their bounds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.source_limit import OVER_BUDGET_COST, SourceRateLimiter
from tests.support.strategies import scaled

RATE, BURST = 10.0, 40.0
QUIET_GAP = OVER_BUDGET_COST / RATE  # a quiet client sends at most one request this often

flood_steps = st.lists(st.tuples(st.integers(0, 400), st.floats(0, 0.05), st.integers(1, 30)), max_size=150)


@scaled(0.25)
@given(flood_steps, st.integers(0, 200), st.one_of(st.integers(5, 60), st.just(100_000)),
       st.lists(st.floats(QUIET_GAP, 3.0), min_size=1, max_size=20))
def test_a_quiet_client_is_never_dropped_and_memory_stays_bounded(steps, budget, max_sources, quiet_gaps):
    limiter = SourceRateLimiter(rate=RATE, burst=BURST, max_sources=max_sources, budget=budget)
    limiter.trust("192.0.2.200", 0.0)  # a Conferencing Node that authenticated
    for i in range(50):  # the flood is on already: 50 sources have spent their buckets and the budget
        for _ in range(60):
            limiter.check(f"10.0.0.{i}", 0.0)
    now = 0.0
    quiet_at = 0.0  # the quiet client's first request comes right then
    gaps = iter(quiet_gaps * 50)
    for source, step, burst in steps:
        now += step
        while quiet_at <= now:
            assert limiter.check("192.0.2.1", quiet_at) is None, "the quiet client was dropped"
            quiet_at += next(gaps, QUIET_GAP)
        for _ in range(burst):
            limiter.check(f"10.1.{source >> 8}.{source & 255}", now)
        assert limiter.check("192.0.2.200", now) is None, "the node that authenticated was dropped"
        assert len(limiter) <= max_sources and len(limiter._trusted) <= max_sources
        assert limiter._budget_tokens <= max(budget, 0)


@scaled(0.25)
@given(st.integers(1, 50), st.integers(20, 200), st.floats(0.5, 3.0))
def test_over_the_budget_a_steady_flooder_is_shed_and_gets_at_most_a_quarter_of_its_rate(budget, sources, seconds):
    """Sources each sending at their full rate, together far over the budget: beyond the budget and half a burst
    each, they get at most a quarter of their rate, and shedding is what holds them there."""
    limiter = SourceRateLimiter(rate=RATE, burst=BURST, budget=budget)
    handled = 0
    ticks = int(seconds * RATE)
    for tick in range(1, ticks + 1):
        now = tick / RATE
        for i in range(sources):
            if limiter.check(f"10.2.{i >> 8}.{i & 255}", now) is None:
                handled += 1
    limit = budget * (seconds + 1) + sources * (BURST / 2 + RATE / OVER_BUDGET_COST * seconds + OVER_BUDGET_COST)
    assert handled <= limit
    if sources * RATE > 2 * budget and seconds >= 2.0:
        assert limiter.shed > 0
