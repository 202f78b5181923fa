"""Allocation quotas: exact per user and in all, across worker processes sharing one table."""

import multiprocessing

import pytest

from relay.quota import LocalQuota, SharedQuota


@pytest.fixture
def table(tmp_path):
    path = str(tmp_path / "quota")
    SharedQuota.create(path, 2)
    return path


def test_local_quota_refuses_beyond_user_and_total_limits():
    quota = LocalQuota()
    assert quota.try_acquire("alice", 2, 3)
    assert quota.try_acquire("alice", 2, 3)
    assert not quota.try_acquire("alice", 2, 3)
    assert quota.try_acquire("bob", 2, 3)
    assert not quota.try_acquire("carol", 2, 3)  # total reached
    quota.release("alice")
    assert quota.try_acquire("carol", 2, 3)


def test_zero_means_unlimited():
    quota = LocalQuota()
    assert all(quota.try_acquire("alice", 0, 0) for _ in range(1000))


def test_shared_quota_counts_a_user_across_workers(table):
    first, second = SharedQuota(table, 0, 2), SharedQuota(table, 1, 2)
    assert first.try_acquire("alice", 3, 0)
    assert second.try_acquire("alice", 3, 0)
    assert first.try_acquire("alice", 3, 0)
    assert not second.try_acquire("alice", 3, 0)
    second.release("alice")  # two left, both in the first worker
    assert second.try_acquire("alice", 3, 0)
    assert not first.try_acquire("alice", 3, 0)


def test_shared_total_quota_across_workers(table):
    first, second = SharedQuota(table, 0, 2), SharedQuota(table, 1, 2)
    assert first.try_acquire("a", 0, 2)
    assert second.try_acquire("b", 0, 2)
    assert not first.try_acquire("c", 0, 2)
    assert not second.try_acquire("d", 0, 2)


def test_restarted_worker_starts_from_zero_and_keeps_the_others_counts(table):
    first, second = SharedQuota(table, 0, 2), SharedQuota(table, 1, 2)
    for _ in range(2):
        assert first.try_acquire("alice", 4, 0)
    assert second.try_acquire("alice", 4, 0)
    first.close()
    replacement = SharedQuota(table, 0, 2)  # the dead worker's allocations died with it
    assert replacement.user_count("alice") == 1
    assert second.user_count("alice") == 1


def test_release_never_goes_below_zero(table):
    quota = SharedQuota(table, 0, 2)
    quota.release("nobody")
    assert quota.user_count("nobody") == 0
    assert quota.try_acquire("nobody", 1, 0)
    assert not quota.try_acquire("nobody", 1, 0)


def test_wrong_table_is_refused(table):
    with pytest.raises(ValueError, match="not a quota table for 3 workers"):
        SharedQuota(table, 0, 3)


def _grab(path: str, worker: int, attempts: int, results) -> None:
    quota = SharedQuota(path, worker, 2)
    results.put(sum(quota.try_acquire("alice", 500, 0) for _ in range(attempts)))


def test_concurrent_processes_never_exceed_the_quota(table):
    results = multiprocessing.get_context("fork").Queue()
    workers = [multiprocessing.get_context("fork").Process(target=_grab, args=(table, i, 400, results))
               for i in range(2)]
    for w in workers:
        w.start()
    granted = results.get(timeout=30) + results.get(timeout=30)
    for w in workers:
        w.join(10)
    assert granted == 500
