"""The PIN guard against a model: an address is blocked only after `max_failures` 403s within `window`, and only
for `ban` seconds after the last of them, whatever the interleaving of addresses, answers and time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from revproxy.pin_guard import PinGuard, PinGuardSettings, Verdict
from tests.support.clock import FakeClock
from tests.support.strategies import scaled


def guard(**settings) -> tuple[PinGuard, FakeClock]:
    clock = FakeClock(1000.0)
    return PinGuard(PinGuardSettings(enabled=True, **settings), clock), clock


@scaled(0.25)
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from([403, 200]), st.floats(0, 200)), max_size=40))
def test_never_blocks_an_address_without_max_failures_403s_in_a_window(events):
    """Model check: an address is blocked only if it had max_failures 403s within `window` before a time t,
    and t is less than `ban` after the last of them."""
    g, clock = guard(max_failures=3, window=50, ban=100)
    history: dict[str, list[float]] = {}
    for who, status, step in events:
        clock.now += step
        ip = f"192.0.2.{who}"
        blocked = g.verdict(ip) is Verdict.BLOCK
        times = history.get(ip, [])
        could = any(clock.now < times[i + 2] + 100 and times[i + 2] - times[i] < 50 for i in range(len(times) - 2))
        assert not blocked or could
        if not blocked:
            g.record_response(ip, status)
            if status == 403:
                history.setdefault(ip, []).append(clock.now)
