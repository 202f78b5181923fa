"""The TURN core's operator log lines: formatted here, written by a sink the shell injects (pure, no Twisted).

One line per operator event (an allocation created, refreshed or deleted, a peer denied, an auth failure), each
with its fields for machines (`event`, `five_tuple`, `user`, ...) and one pre-built `text`: twisted.logger's
format-string rendering of many fields costs twice as much per line. The sink is `emit(text, **fields)`; the
shell's writes one structured twisted.logger line, tests record the calls, and the default discards them.

Anyone can make auth failures happen, so those lines go through a `LogLimiter` (a burst, then a steady rate,
the next line saying how many were held back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from relay.ratelimit import LogLimiter

if TYPE_CHECKING:
    from relay.allocation import Address, Allocation, FiveTuple

__all__ = ["EventLog", "EventSink", "discard", "format_address", "format_five_tuple"]

EventSink = Callable[..., None]  # emit(text, **fields): one operator log line


def discard(text: str, **fields: Any) -> None:
    """The sink when none is given: the core runs silent (tests of behaviour, benchmarks)."""


def format_five_tuple(five_tuple: FiveTuple) -> str:
    transport, (client_host, client_port), (server_host, server_port) = five_tuple
    return f"{transport} {client_host}:{client_port}->{server_host}:{server_port}"


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class EventLog:
    """The core's log lines, built from core objects and handed to `emit`."""

    def __init__(self, emit: EventSink = discard, *, auth_rate: float = 10.0, auth_burst: float = 50.0) -> None:
        self.emit = emit
        self._auth_limit = LogLimiter(rate=auth_rate, burst=auth_burst)

    def allocation_created(self, allocation: Allocation) -> None:
        where, relayed = format_five_tuple(allocation.five_tuple), format_address(allocation.relayed_address)
        user, lifetime = allocation.username, allocation.lifetime
        self.emit(f"TURN allocation created {where} user {user!r} relayed {relayed} lifetime {lifetime}s",
                  event="allocation_created", five_tuple=where, user=user, relayed=relayed, lifetime=lifetime)

    def allocation_refreshed(self, allocation: Allocation) -> None:
        where, relayed = format_five_tuple(allocation.five_tuple), format_address(allocation.relayed_address)
        user, lifetime = allocation.username, allocation.lifetime
        self.emit(f"TURN allocation refreshed {where} user {user!r} relayed {relayed} lifetime {lifetime}s",
                  event="allocation_refreshed", five_tuple=where, user=user, relayed=relayed, lifetime=lifetime)

    def allocation_deleted(self, allocation: Allocation, reason: str) -> None:
        a = allocation
        where, relayed = format_five_tuple(a.five_tuple), format_address(a.relayed_address)
        self.emit(
            f"TURN allocation deleted {where} user {a.username!r} relayed {relayed} ({reason}): "
            f"from client {a.packets_from_client} packets {a.bytes_from_client} bytes, "
            f"to client {a.packets_to_client} packets {a.bytes_to_client} bytes",
            event="allocation_deleted", five_tuple=where, user=a.username, relayed=relayed, reason=reason,
            packets_from_client=a.packets_from_client, bytes_from_client=a.bytes_from_client,
            packets_to_client=a.packets_to_client, bytes_to_client=a.bytes_to_client,
            peer_packets_dropped=a.peer_packets_dropped,
        )  # fmt: skip

    def permission_denied(self, allocation: Allocation, host: str, reason: str) -> None:
        where, user = format_five_tuple(allocation.five_tuple), allocation.username
        self.emit(f"TURN permission denied {where} user {user!r} peer {host}: {reason}",
                  event="permission_denied", five_tuple=where, user=user, peer=host, reason=reason)

    def auth_failure(self, five_tuple: FiveTuple, username: str | None, reason: str, now: float) -> None:
        suppressed = self._auth_limit.allow(now)
        if suppressed is None:
            return  # a flood: counted in stats by the caller, not logged line by line
        source = format_five_tuple(five_tuple)
        text = f"TURN auth failure from {source} user {username!r}: {reason}"
        if suppressed:
            text += f" ({suppressed} earlier auth failures not logged: rate limit)"
        self.emit(text, event="auth_failure", source=source, user=username, reason=reason, suppressed=suppressed)
