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

__all__ = ["TRANSACTION_CACHE_LIMIT", "TransactionCache"]

TRANSACTION_CACHE_LIMIT = 100_000  # responses kept for retransmissions; beyond this new ones are not cached


class TransactionCache:
    """(5-tuple, transaction id) -> response bytes, each kept until its expiry."""

    def __init__(self, limit: int = TRANSACTION_CACHE_LIMIT) -> None:
        self.limit = limit
        # (5-tuple, transaction id) -> (response bytes, expiry), in expiry order (one lifetime for all).
        self._entries: collections.OrderedDict[tuple[FiveTuple, bytes], tuple[bytes, float]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, five_tuple: FiveTuple, transaction_id: bytes) -> bytes | None:
        """The response already sent for this request, or None."""
        cached = self._entries.get((five_tuple, transaction_id))
        return cached[0] if cached is not None else None

    def put(self, five_tuple: FiveTuple, transaction_id: bytes, response: bytes, expires_at: float) -> None:
        if len(self._entries) < self.limit:
            self._entries[(five_tuple, transaction_id)] = (response, expires_at)

    def expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, (_, expiry) = next(iter(entries.items()))
            if expiry > now:
                break
            del entries[key]

    def clear(self) -> None:
        self._entries.clear()
