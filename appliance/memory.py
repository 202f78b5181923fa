"""Giving freed memory back to the system after a burst of connections.

A flood of a few thousand connections (each with an OpenSSL object, buffers and a protocol) is freed when it ends,
but glibc's malloc keeps the freed pages in its arenas: the process's RSS stays at the flood's peak. `malloc_trim(0)`
hands every free page of every arena back (madvise), so RSS returns towards the baseline. It costs a few
milliseconds on a large heap, so the services call it once after a burst has drained, never per connection.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable


def _trimmer() -> Callable[[], None]:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to do
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def release() -> None:
        trim(0)

    return release


trim = _trimmer()


class BurstWatch:
    """Calls `trim` once the number of open connections has fallen to half of a high mark of at least `burst`
    (checked as connections close: two comparisons each)."""

    __slots__ = ("burst", "high", "schedule", "scheduled")

    def __init__(self, schedule: Callable[[float, Callable[[], None]], object], burst: int = 1000) -> None:
        self.schedule = schedule  # reactor.callLater
        self.burst = burst
        self.high = 0
        self.scheduled = False

    def opened(self, count: int) -> None:
        if count > self.high:
            self.high = count

    def closed(self, count: int) -> None:
        if self.high >= self.burst and count * 2 <= self.high and not self.scheduled:
            self.scheduled = True
            self.schedule(1.0, self._trim)

    def _trim(self) -> None:
        self.scheduled = False
        self.high = 0
        gc.collect()  # closed connections are reference cycles (protocol <-> transport): free them first
        trim()
