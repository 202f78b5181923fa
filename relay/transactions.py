"""Responses replayed to retransmitted requests (RFC 5389 7.3.1), the TURN core's transaction cache (pure).

A client that retransmits an Allocate whose response was lost must get the same answer, not 437 for the allocation
its first copy made. Only responses to *authenticated* requests are kept (keyed by 5-tuple and transaction id, for
`lifetime` seconds): no state is held for a client before it authenticates, and a retransmitted unauthenticated
request simply gets a fresh challenge.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.allocation import FiveTuple

__all__ = ["TransactionCache"]

# Bytes an entry costs besides its answer: the key with the 5-tuple and transaction id it keeps alive, and the
# dict and OrderedDict slots (tracemalloc over 20,000 puts of 100-byte answers: 641 B each beyond the answer).
ENTRY_OVERHEAD = 640


class TransactionCache:
    """(5-tuple, transaction id) -> response bytes, each kept until its expiry, bounded per user and in all.

    One user (one set of credentials, any number of 5-tuples) holds at most `per_user` entries: beyond that its
    own oldest goes, so a client that fills the cache in seconds only evicts itself. In all the cache holds at most
    `max_bytes` (responses plus a fixed overhead per entry); beyond that the oldest entry of anyone goes, which with
    the per-user bound is old enough that its client has stopped retransmitting.
    """

    def __init__(self, per_user: int = 5_000, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.per_user = per_user
        self.max_bytes = max_bytes
        self.bytes = 0
        # (5-tuple, transaction id) -> (response bytes, expiry, user), in expiry order (one lifetime for all).
        self._entries: collections.OrderedDict[tuple[FiveTuple, bytes], tuple[bytes, float, str]] = (
            collections.OrderedDict()
        )
        # user -> that user's keys, oldest first (an OrderedDict as an ordered set).
        self._by_user: dict[str, collections.OrderedDict[tuple[FiveTuple, bytes], None]] = {}
        self.evicted = 0  # entries dropped before their expiry to respect a bound

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, five_tuple: FiveTuple, transaction_id: bytes) -> bytes | None:
        """The response already sent for this request, or None."""
        cached = self._entries.get((five_tuple, transaction_id))
        return cached[0] if cached is not None else None

    def put(self, five_tuple: FiveTuple, transaction_id: bytes, response: bytes, expires_at: float,
            user: str = "") -> None:
        key = (five_tuple, transaction_id)
        if key in self._entries:
            self._remove(key)
        mine = self._by_user.get(user)
        if mine is None:
            mine = self._by_user[user] = collections.OrderedDict()
        while len(mine) >= self.per_user:
            self._remove(next(iter(mine)))
            self.evicted += 1
        size = len(response) + ENTRY_OVERHEAD
        while self._entries and self.bytes + size > self.max_bytes:
            self._remove(next(iter(self._entries)))
            self.evicted += 1
        self._entries[key] = (response, expires_at, user)
        self._by_user.setdefault(user, mine)[key] = None
        self.bytes += size

    def expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, (_, expiry, _) = next(iter(entries.items()))
            if expiry > now:
                break
            self._remove(key)

    def clear(self) -> None:
        self._entries.clear()
        self._by_user.clear()
        self.bytes = 0

    def _remove(self, key: tuple[FiveTuple, bytes]) -> None:
        response, _, user = self._entries.pop(key)
        self.bytes -= len(response) + ENTRY_OVERHEAD
        mine = self._by_user[user]
        del mine[key]
        if not mine:
            del self._by_user[user]
