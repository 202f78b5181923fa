"""Summing worker snapshots (appliance.stats.aggregate): whatever the workers, their restarts and which are alive."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from appliance import stats
from tests.support.strategies import figure_snapshots, scaled


@scaled(0.1)
@given(figure_snapshots(), st.sets(st.integers(1, 6)))
def test_counters_sum_every_process_gauges_only_live_ones_restarts_are_extra_pids(snapshots, alive):
    figures = stats.aggregate(snapshots, alive=lambda pid: pid in alive)
    for service in {s["service"] for s in snapshots}:
        mine = [s for s in snapshots if s["service"] == service]
        live = [s for s in mine if s["pid"] in alive]
        f = figures[service]
        assert f.counters.get("requests", 0) == sum(s["counters"]["requests"] for s in mine)
        for code in ("401", "438", "486"):
            assert f.counters.get("errors", {}).get(code, 0) == sum(s["counters"].get("errors", {}).get(code, 0)
                                                                    for s in mine)
        assert f.gauges.get("allocations", {}).get("udp", 0) == sum(s["gauges"]["allocations"]["udp"] for s in live)
        assert f.workers == len(live)
        slots = {s["worker"] for s in mine}
        assert f.restarts == len(mine) - len(slots)
    assert set(figures) == {s["service"] for s in snapshots}


@scaled(0.1)
@given(figure_snapshots())
def test_summing_in_any_order_gives_the_same_counters(snapshots):
    forward = stats.aggregate(snapshots, alive=lambda pid: True)
    backward = stats.aggregate(list(reversed(snapshots)), alive=lambda pid: True)
    assert {k: (v.counters, v.gauges, v.workers, v.restarts) for k, v in forward.items()} == \
        {k: (v.counters, v.gauges, v.workers, v.restarts) for k, v in backward.items()}
