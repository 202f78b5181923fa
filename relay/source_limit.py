"""Per-source token buckets for requests from clients that hold no allocation (pure, clock passed in).

Binding requests and the first (unauthenticated) TURN requests cost us a parse, an HMAC for the nonce and an
encoded answer, and anyone can send them from anywhere: at ~106k packets a second from 2,000 sources a legitimate
client got 2 of 6 Bindings answered, the rest lost in a full socket buffer behind the flood. A bucket per source IP
(`rate` a second, `burst` at once) drops a flooding source's excess for the price of a dict look-up, before any
parsing, so the relay keeps up with reading and everyone else's requests get through.

A source IP that has just authenticated a request is trusted for `trust_lifetime` seconds and skips its bucket:
a Conferencing Node (or a load test) making hundreds of allocations from one address sends each new 5-tuple's
first request unauthenticated, and its credentials have shown it is no flood. Trust is earned only by a valid
MESSAGE-INTEGRITY, which a flooder without credentials cannot produce.

Both tables are bounded (`max_sources`): when the buckets are full, those that have filled up again (idle sources)
are forgotten, and if that frees nothing the oldest eighth goes (a forgotten source starts again with a full
bucket, which is what an idle one would have had anyway); the oldest trusted source goes when that table is full.
"""

from __future__ import annotations

import collections

__all__ = ["SourceRateLimiter"]


class SourceRateLimiter:
    __slots__ = ("_buckets", "_trusted", "burst", "dropped", "max_sources", "rate", "trust_lifetime")

    def __init__(self, rate: float, burst: float, max_sources: int = 65_536, trust_lifetime: float = 600.0) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self.trust_lifetime = trust_lifetime
        self._buckets: dict[str, list[float]] = {}  # source IP -> [tokens, last refill], oldest first
        self._trusted: collections.OrderedDict[str, float] = collections.OrderedDict()  # source IP -> until
        self.dropped = 0

    def trust(self, source: str, now: float) -> None:
        """`source` just authenticated a request: let its requests through without a bucket for a while."""
        trusted = self._trusted
        if source in trusted:
            trusted.move_to_end(source)
        elif len(trusted) >= self.max_sources:
            trusted.popitem(last=False)
        trusted[source] = now + self.trust_lifetime

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: str, now: float) -> bool:
        """May this source's request be handled? False: drop it (counted in `dropped`)."""
        until = self._trusted.get(source)
        if until is not None:
            if until > now:
                return True
            del self._trusted[source]
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._prune(now)
            self._buckets[source] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            self.dropped += 1
            return False
        bucket[0] = tokens - 1.0
        return True

    def _prune(self, now: float) -> None:
        rate, burst = self.rate, self.burst
        idle = [source for source, (tokens, last) in self._buckets.items() if tokens + (now - last) * rate >= burst]
        for source in idle:
            del self._buckets[source]
        if len(self._buckets) >= self.max_sources:
            for source in list(self._buckets)[: max(1, self.max_sources // 8)]:
                del self._buckets[source]
