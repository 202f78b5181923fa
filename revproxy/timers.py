"""Lazy deadlines for connections: one DelayedCall per connection, moved by a float assignment.

A connection's deadline changes on almost every read (client_timeout, upstream_read_timeout, keep-alive). Resetting a
DelayedCall each time costs a heap operation; here `set_deadline` only stores the new time, and the one timer, when
it fires early, reschedules itself for what is left.
"""

from __future__ import annotations

from typing import Any


class Deadline:
    """Mixin: `_on_deadline` runs once `deadline` has passed. The class using it provides `reactor` (a clock)."""

    reactor: Any
    deadline: float | None = None
    _timer: Any = None

    def set_deadline(self, delay: float | None, exact: bool = True) -> None:
        """`exact=False` for idle timeouts, where closing a little late is harmless: no timer churn per request."""
        if delay is None:
            self.deadline = None
            return
        reactor = self.reactor
        when = reactor.seconds() + delay
        self.deadline = when
        timer = self._timer
        if timer is None:
            self._timer = reactor.callLater(delay, self._fire)
        elif exact and timer.time > when:  # (`time`, not getTime(): these timers only move earlier, never delayed)
            timer.reset(delay)

    def _fire(self) -> None:
        self._timer = None
        if self.deadline is None:
            return
        left = self.deadline - self.reactor.seconds()
        if left > 0:
            self._timer = self.reactor.callLater(left, self._fire)
        else:
            self.deadline = None
            self._on_deadline()

    def cancel_deadline(self) -> None:
        self.deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_deadline(self) -> None:
        raise NotImplementedError
