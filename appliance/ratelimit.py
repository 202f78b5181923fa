"""A token bucket for log lines that an attacker can trigger at will (pure, clock passed in).

An auth failure or an unframeable TCP stream is one line an operator wants to see; ten thousand of them a second
from a flood is a way to fill the disk and burn the CPU. The bucket lets `burst` lines through, then `rate` lines
a second, and counts what it held back so the next line that passes can say how many were suppressed.
"""

from __future__ import annotations


class LogLimiter:
    __slots__ = ("burst", "last", "rate", "suppressed", "tokens")

    def __init__(self, rate: float = 10.0, burst: float = 50.0) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last: float | None = None
        self.suppressed = 0

    def allow(self, now: float) -> int | None:
        """None: drop this line. Otherwise the line may be logged; the int is how many were suppressed before it."""
        if self.last is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            self.suppressed += 1
            return None
        self.tokens -= 1.0
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed
