"""The pool of UDP ports relayed transport addresses are taken from (pure, clock injected).

Ports are handed out at random among the free ones (RFC 5766 section 6.2 and RFC 6056: a guessable relay port
helps an attacker), optionally even, or as an even/odd pair for EVEN-PORT with the R bit. A port the shell could
not bind (another process holds it) is put aside for `quarantine` seconds instead of being offered again at once.

Every operation is O(1) except the rare fallback scans for an even port or a pair when random probes miss.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

__all__ = ["PortPool"]

# Random probes before falling back to a scan when an even port or an even/odd pair is wanted.
_PROBES = 32


class PortPool:
    """Free and held relay ports in `min_port`..`max_port` (inclusive)."""

    def __init__(
        self,
        min_port: int,
        max_port: int,
        rng: random.Random | None = None,
        *,
        clock: Callable[[], float] | None = None,
        quarantine: float = 60.0,
    ) -> None:
        if not 1 <= min_port <= max_port <= 65535:
            raise ValueError(f"relay port range {min_port}..{max_port} is not within 1..65535")
        self.min_port = min_port
        self.max_port = max_port
        # SystemRandom: relay ports must not be predictable from earlier ones.
        self._rng = rng if rng is not None else random.SystemRandom()
        self._clock = clock if clock is not None else time.monotonic
        self._quarantine = quarantine
        # Free ports in a list (random choice in O(1)) with each port's index (removal by swap in O(1)).
        self._free: list[int] = list(range(min_port, max_port + 1))
        self._index: dict[int, int] = {port: i for i, port in enumerate(self._free)}
        self._held: set[int] = set()
        self._unusable: dict[int, float] = {}  # port -> time it may be offered again

    @property
    def free_count(self) -> int:
        """How many ports acquire() could hand out now."""
        self._restore_unusable()
        return len(self._free)

    @property
    def held(self) -> frozenset[int]:
        """Ports acquired and not yet released (nor marked unusable)."""
        return frozenset(self._held)

    @property
    def unusable(self) -> frozenset[int]:
        """Ports set aside by mark_unusable() and not yet offered again."""
        self._restore_unusable()
        return frozenset(self._unusable)

    def acquire(self, *, even: bool = False) -> int | None:
        """A random free port (an even one if `even`), now held; None when there is none."""
        self._restore_unusable()
        if not self._free:
            return None
        if not even:
            port = self._free[self._rng.randrange(len(self._free))]
        else:
            port = self._find(lambda p: p % 2 == 0)
            if port is None:
                return None
        self._take(port)
        return port

    def acquire_pair(self) -> tuple[int, int] | None:
        """An even port p and p + 1, both free, now both held (EVEN-PORT with the R bit); None if no pair."""
        self._restore_unusable()
        port = self._find(lambda p: p % 2 == 0 and p + 1 in self._index)
        if port is None:
            return None
        self._take(port)
        self._take(port + 1)
        return port, port + 1

    def release(self, port: int) -> None:
        """Give a held port back to the pool. Releasing a port that is not held is a programming error."""
        if port not in self._held:
            raise ValueError(f"port {port} is not held")
        self._held.remove(port)
        self._put(port)

    def mark_unusable(self, port: int) -> None:
        """A held port could not be bound (another process has it): stop offering it for a while."""
        if port not in self._held:
            raise ValueError(f"port {port} is not held")
        self._held.remove(port)
        self._unusable[port] = self._clock() + self._quarantine

    def _find(self, wanted: Callable[[int], bool]) -> int | None:
        free = self._free
        if not free:
            return None
        for _ in range(_PROBES):
            port = free[self._rng.randrange(len(free))]
            if wanted(port):
                return port
        # Few candidates left: scan once, from a random point so the choice stays spread over the range.
        start = self._rng.randrange(len(free))
        for i in range(len(free)):
            port = free[(start + i) % len(free)]
            if wanted(port):
                return port
        return None

    def _take(self, port: int) -> None:
        i = self._index.pop(port)
        last = self._free.pop()
        if last != port:
            self._free[i] = last
            self._index[last] = i
        self._held.add(port)

    def _put(self, port: int) -> None:
        self._index[port] = len(self._free)
        self._free.append(port)

    def _restore_unusable(self) -> None:
        if not self._unusable:
            return
        now = self._clock()
        for port in [p for p, until in self._unusable.items() if until <= now]:
            del self._unusable[port]
            self._put(port)
