"""A clock that moves only when a test says so, for the pure cores that take `clock: Callable[[], float]`."""

from __future__ import annotations


class FakeClock:
    """A clock that moves only when told to: call it for the time, `advance` it or set `now`."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
