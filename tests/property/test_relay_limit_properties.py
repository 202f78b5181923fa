"""Properties of the relay's flood bounds against simple models: whatever the sequence of events, the tables stay
within their bounds and their counts agree with what is really held."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from relay.control_connections import Admission, ControlConnections
from relay.source_limit import SourceRateLimiter
from relay.transactions import ENTRY_OVERHEAD, TransactionCache
from tests.support.strategies import scaled

SERVER = ("127.0.0.1", 3478)
HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]

connection_events = st.lists(st.tuples(
    st.sampled_from(["open", "allocate", "deallocate", "close", "tick"]),
    st.sampled_from(HOSTS), st.integers(1, 6), st.floats(0, 30)), max_size=80)


@scaled(0.25)
@given(connection_events, st.integers(1, 3), st.integers(1, 8))
def test_unallocated_connections_match_a_model_and_respect_both_caps(events, per_ip, max_total):
    connections = ControlConnections(per_ip=per_ip, max_total=max_total, lifetime=60)
    open_: dict[tuple, bool] = {}  # 5-tuple -> holds an allocation
    closed: list[tuple] = []
    now = 0.0
    for kind, host, port, step in events:
        five_tuple = ("tcp", (host, port), SERVER)
        now += step
        if kind == "open" and five_tuple not in open_:
            admitted = connections.opened(five_tuple, lambda ft=five_tuple: closed.append(ft), now)
            if admitted is Admission.ADMITTED:
                open_[five_tuple] = False
        elif kind == "allocate" and five_tuple in open_:
            connections.allocated(five_tuple)
            open_[five_tuple] = True
        elif kind == "deallocate" and open_.get(five_tuple):
            connections.deallocated(five_tuple, now)
            open_[five_tuple] = False
        elif kind == "close" and five_tuple in open_:
            connections.closed(five_tuple)
            del open_[five_tuple]
        elif kind == "tick":
            connections.expire(now)
            for gone in closed:
                open_.pop(gone, None)
            closed.clear()
        unallocated = [ft for ft, allocated in open_.items() if not allocated]
        assert len(connections) == len(unallocated) <= max_total
        per_source = Counter(ft[1][0] for ft in unallocated)
        assert all(count <= per_ip for count in per_source.values())
        assert dict(connections._per_source) == dict(per_source)


@scaled(0.25)
@given(st.lists(st.tuples(st.sampled_from(["alice", "bob", "carol"]), st.binary(min_size=1, max_size=200)),
                max_size=200), st.integers(1, 20), st.integers(1, 30))
def test_transaction_cache_stays_within_its_bounds_and_counts_its_bytes(puts, per_user, entries):
    cache = TransactionCache(per_user=per_user, max_bytes=entries * (100 + ENTRY_OVERHEAD))
    five_tuple = ("udp", ("10.0.0.1", 1), SERVER)
    for i, (user, response) in enumerate(puts):
        cache.put(five_tuple, i.to_bytes(12), response, 40.0, user)
        assert cache.get(five_tuple, i.to_bytes(12)) == response or len(response) + ENTRY_OVERHEAD > cache.max_bytes
        held = [(key, value) for key, value in cache._entries.items()]
        assert cache.bytes == sum(len(value[0]) + ENTRY_OVERHEAD for _, value in held) <= cache.max_bytes
        assert all(count <= per_user for count in Counter(value[2] for _, value in held).values())
        assert sum(len(keys) for keys in cache._by_user.values()) == len(held)


@scaled(0.25)
@given(st.lists(st.tuples(st.integers(0, 500), st.floats(0, 0.5)), max_size=300),
       st.one_of(st.integers(1, 50), st.just(100_000)))
def test_source_buckets_stay_bounded_and_never_allow_more_than_burst_plus_rate(requests, max_sources):
    limiter = SourceRateLimiter(rate=10, burst=5, max_sources=max_sources)
    allowed: Counter[int] = Counter()
    now = 0.0
    for source, step in requests:
        now += step
        if limiter.allow(f"10.0.{source >> 8}.{source & 255}", now):
            allowed[source] += 1
        assert len(limiter) <= max_sources
    if max_sources == 100_000:  # no source ever forgotten: each got at most its burst plus what the rate refilled
        assert all(count <= 5 + 10 * now + 1 for count in allowed.values())
