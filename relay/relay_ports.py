"""Relay sockets for allocations: a port from the pool, bound through the shell, and EVEN-PORT reservations (pure).

`PortPool` (relay.ports) only counts ports; this module asks the shell to bind a UDP socket on one
(`RelayOpener`), puts aside a port the shell could not bind and tries another, and keeps the RESERVATION-TOKENs
handed out for the odd port of an EVEN-PORT pair with the R bit (RFC 5766 14.9) until they are redeemed or run out.

A reserved port is held bound (a socket that drops what reaches it) until its token is redeemed: counting it in the
pool keeps our own allocations off it, but only a bound socket keeps another process from taking it in the 30
seconds before the RTCP allocation arrives, which would turn that Allocate into a 508. The pair is taken only when
both ports bind.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from relay.allocation import TurnError

if TYPE_CHECKING:
    from relay.allocation import Allocation, RelayOpener, RelayTransport
    from relay.ports import PortPool

__all__ = ["BIND_ATTEMPTS", "RelayPorts"]

BIND_ATTEMPTS = 10  # ports tried when the shell cannot bind the one the pool offered


class RelayPorts:
    """Binds allocations' relay sockets and holds the ports reserved by RESERVATION-TOKEN."""

    def __init__(self, pool: PortPool, open_relay: RelayOpener) -> None:
        self.pool = pool
        self.open_relay = open_relay
        self.reservations: dict[bytes, tuple[int, float]] = {}  # RESERVATION-TOKEN -> (port, expiry)
        self.placeholders: dict[int, RelayTransport] = {}  # reserved port -> the socket holding it until redeemed

    def bind(self, allocation: Allocation, even_port: bool | None, token: bytes | None, now: float,
             reservation_lifetime: float) -> bytes | None:
        """Pick and bind the relay port (TurnError 508 when none); the RESERVATION-TOKEN for the next port if the
        R bit asked for one."""
        deliver = allocation.on_peer_datagram
        if token is not None:
            reserved = self.reservations.pop(token, None)
            if reserved is None or reserved[1] <= now:
                if reserved is not None:
                    self.pool.release(reserved[0])
                raise TurnError(508, "unknown or expired RESERVATION-TOKEN")
            port = reserved[0]
            self._unhold(port)  # closed and bound again at once: no other process can have it in between
            relay = self.open_relay(port, deliver)
            if relay is None:
                self.pool.mark_unusable(port)
                raise TurnError(508)
            allocation.port, allocation.relay = port, relay
            return None
        for _ in range(BIND_ATTEMPTS):
            next_port = None
            if even_port:
                pair = self.pool.acquire_pair()
                if pair is None:
                    break
                port, next_port = pair
            else:
                port = self.pool.acquire(even=even_port is not None)
                if port is None:
                    break
            relay = self.open_relay(port, deliver)
            if relay is None:
                self.pool.mark_unusable(port)
                if next_port is not None:
                    self.pool.release(next_port)
                continue
            if next_port is not None:
                placeholder = self.open_relay(next_port, _drop)
                if placeholder is None:  # the odd port is taken: this pair cannot be reserved, try another
                    relay.close()
                    self.pool.release(port)
                    self.pool.mark_unusable(next_port)
                    continue
                self.placeholders[next_port] = placeholder
            allocation.port, allocation.relay = port, relay
            if next_port is None:
                return None
            new_token = os.urandom(8)
            self.reservations[new_token] = (next_port, now + reservation_lifetime)
            return new_token
        raise TurnError(508)

    def release(self, port: int) -> None:
        """An allocation's port goes back to the pool (its socket is closed by the allocation)."""
        self.pool.release(port)

    def drop_reservation(self, token: bytes | None) -> None:
        if token is not None and token in self.reservations:
            port = self.reservations.pop(token)[0]
            self._unhold(port)
            self.pool.release(port)

    def expire(self, now: float) -> None:
        for token, (port, expiry) in list(self.reservations.items()):
            if expiry <= now:
                del self.reservations[token]
                self._unhold(port)
                self.pool.release(port)

    def close(self) -> None:
        """Shutdown: every reserved port back to the pool."""
        for port, _ in self.reservations.values():
            self._unhold(port)
            self.pool.release(port)
        self.reservations.clear()

    def _unhold(self, port: int) -> None:
        placeholder = self.placeholders.pop(port, None)
        if placeholder is not None:
            placeholder.close()


def _drop(data: bytes, addr: tuple[str, int]) -> None:
    """What reaches a reserved port before its allocation exists: nobody was told that address, so nothing."""
