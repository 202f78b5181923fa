"""The relay's global budget for requests from sources without an allocation (relay.source_limit), pure: flooders
are shed once it is spent while new and quiet clients, a Conferencing Node that authenticated and clients holding
an allocation are not; the UDP listener's check before any STUN work; the config key, its reload, its counters."""

from __future__ import annotations

import collections
import dataclasses
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance import stats as appliance_stats
from appliance.config import ConfigError
from appliance.metrics import render
from relay.allocation import TurnSettings
from relay.config import relay_config_from_table
from relay.service import turn_settings
from relay.shell import TurnUDPListener
from relay.source_limit import BUDGET_SECONDS, BUDGET_SHED, RATE_LIMITED, SourceRateLimiter
from relay.stats import relay_snapshot
from relay.stun import Message, MessageClass, Method, encode, parse
from tests.support.relay_fakes import REALM, RELAY_IP, SERVER, TurnHarness, error_code


def flooder(i: int) -> str:
    return f"10.1.{i // 250}.{1 + i % 250}"


def flood(limiter: SourceRateLimiter, sources: int, now: float, rounds: int = 1) -> collections.Counter:
    """Every source sends `rounds` requests at `now`; what became of them (None: handled)."""
    seen: collections.Counter = collections.Counter()
    for _ in range(rounds):
        for i in range(sources):
            seen[limiter.check(flooder(i), now)] += 1
    return seen


def test_within_the_budget_every_source_gets_its_own_rate():
    limiter = SourceRateLimiter(rate=10, burst=40, budget=10_000)
    assert flood(limiter, 100, 0.0, rounds=40) == {None: 4000}
    assert flood(limiter, 100, 0.0) == {RATE_LIMITED: 100}  # over their buckets, none shed


def test_over_the_budget_spenders_are_shed_and_a_new_or_quiet_client_is_still_answered():
    limiter = SourceRateLimiter(rate=10, burst=40, budget=100)
    now = 0.0
    seen: collections.Counter = collections.Counter()
    for step in range(30):  # 200 sources at 50 requests a second each: 10,000 a second against a budget of 100
        now += 0.1
        seen += flood(limiter, 200, now, rounds=5)
        if step >= 10 and step % 5 == 0:  # once the flood has spent the sources' buckets (a second)
            assert limiter.check("192.0.2.1", now) is None  # a quiet client, a request every 0.5 s
    late = flood(limiter, 200, now + 0.1, rounds=5)
    assert late[BUDGET_SHED] + late[RATE_LIMITED] >= 990 and late[None] <= 10 + 1
    assert limiter.check("192.0.2.99", now + 0.1) is None  # a fresh one too
    assert seen[BUDGET_SHED] > 0


def test_whatever_the_flood_no_more_than_the_budget_gets_through():
    """Sources that each seem quiet (as when the kernel drops most of a flood before the gate sees it): the budget
    still bounds what is let through, so the relay catches up."""
    limiter = SourceRateLimiter(rate=10, burst=40, budget=100)
    handled = 0
    for step in range(50):  # 5 s; each of 2,000 sources sends one request every 0.5 s
        now = step * 0.1
        for i in range(step % 5, 2000, 5):
            handled += limiter.check(flooder(i), now) is None
    assert handled <= 100 * (5 + 1)


def test_over_the_budget_a_source_is_held_to_half_its_rate():
    limiter = SourceRateLimiter(rate=10, burst=40, budget=40)
    flood(limiter, 50, 0.0, rounds=40)  # 50 sources have spent their buckets and keep sending
    steady, slow = [], []
    for tick in range(1, 101):
        now = tick / 10
        flood(limiter, 50, now, rounds=2)
        steady.append(limiter.check("192.0.2.1", now))  # 10 a second, within its own rate
        if tick % 2 == 0:
            slow.append(limiter.check("192.0.2.2", now))  # one every 0.2 s: never shed
    assert steady[-50:].count(None) <= 26 and BUDGET_SHED in steady  # 3/4 of its burst, then half its rate
    assert slow == [None] * 50


def test_the_budget_refills_once_the_flood_stops():
    limiter = SourceRateLimiter(rate=10, burst=40, budget=100)
    flood(limiter, 200, 0.0, rounds=40)
    assert flood(limiter, 200, 0.0)[None] == 0
    # Two seconds later the buckets are part-way back (20 of 40 tokens): sheddable, but the budget is there again.
    assert flood(limiter, 50, 2.0)[None] == 50


def test_a_source_that_authenticated_is_never_shed():
    limiter = SourceRateLimiter(rate=10, burst=40, budget=1)
    limiter.trust("192.0.2.7", 0.0)
    flood(limiter, 100, 0.0, rounds=40)
    assert all(limiter.check("192.0.2.7", 0.001 * i) is None for i in range(1000))


def test_no_budget_is_the_per_source_limit_alone():
    limiter = SourceRateLimiter(rate=10, burst=40, budget=0)
    assert flood(limiter, 500, 0.0, rounds=40) == {None: 20_000}  # none shed


def test_a_wall_clock_stepped_back_takes_no_tokens_away():
    limiter = SourceRateLimiter(rate=10, burst=4, budget=4)
    assert limiter.check("192.0.2.1", 100.0) is None
    assert limiter.check("192.0.2.2", 50.0) is None  # the budget still has its second request
    assert limiter.check("192.0.2.1", 50.0) is None  # and the source its bucket (3 of 4 left, then over budget: 4)


# --- the core and the UDP listener ---

BINDING = encode(Message(Method.BINDING, MessageClass.REQUEST, bytes(12), []))


def listener_for(harness: TurnHarness) -> tuple[TurnUDPListener, list]:
    listener = TurnUDPListener(harness.server, SERVER)
    written: list = []
    listener.write = lambda data, addr: written.append((data, addr))
    return listener, written


def answered(written: list, address: tuple) -> int:
    return sum(addr == address for _, addr in written)


def small_budget(budget: float = 20.0, **harness) -> TurnHarness:
    return TurnHarness(settings=TurnSettings(realm=REALM, relay_ip=RELAY_IP, unauthenticated_rate=10,
                                             unauthenticated_burst=40, unauthenticated_budget=budget), **harness)


def test_the_listener_drops_a_flood_before_any_stun_work_and_counts_why():
    harness = small_budget()
    listener, written = listener_for(harness)
    for _ in range(3):
        for i in range(200):
            for _ in range(20):
                listener.datagramReceived(b"\x00\x01junk that would be malformed", (flooder(i), 40000))
        harness.advance(1.0)
    server = harness.server
    # Nothing was parsed beyond the budget: its bucket (BUDGET_SECONDS of it) and 20 a second after that; the rest
    # never reached the codec.
    assert server.stats["malformed"] <= 20 * (BUDGET_SECONDS + 3)
    assert server.stats["rate_limited"] > 0 and server.stats["budget_shed"] > 0
    assert server.stats["malformed"] + server.stats["rate_limited"] + server.stats["budget_shed"] == 3 * 200 * 20
    listener.datagramReceived(BINDING, ("192.0.2.1", 5000))  # a browser's first request, mid-flood
    assert answered(written, ("192.0.2.1", 5000)) == 1


def test_a_conferencing_node_and_a_browser_are_never_shed_during_a_flood():
    harness = small_budget(budget=50, max_port=50999)  # a relay port for each of the node's allocations
    listener, written = listener_for(harness)

    def flood_round() -> None:
        for i in range(300):
            listener.datagramReceived(BINDING, (flooder(i), 40000))

    for _ in range(50):
        flood_round()
    # The node: one address, a new 5-tuple per allocation, each starting with an unauthenticated Allocate.
    node_host = "192.0.2.50"
    made = 0
    for port in range(20000, 20300):
        if port % 10 == 0:
            harness.clock.advance(0.05)
            flood_round()
        client = harness.client("alice", address=(node_host, port))
        client.send_raw = lambda data, c=client: via_listener(listener, written, data, c.five_tuple[1])
        if error_code(client.allocate()) is None:
            made += 1
    assert made == 300
    # The browser: a Binding, an unauthenticated Allocate (401), then its allocation and ChannelBind.
    browser = harness.client("bob", address=("198.51.100.20", 61000))
    browser.send_raw = lambda data: via_listener(listener, written, data, ("198.51.100.20", 61000))
    assert via_listener(listener, written, BINDING, ("198.51.100.20", 61000)) is not None
    assert error_code(browser.allocate()) is None
    assert error_code(browser.channel_bind(0x4000, ("127.0.0.1", 9))) is None
    assert harness.server.stats["budget_shed"] > 0


def via_listener(listener: TurnUDPListener, written: list, data: bytes, address: tuple) -> Message | None:
    before = len(written)
    listener.datagramReceived(data, address)
    replies = [out for out, addr in written[before:] if addr == address]
    return parse(replies[-1]) if replies else None


def test_a_client_holding_an_allocation_passes_the_listener_without_the_gate():
    harness = small_budget()
    listener, written = listener_for(harness)
    client = harness.client("alice", address=("192.0.2.60", 7000))
    assert error_code(client.allocate()) is None
    assert error_code(client.channel_bind(0x4000, ("127.0.0.1", 9))) is None
    harness.server.sources.rate, harness.server.sources.burst = 0.001, 1.0  # a gate that would drop everything
    harness.server.sources._trusted.clear()
    harness.server.sources._buckets["192.0.2.60"] = [0.0, harness.clock()]
    for _ in range(100):
        listener.datagramReceived(b"\x40\x00\x00\x04ping", ("192.0.2.60", 7000))
        listener.datagramReceived(encode(Message(Method.REFRESH, MessageClass.REQUEST, os.urandom(12), [])),
                                  ("192.0.2.60", 7000))
    assert client.allocation.packets_from_client == 100
    assert answered(written, ("192.0.2.60", 7000)) == 100  # each Refresh answered (401: it was not signed)
    assert harness.server.stats["rate_limited"] == harness.server.stats["budget_shed"] == 0


def test_channel_data_without_an_allocation_does_not_spend_its_sources_bucket():
    """Media still arriving after its allocation went (a relay restart) is dropped without the gate: the same
    address's next request is answered."""
    harness = small_budget()
    listener, written = listener_for(harness)
    for _ in range(200):  # five times the source's burst
        listener.datagramReceived(b"\x40\x00\x00\x04ping", ("192.0.2.70", 7000))
    assert harness.server.stats["channel_data_dropped"] == 200
    assert via_listener(listener, written, BINDING, ("192.0.2.70", 7001)) is not None
    assert harness.server.stats["rate_limited"] == harness.server.stats["budget_shed"] == 0


# --- config, reload, counters ---


def test_the_budget_is_a_config_key_with_a_default_and_one_line_errors():
    base = {"users": {"alice": "secret"}}
    assert relay_config_from_table(base).unauthenticated_budget == 500
    config = relay_config_from_table({**base, "unauthenticated_budget": 0}, "conf.toml")
    assert turn_settings(config, "127.0.0.1").unauthenticated_budget == 0
    assert turn_settings(relay_config_from_table({**base, "unauthenticated_budget": 500}), "127.0.0.1"
                         ).unauthenticated_budget == 500
    for bad in (-1, 1.5, "many", True):
        with pytest.raises(ConfigError) as refused:
            relay_config_from_table({**base, "unauthenticated_budget": bad}, "conf.toml")
        assert str(refused.value).startswith("conf.toml: [relay] unauthenticated_budget: ")
        assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        relay_config_from_table({**base, "unauthenticated_rate": 0, "unauthenticated_budget": 100}, "conf.toml")
    assert str(refused.value).startswith("conf.toml: [relay] unauthenticated_budget: needs unauthenticated_rate")
    # The rate off and the budget left at its default: both off, no error.
    assert relay_config_from_table({**base, "unauthenticated_rate": 0}).unauthenticated_rate == 0


def test_reload_applies_a_new_budget():
    harness = TurnHarness()
    harness.server.reconfigure(settings=dataclasses.replace(harness.settings, unauthenticated_budget=7.0))
    assert harness.server.sources.budget == 7.0


def test_the_dropped_counts_are_in_the_snapshot_and_in_metrics():
    body = relay_snapshot(collections.Counter({"rate_limited": 5, "budget_shed": 9}), [], {"listen": ["x"]})
    assert body["counters"]["unauthenticated_dropped"] == {"per_source": 5, "budget": 9}
    figures = appliance_stats.aggregate([{"service": "relay", "worker": 0, "pid": os.getpid(), "time": 0.0,
                                          **body}])
    got = {(s.name, tuple(s.labels.items())): s.value
           for family in text_string_to_metric_families(render(figures, [], 1.0).decode())
           for s in family.samples}
    assert got[("rpturn_stun_unauthenticated_dropped_total", (("reason", "per_source"),))] == 5
    assert got[("rpturn_stun_unauthenticated_dropped_total", (("reason", "budget"),))] == 9


def test_a_big_request_counts_for_more_of_the_budget():
    """Parsing costs by the attribute: a 1,380-byte request takes 6 of the budget, a small one 1."""
    small, big = SourceRateLimiter(rate=10, burst=40, budget=60), SourceRateLimiter(rate=10, burst=40, budget=60)
    small_handled = sum(small.check(flooder(i), 0.0, 28) is None for i in range(100))
    big_handled = sum(big.check(flooder(i), 0.0, 1380) is None for i in range(100))
    assert (small_handled, big_handled) == (60, 10)
    harness = small_budget(budget=12 / BUDGET_SECONDS)  # the relay's budget bucket holds BUDGET_SECONDS of its rate
    listener, _ = listener_for(harness)
    for i in range(20):
        listener.datagramReceived(BINDING + b"\x00" * 1352, (flooder(i), 40000))
    assert harness.server.stats["malformed"] == 2 and harness.server.stats["budget_shed"] == 18


def test_the_relays_budget_takes_a_burst_of_new_clients_it_can_afford():
    """A meeting's start: a thousand browsers' first requests at once, no flood. The relay's budget bucket holds
    BUDGET_SECONDS of its rate, so all are answered where a one-second bucket would shed half of them; a flood then
    spends the burst and meets the rate."""
    harness = small_budget(budget=500)
    listener, written = listener_for(harness)
    browsers = [(f"198.18.{i // 250}.{i % 250 + 1}", 50000) for i in range(1000)]
    for address in browsers:
        listener.datagramReceived(BINDING, address)
    assert sum(answered(written, address) for address in browsers) == 1000
    one_second = SourceRateLimiter(rate=10, burst=40, budget=500)
    assert sum(one_second.check(address[0], 0.0) is None for address in browsers) < 600
