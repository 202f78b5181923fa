"""Allocation quotas (`user_quota`, `total_quota`) that hold across worker processes.

With `workers = N` the kernel spreads clients over N processes by 5-tuple, so one user's allocations can live in
several workers at once. The counts therefore live in one small memory-mapped file that every worker opens: a
table of slots, each the 8-byte hash of a username followed by one 32-bit count per worker. A worker only ever
changes its own column, and checks the sum of all columns, under an exclusive flock(): a few microseconds per
Allocate and per deletion, nothing per packet. When a worker dies its allocations die with it, so its
replacement zeroes its column on start and the counts stay exact.

With one worker `LocalQuota` does the same with a Counter.
"""

from __future__ import annotations

import collections
import fcntl
import hashlib
import mmap
import os
import struct
from typing import Protocol

QUOTA_SLOTS = 65536
_KEY = struct.Struct("<Q")
_TOTAL = "\x00total"  # slot name for the all-users count; no username contains NUL
_PROBES = 64


class Quota(Protocol):
    def try_acquire(self, username: str, user_quota: int, total_quota: int) -> bool: ...
    def release(self, username: str) -> None: ...


class LocalQuota:
    """Quota counts for a single process."""

    def __init__(self) -> None:
        self.per_user: collections.Counter[str] = collections.Counter()
        self.total = 0

    def try_acquire(self, username: str, user_quota: int, total_quota: int) -> bool:
        if user_quota and self.per_user[username] >= user_quota:
            return False
        if total_quota and self.total >= total_quota:
            return False
        self.per_user[username] += 1
        self.total += 1
        return True

    def user_count(self, username: str) -> int:
        return self.per_user[username]

    def release(self, username: str) -> None:
        self.per_user[username] -= 1
        if self.per_user[username] <= 0:
            del self.per_user[username]
        self.total -= 1


def _key(name: str) -> int:
    # 0 marks an empty slot, so never hand it out as a key.
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") or 1


class SharedQuota:
    """Quota counts shared by `workers` processes through the file at `path` (create it with `create`)."""

    def __init__(self, path: str, worker: int, workers: int) -> None:
        if not 0 <= worker < workers:
            raise ValueError(f"worker index {worker} outside 0..{workers - 1}")
        self.worker = worker
        self.workers = workers
        self.counts = struct.Struct(f"<{workers}I")
        self.slot_size = _KEY.size + self.counts.size
        self.fd = os.open(path, os.O_RDWR)
        size = os.fstat(self.fd).st_size
        if size != QUOTA_SLOTS * self.slot_size:
            os.close(self.fd)
            raise ValueError(f"{path} is {size} bytes, not a quota table for {workers} workers")
        self.map = mmap.mmap(self.fd, size)
        with self._locked():
            for offset in range(0, size, self.slot_size):
                if _KEY.unpack_from(self.map, offset)[0]:
                    self._add(offset, -self._column(offset))

    @staticmethod
    def create(path: str, workers: int) -> None:
        """A zeroed table for `workers` processes (done once, by the supervisor, before it starts them)."""
        size = QUOTA_SLOTS * (_KEY.size + 4 * workers)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)

    def try_acquire(self, username: str, user_quota: int, total_quota: int) -> bool:
        with self._locked():
            user = self._slot(username)
            total = self._slot(_TOTAL)
            if user is None or total is None:
                return True  # the table is full of other names: do not refuse service over bookkeeping
            if user_quota and self._sum(user) >= user_quota:
                return False
            if total_quota and self._sum(total) >= total_quota:
                return False
            self._add(user, 1)
            self._add(total, 1)
            return True

    def release(self, username: str) -> None:
        with self._locked():
            for name in (username, _TOTAL):
                slot = self._slot(name)
                if slot is not None and self._column(slot) > 0:
                    self._add(slot, -1)

    def user_count(self, username: str) -> int:
        with self._locked():
            slot = self._slot(username)
            return 0 if slot is None else self._sum(slot)

    # --- the table ---

    def _locked(self):
        return _Flock(self.fd)

    def _slot(self, name: str) -> int | None:
        """Offset of `name`'s slot, claiming an empty one on first use; None when the probe run is full."""
        key = _key(name)
        start = key % QUOTA_SLOTS
        for probe in range(_PROBES):
            offset = ((start + probe) % QUOTA_SLOTS) * self.slot_size
            found = _KEY.unpack_from(self.map, offset)[0]
            if found == key:
                return offset
            if found == 0:
                _KEY.pack_into(self.map, offset, key)
                return offset
        return None

    def _sum(self, offset: int) -> int:
        return sum(self.counts.unpack_from(self.map, offset + _KEY.size))

    def _column(self, offset: int) -> int:
        return struct.unpack_from("<I", self.map, offset + _KEY.size + 4 * self.worker)[0]

    def _add(self, offset: int, delta: int) -> None:
        position = offset + _KEY.size + 4 * self.worker
        value = struct.unpack_from("<I", self.map, position)[0] + delta
        struct.pack_into("<I", self.map, position, max(value, 0))


class _Flock:
    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
