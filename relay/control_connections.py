"""TCP control connections that hold no allocation: per-source and global caps and a bounded lifetime (pure).

A TCP (or TLS) connection to the listener costs us a file descriptor and a buffer before the client has proved
anything. Connections that hold an allocation are bounded by the quotas; the others are bounded here:
- at most `per_ip` of them from one source address (a default that suits NATed offices: clients allocate within
  a second of connecting, so even a busy office holds a handful at once);
- at most `max_total` in all, and never more than a quarter of the open-files limit, so a flood from many sources
  cannot take the descriptors that relay sockets (one per allocation) need;
- each is closed `lifetime` seconds after it opened (or lost its allocation) whatever it sends: a Binding every
  20 s no longer keeps one open for ever.
A connection that gets an allocation leaves the table; one whose allocation goes (Refresh 0, expiry) while it stays
open comes back with a fresh lifetime.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.allocation import FiveTuple

__all__ = ["Admission", "ControlConnections"]


class Admission(enum.Enum):
    ADMITTED = "admitted"
    PER_SOURCE_LIMIT = "per-source limit"
    GLOBAL_LIMIT = "global limit"


class ControlConnections:
    """The unallocated TCP control connections, oldest first, with their close callbacks."""

    def __init__(self, per_ip: int = 64, max_total: int = 10_000, lifetime: float = 60.0) -> None:
        self.per_ip = per_ip
        self.max_total = max_total
        self.lifetime = lifetime
        # 5-tuple -> (close callback, deadline), in deadline order (one lifetime for all, re-added at the end).
        self._unallocated: collections.OrderedDict[FiveTuple, tuple[Callable[[], None], float]] = (
            collections.OrderedDict()
        )
        self._closers: dict[FiveTuple, Callable[[], None]] = {}  # every open connection, allocated or not
        self._per_source: collections.Counter[str] = collections.Counter()

    def __len__(self) -> int:
        return len(self._unallocated)

    def cap(self, fd_limit: int | None) -> int:
        """The global cap: `max_total`, and at most a quarter of the open-files limit."""
        return self.max_total if fd_limit is None else min(self.max_total, max(1, fd_limit // 4))

    def opened(self, five_tuple: FiveTuple, close: Callable[[], None], now: float,
               fd_limit: int | None = None) -> Admission:
        """A new connection: ADMITTED (tracked from now on), or the limit that refuses it (the shell closes it)."""
        source = five_tuple[1][0]
        if self._per_source[source] >= self.per_ip:
            return Admission.PER_SOURCE_LIMIT
        if len(self._unallocated) >= self.cap(fd_limit):
            return Admission.GLOBAL_LIMIT
        self._closers[five_tuple] = close
        self._add(five_tuple, close, now)
        return Admission.ADMITTED

    def allocated(self, five_tuple: FiveTuple) -> None:
        """The connection now holds an allocation: the quotas bound it from here on."""
        if self._unallocated.pop(five_tuple, None) is not None:
            self._drop_source(five_tuple[1][0])

    def deallocated(self, five_tuple: FiveTuple, now: float) -> None:
        """Its allocation went while the connection stays open: back in the table, with a fresh lifetime."""
        close = self._closers.get(five_tuple)
        if close is not None and five_tuple not in self._unallocated:
            self._add(five_tuple, close, now)

    def closed(self, five_tuple: FiveTuple) -> None:
        self._closers.pop(five_tuple, None)
        if self._unallocated.pop(five_tuple, None) is not None:
            self._drop_source(five_tuple[1][0])

    def expire(self, now: float) -> int:
        """Close the connections whose lifetime ran out; how many."""
        expired = 0
        unallocated = self._unallocated
        while unallocated:
            five_tuple, (close, deadline) = next(iter(unallocated.items()))
            if deadline > now:
                break
            self.closed(five_tuple)
            expired += 1
            close()
        return expired

    def _add(self, five_tuple: FiveTuple, close: Callable[[], None], now: float) -> None:
        self._unallocated[five_tuple] = (close, now + self.lifetime)
        self._per_source[five_tuple[1][0]] += 1

    def _drop_source(self, source: str) -> None:
        count = self._per_source[source] - 1
        if count > 0:
            self._per_source[source] = count
        else:
            del self._per_source[source]
