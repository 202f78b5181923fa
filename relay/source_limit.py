"""Flood gate for requests from clients that hold no allocation: per-source token buckets and a global budget
(pure, clock passed in).

Binding requests and the first (unauthenticated) TURN requests cost us a parse, an HMAC for the nonce and an
encoded answer, and anyone can send them from anywhere: at ~106k packets a second from 2,000 sources a legitimate
client got 2 of 6 Bindings answered, the rest lost in a full socket buffer behind the flood. A bucket per source IP
(`rate` a second, `burst` at once) drops a flooding source's excess for the price of a dict look-up, before any
parsing, so the relay keeps up with reading and everyone else's requests get through.

Many sources each within their rate still add up (2,000 sources at 10 a second are 20,000 full requests a
second), so there is also a global `budget`: such requests a second in all, from a bucket of `budget_seconds`
seconds' worth (the relay uses BUDGET_SECONDS: a meeting's start, a thousand browsers asking at once, is a burst
the relay can afford and must not shed; a flood spends it within seconds and then meets the rate), of which sources
that have been spending their bucket get at most the first half. Beyond that half the relay is under
a flood: every request from a source costs it `OVER_BUDGET_COST` tokens, answered or not (it is held to half its
rate), and is answered only if the source's bucket is at least a quarter full. Flooders' buckets hover near empty,
so they are shed first and stay at the bottom, while a new or quiet client, whose bucket is
full, is still answered from the second half: one sending at most a request every `OVER_BUDGET_COST / rate`
seconds (0.2 s at the default 10 a second), or about `3 * burst / 8` (15) at once when new. A young flood's
sources look new too; each is told apart once it has sent about that many (a second or two at a few times its
rate).

Every request the gate lets through, quiet or not, takes from the budget, so the parsing it lets through is
bounded whatever the flood looks like; a datagram of `size` bytes counts as `1 + size // BUDGET_BYTES` requests,
since parsing costs by the attribute (a 1,380-byte Binding of empty attributes costs ~30 small ones, and a client's
requests before it has an allocation are well under 256 bytes). That matters when the relay is already behind:
the kernel then drops most datagrams before the gate sees them, every flooder seems to send slowly, and a rate
test alone would take them all for quiet clients and keep the relay overwhelmed. Within the budget the relay
catches up, sees the whole flood again and tells the flooders from the quiet clients. The price: while a flood of
new sources is young, or when more quiet sources ask than the budget holds, a quiet client may be shed too. The
budget is per worker process (each has its own gate).

A source IP that has just authenticated a request is trusted for `trust_lifetime` seconds and skips both: a
Conferencing Node (or a load test) making hundreds of allocations from one address sends each new 5-tuple's first
request unauthenticated, and its credentials have shown it is no flood. Trust is earned only by a valid
MESSAGE-INTEGRITY, which a flooder without credentials cannot produce.

Both tables are bounded (`max_sources`): when the buckets are full, those that have filled up again (idle sources)
are forgotten, and if that frees nothing the oldest eighth goes (a forgotten source starts again with a full
bucket, which is what an idle one would have had anyway); the oldest trusted source goes when that table is full.
"""

from __future__ import annotations

import collections

__all__ = ["BUDGET_SECONDS", "BUDGET_SHED", "OVER_BUDGET_COST", "RATE_LIMITED", "SourceRateLimiter"]

# Over the budget: tokens a request costs its source (its rate is divided by this), and the share of its burst the
# source's bucket must hold for it to be answered at all. The share of the budget any source may take (the rest is
# for sources above QUIET_LEVEL), and the bytes that count as one more request (parsing costs by the attribute).
OVER_BUDGET_COST = 2.0
QUIET_LEVEL = 0.25
SPENDERS_SHARE = 0.5
BUDGET_BYTES = 256
# The relay's budget bucket holds this many seconds of its rate (measured: 2,000 fresh clients' first requests at
# once all answered, where a one-second bucket at the default rate answered ~530 and shed the rest).
BUDGET_SECONDS = 4.0


# Why a request was not handled, as the core's counter names (plain strings: the drop path counts them per datagram).
RATE_LIMITED = "rate_limited"  # over its source's bucket
BUDGET_SHED = "budget_shed"  # the global budget was spent and its source has been spending its bucket


class SourceRateLimiter:
    __slots__ = (
        "_buckets",
        "_budget_last",
        "_budget_tokens",
        "_trusted",
        "budget",
        "budget_seconds",
        "burst",
        "max_sources",
        "rate",
        "trust_lifetime",
    )

    def __init__(self, rate: float, burst: float, max_sources: int = 65_536, trust_lifetime: float = 600.0,
                 budget: float = 0.0, budget_seconds: float = 1.0) -> None:
        self.rate = rate
        self.burst = burst
        self.budget = budget  # requests a second in all (the second half for quiet sources only); 0 = off
        self.budget_seconds = budget_seconds  # the budget's bucket holds budget * budget_seconds
        self.max_sources = max_sources
        self.trust_lifetime = trust_lifetime
        self._buckets: dict[str, list[float]] = {}  # source IP -> [tokens, last refill], oldest first
        self._trusted: collections.OrderedDict[str, float] = collections.OrderedDict()  # source IP -> until
        self._budget_tokens = float(budget * budget_seconds)
        self._budget_last: float | None = None

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
        """May this source's request be handled? False: drop it."""
        return self.check(source, now) is None

    def check(self, source: str, now: float, size: int = 0) -> str | None:
        """None: handle this source's request (a datagram of `size` bytes); otherwise why to drop it, RATE_LIMITED
        or BUDGET_SHED (the caller counts them: the core's stats under those names)."""
        until = self._trusted.get(source)
        if until is not None:
            if until > now:
                return None
            del self._trusted[source]
        burst = self.burst
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._prune(now)
            bucket = self._buckets[source] = [burst, now]
            tokens = burst
        else:
            tokens = bucket[0]
            elapsed = now - bucket[1]
            bucket[1] = now
            if elapsed > 0.0:  # (a wall clock stepped back refills nothing, and takes nothing away)
                tokens += elapsed * self.rate
                if tokens > burst:
                    tokens = burst
            if tokens < 1.0:
                bucket[0] = tokens
                return RATE_LIMITED
        budget = self.budget
        if budget:
            capacity = budget * self.budget_seconds
            level = self._budget_tokens
            last, self._budget_last = self._budget_last, now
            if last is not None and now > last:
                level += (now - last) * budget
                if level > capacity:
                    level = capacity
            cost = 1 + size // BUDGET_BYTES
            if level - cost < capacity * SPENDERS_SHARE:
                # Over the budget's first half: the rest is kept for sources whose bucket is at least a quarter
                # full, and every source is held to half its rate.
                tokens -= OVER_BUDGET_COST - 1.0
                if level < cost or tokens < burst * QUIET_LEVEL:
                    self._budget_tokens = level
                    bucket[0] = tokens - 1.0 if tokens > 1.0 else 0.0
                    return BUDGET_SHED
                if tokens < 1.0:
                    tokens = 1.0
            self._budget_tokens = level - cost
        bucket[0] = tokens - 1.0
        return None

    def _prune(self, now: float) -> None:
        rate, burst = self.rate, self.burst
        idle = [source for source, (tokens, last) in self._buckets.items() if tokens + (now - last) * rate >= burst]
        for source in idle:
            del self._buckets[source]
        if len(self._buckets) >= self.max_sources:
            for source in list(self._buckets)[: max(1, self.max_sources // 8)]:
                del self._buckets[source]
