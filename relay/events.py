"""The TURN core's operator log lines: formatted here, written by a sink the shell injects (pure, no Twisted).

One line per operator event (an allocation created, refreshed or deleted, a peer denied, an auth failure), each
with its fields for machines (`event`, `five_tuple`, `user`, ...) and one pre-built `text`: twisted.logger's
format-string rendering of many fields costs twice as much per line. The sink is `emit(text, **fields)`; the
shell's writes one structured twisted.logger line, tests record the calls, and the default discards them.

Anyone can make auth failures happen, so those lines go through a `LogLimiter` (a burst, then a steady rate,
the next line saying how many were held back). An authenticated client can churn allocations as fast as we answer
(one client at ~750 cycles a second wrote 147 MB of log in 6 minutes), so the allocation lines (created, refreshed,
deleted) and the permission-denied lines are limited per user the same way, and `flush()` (run with the expiry
sweep) writes one summary line per user and `SUMMARY_INTERVAL` saying how many of that user's lines were held back.
Every value that came from a client (user names) is escaped (`appliance.logsafe.escape`) so it cannot forge or
split a log line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.config import format_hostport
from appliance.logsafe import escape
from relay.ratelimit import LogLimiter

if TYPE_CHECKING:
    from relay.allocation import Address, Allocation, FiveTuple

__all__ = ["EventLog", "EventSink", "discard", "format_address", "format_five_tuple"]

EventSink = Callable[..., None]  # emit(text, **fields): one operator log line

# Allocation lines per user: a burst, then a steady rate (lines a second); the summary at most this often (s).
ALLOCATION_LOG_BURST = 100.0
ALLOCATION_LOG_RATE = 10.0
SUMMARY_INTERVAL = 5.0


def discard(text: str, **fields: Any) -> None:
    """The sink when none is given: the core runs silent (tests of behaviour, benchmarks)."""


def format_five_tuple(five_tuple: FiveTuple) -> str:
    transport, (client_host, client_port), (server_host, server_port) = five_tuple
    return f"{transport} {client_host}:{client_port}->{server_host}:{server_port}"


def format_address(address: Address) -> str:
    return format_hostport(*address)


class EventLog:
    """The core's log lines, built from core objects and handed to `emit`."""

    def __init__(self, emit: EventSink = discard, clock: Callable[[], float] = lambda: 0.0, *,
                 auth_rate: float = 10.0, auth_burst: float = 50.0, allocation_rate: float = ALLOCATION_LOG_RATE,
                 allocation_burst: float = ALLOCATION_LOG_BURST) -> None:
        self.emit = emit
        self.clock = clock
        self._auth_limit = LogLimiter(rate=auth_rate, burst=auth_burst)
        self.allocation_rate = allocation_rate
        self.allocation_burst = allocation_burst
        self._user_limits: dict[str, LogLimiter] = {}  # users with allocation lines in their bucket's memory
        self._held_back: dict[str, tuple[int, float]] = {}  # user -> (lines not logged, since when)

    def _allowed(self, user: str) -> bool:
        """May this user's allocation line be written? (Counted for the summary when not.)"""
        limiter = self._user_limits.get(user)
        if limiter is None:
            limiter = self._user_limits[user] = LogLimiter(rate=self.allocation_rate, burst=self.allocation_burst)
        now = self.clock()
        if limiter.allow(now) is not None:
            return True
        count, since = self._held_back.get(user, (0, now))
        self._held_back[user] = (count + 1, since)
        return False

    def flush(self, now: float) -> None:
        """One summary line per user whose allocation lines were held back (at most every SUMMARY_INTERVAL s);
        forget the buckets that have filled up again, so the table stays as small as the set of busy users."""
        for user, (count, since) in list(self._held_back.items()):
            if now - since >= SUMMARY_INTERVAL:
                del self._held_back[user]
                safe_user = escape(user)
                self.emit(f"TURN allocation log lines of user '{safe_user}': {count} not logged in the last "
                          f"{now - since:.0f}s (rate limit)",
                          event="allocation_lines_suppressed", user=safe_user, suppressed=count)
        for user, limiter in list(self._user_limits.items()):
            if user not in self._held_back and limiter.last is not None and \
                    limiter.tokens + (now - limiter.last) * limiter.rate >= limiter.burst:
                del self._user_limits[user]

    def allocation_created(self, allocation: Allocation) -> None:
        self._allocation_line("created", allocation)

    def allocation_refreshed(self, allocation: Allocation) -> None:
        self._allocation_line("refreshed", allocation)

    def _allocation_line(self, what: str, allocation: Allocation) -> None:
        if not self._allowed(allocation.username):
            return
        where, relayed = format_five_tuple(allocation.five_tuple), format_address(allocation.relayed_address)
        user, lifetime = escape(allocation.username), allocation.lifetime
        self.emit(f"TURN allocation {what} {where} user '{user}' relayed {relayed} lifetime {lifetime}s",
                  event=f"allocation_{what}", five_tuple=where, user=user, relayed=relayed, lifetime=lifetime)

    def allocation_deleted(self, allocation: Allocation, reason: str) -> None:
        a = allocation
        if not self._allowed(a.username):
            return
        where, relayed, user = format_five_tuple(a.five_tuple), format_address(a.relayed_address), escape(a.username)
        self.emit(
            f"TURN allocation deleted {where} user '{user}' relayed {relayed} ({reason}): "
            f"from client {a.packets_from_client} packets {a.bytes_from_client} bytes, "
            f"to client {a.packets_to_client} packets {a.bytes_to_client} bytes",
            event="allocation_deleted", five_tuple=where, user=user, relayed=relayed, reason=reason,
            packets_from_client=a.packets_from_client, bytes_from_client=a.bytes_from_client,
            packets_to_client=a.packets_to_client, bytes_to_client=a.bytes_to_client,
            peer_packets_dropped=a.peer_packets_dropped,
        )  # fmt: skip

    def permission_denied(self, allocation: Allocation, host: str, reason: str) -> None:
        if not self._allowed(allocation.username):
            return  # an authenticated user asks for denied peers as often as it likes: limited as its allocations
        where, user = format_five_tuple(allocation.five_tuple), escape(allocation.username)
        self.emit(f"TURN permission denied {where} user '{user}' peer {host}: {reason}",
                  event="permission_denied", five_tuple=where, user=user, peer=host, reason=reason)

    def auth_failure(self, five_tuple: FiveTuple, username: str | None, reason: str, now: float) -> None:
        suppressed = self._auth_limit.allow(now)
        if suppressed is None:
            return  # a flood: counted in stats by the caller, not logged line by line
        source = format_five_tuple(five_tuple)
        username = escape(username) if username is not None else None
        shown = f"'{username}'" if username is not None else "None"
        text = f"TURN auth failure from {source} user {shown}: {reason}"
        if suppressed:
            text += f" ({suppressed} earlier auth failures not logged: rate limit)"
        self.emit(text, event="auth_failure", source=source, user=username, reason=reason, suppressed=suppressed)
