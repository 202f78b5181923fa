"""Restricted mode: which client addresses may use TURN (pure).

The appliance's default deployment lets only the Conferencing Nodes allocate relays, while anyone may send STUN
Binding requests (to learn their reflexive address). The appliance this replaces did it with iptables, so an
outsider's TURN request got no answer at all; we do the same: `TurnClients.allows(ip)` is False for a source outside
`turn_clients`, and the caller drops the request silently (no 401, no 403) and counts it. An empty list means
unrestricted. `turn = false` (`enabled=False`) is the STUN-only server: TURN is allowed to nobody, Binding to all.

Only TURN requests and Send indications are checked: ChannelData and Send indications can only do something for a
5-tuple that holds an allocation, and an allocation can only be made by an allowed source, so the per-packet path
gains nothing. The answer for an address is cached (bounded), since a flood of outsiders' requests is exactly what
this mode is for.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["TurnClients"]

_CACHE_LIMIT = 4096

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _normalise(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d
    return addr


class TurnClients:
    """The `turn_clients` CIDRs; `allows(ip)` says whether a source address may use TURN."""

    __slots__ = ("_cache", "enabled", "networks")

    def __init__(self, cidrs: Iterable[str] = (), *, enabled: bool = True) -> None:
        self.networks: tuple[Network, ...] = tuple(ipaddress.ip_network(c, strict=True) for c in cidrs)
        self.enabled = enabled
        self._cache: dict[str, bool] = {}

    @property
    def restricted(self) -> bool:
        return bool(self.networks) or not self.enabled

    def allows(self, ip: str) -> bool:
        """True when `ip` may use TURN: TURN is on and the list is empty or has the address in one of its networks."""
        if not self.enabled:
            return False
        if not self.networks:
            return True
        cached = self._cache.get(ip)
        if cached is not None:
            return cached
        addr = _normalise(ip)
        allowed = addr is not None and any(addr.version == net.version and addr in net for net in self.networks)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()  # a flood from many sources: start over rather than grow
        self._cache[ip] = allowed
        return allowed

    def __repr__(self) -> str:
        if not self.enabled:
            return "TurnClients(enabled=False)"
        return f"TurnClients({[str(n) for n in self.networks]!r})"
