"""PortPool: random relay ports from a range, even ports and pairs, release, quarantine of unbindable ports."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.ports import PortPool
from tests.support.relay_fakes import FakeClock


def test_acquire_hands_out_every_port_of_the_range_once_then_none():
    pool = PortPool(50000, 50009, random.Random(1))
    ports = [pool.acquire() for _ in range(10)]
    assert sorted(ports) == list(range(50000, 50010))
    assert pool.acquire() is None
    assert pool.free_count == 0


def test_ports_are_not_handed_out_in_order():
    pool = PortPool(40000, 40999, random.Random(2))
    ports = [pool.acquire() for _ in range(20)]
    assert ports != sorted(ports)


def test_acquire_even_returns_an_even_port():
    pool = PortPool(50000, 50099, random.Random(3))
    assert all(pool.acquire(even=True) % 2 == 0 for _ in range(50))
    assert pool.acquire(even=True) is None  # the 50 even ports are gone
    assert pool.acquire() % 2 == 1


def test_acquire_pair_holds_an_even_port_and_the_next():
    pool = PortPool(50000, 50099, random.Random(4))
    port, next_port = pool.acquire_pair()
    assert port % 2 == 0 and next_port == port + 1
    assert {port, next_port} <= pool.held
    assert pool.free_count == 98


def test_acquire_pair_is_none_when_no_even_odd_pair_is_free():
    pool = PortPool(50001, 50002, random.Random(5))  # 50002's partner 50003 is outside the range
    assert pool.acquire_pair() is None
    assert pool.free_count == 2


@pytest.mark.parametrize(("released", "pair"), [
    pytest.param((50514, 50515), (50514, 50515), id="finds_the_only_free_even_odd_pair"),
    pytest.param((50515, 50516), None, id="ignores_an_odd_even_pair"),
])
def test_acquire_pair_in_a_full_pool_with_two_ports_released(released, pair):
    pool = PortPool(50000, 50999, random.Random(6))
    for _ in range(1000):
        pool.acquire()
    for port in released:
        pool.release(port)
    assert pool.acquire_pair() == pair


def test_released_port_can_be_acquired_again():
    pool = PortPool(50000, 50000)
    port = pool.acquire()
    pool.release(port)
    assert pool.free_count == 1
    assert pool.acquire() == port


def test_releasing_a_port_that_is_not_held_is_an_error():
    pool = PortPool(50000, 50010)
    with pytest.raises(ValueError, match="not held"):
        pool.release(50003)


def test_unusable_port_is_not_offered_until_the_quarantine_ends():
    clock = FakeClock()
    pool = PortPool(50000, 50000, clock=clock, quarantine=60)
    port = pool.acquire()
    pool.mark_unusable(port)
    assert pool.acquire() is None and pool.unusable == {port}
    clock.advance(59)
    assert pool.acquire() is None
    clock.advance(1)
    assert pool.acquire() == port


def test_range_outside_1_to_65535_or_reversed_is_refused():
    for low, high in ((0, 10), (100, 99), (65535, 65536)):
        with pytest.raises(ValueError, match="relay port range"):
            PortPool(low, high)


@given(st.lists(st.tuples(st.sampled_from(["acquire", "even", "pair", "release", "unusable", "wait"]),
                          st.integers(0, 1000)), max_size=60))
def test_every_port_is_exactly_one_of_free_held_or_unusable(operations):
    clock = FakeClock()
    pool = PortPool(50000, 50015, random.Random(0), clock=clock, quarantine=10)
    held: set[int] = set()
    for operation, n in operations:
        if operation == "acquire" and (port := pool.acquire()) is not None:
            assert port not in held
            held.add(port)
        elif operation == "even" and (port := pool.acquire(even=True)) is not None:
            assert port % 2 == 0 and port not in held
            held.add(port)
        elif operation == "pair" and (pair := pool.acquire_pair()) is not None:
            assert not held & set(pair)
            held |= set(pair)
        elif operation in ("release", "unusable") and held:
            port = sorted(held)[n % len(held)]
            held.remove(port)
            (pool.release if operation == "release" else pool.mark_unusable)(port)
        elif operation == "wait":
            clock.advance(n % 20)
        assert pool.held == held
        unusable = pool.unusable
        assert not unusable & held
        assert pool.free_count + len(held) + len(unusable) == 16
