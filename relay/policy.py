"""Peer address policy: which peers a TURN allocation may reach (pure).

A relay in a DMZ must not become a way into the LAN, the host itself or the cloud metadata service, so
CreatePermission and ChannelBind towards a denied peer are refused (403) and nothing is ever sent there.

Default deny-list (`DEFAULT_DENIED`): loopback, unspecified, private (RFC 1918, CGNAT 100.64/10, ULA fc00::/7),
link-local (incl. 169.254.169.254, the cloud metadata address), multicast, broadcast, reserved 240/4, and two
ranges we add on purpose:

* ``fec0::/10`` site-local: deprecated by RFC 3879 but still routed by some stacks as a private range;
* ``64:ff9b:1::/48`` local-use NAT64 (RFC 8215): not globally reachable, and the position of the embedded IPv4
  address depends on a prefix length we cannot know, so the whole block is denied.

The server's own listen/relay/external addresses are denied too (``0.0.0.0``/``::`` entries are ignored).

Every IPv6 address that carries an IPv4 address is also judged by that IPv4 address, because that is where the
packet ends up (directly, through a NAT64 gateway or through a tunnel endpoint):

* IPv4-mapped ``::ffff:0:0/96`` - judged as the IPv4 address itself (a dual-stack socket sends IPv4);
* IPv4-compatible ``::/96`` (RFC 4291, deprecated) - last 32 bits;
* NAT64 well-known prefix ``64:ff9b::/96`` (RFC 6052) - last 32 bits;
* 6to4 ``2002::/16`` (RFC 3056) - bits 16-48;
* Teredo ``2001::/32`` (RFC 4380) - the server, bits 32-64, and the client, last 32 bits xor 0xffffffff.

Precedence, as in coturn: ``allowed_peers`` punches holes and wins over the defaults, ``denied_peers`` and the
own addresses. An address is allowed when it (IPv4-mapped addresses: its IPv4 address) is in an allowed network;
otherwise it is denied when it, or any IPv4 address it carries, is in a denied network and not in an allowed one.
So ``allowed_peers = ["127.0.0.0/8"]`` also allows ``::ffff:127.0.0.1`` and ``64:ff9b::7f00:1``; and
``denied_peers`` entries are matched against the embedded forms just like the defaults. Network entries written
in IPv4-mapped form (``::ffff:10.0.0.0/104``) are treated as the IPv4 network they denote.

Called per CreatePermission/ChannelBind peer, not per packet; networks are pre-parsed into (value, mask) integer
pairs so a check is one address parse and a few integer comparisons.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["DEFAULT_DENIED", "PeerPolicy", "PeerPolicyError"]

# (category, CIDR) in the order reasons are reported; the first match names the reason.
DEFAULT_DENIED: tuple[tuple[str, str], ...] = (
    ("loopback", "127.0.0.0/8"),
    ("unspecified", "0.0.0.0/8"),
    ("private", "10.0.0.0/8"),
    ("private", "172.16.0.0/12"),
    ("private", "192.168.0.0/16"),
    ("private", "100.64.0.0/10"),  # CGNAT shared address space, RFC 6598
    ("link-local", "169.254.0.0/16"),  # includes the cloud metadata service 169.254.169.254
    ("multicast", "224.0.0.0/4"),
    ("broadcast", "255.255.255.255/32"),  # listed before reserved 240/4, which contains it
    ("reserved", "240.0.0.0/4"),
    ("loopback", "::1/128"),
    ("unspecified", "::/128"),
    ("private", "fc00::/7"),
    ("site-local", "fec0::/10"),
    ("link-local", "fe80::/10"),
    ("multicast", "ff00::/8"),
    ("local-use NAT64", "64:ff9b:1::/48"),
)

_NAT64 = int(ipaddress.IPv6Address("64:ff9b::"))
_ALL32 = 0xFFFFFFFF

# One pre-parsed network: (version, network value, mask, reason text).
_Rule = tuple[int, int, int, str]


class PeerPolicyError(ValueError):
    """An allowed/denied/own address entry that is not a valid address or CIDR."""


def _parse_network(text: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(text, str):
        raise PeerPolicyError(f"{what}: {text!r} is not a string")
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as e:
        raise PeerPolicyError(f"{what}: {text!r} is not an address or CIDR ({e})") from None
    # "::ffff:10.0.0.0/104" means 10.0.0.0/8: match it where IPv4-mapped addresses are judged, as IPv4.
    if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        net = ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


def _rule(net: ipaddress.IPv4Network | ipaddress.IPv6Network, reason: str) -> _Rule:
    return (net.version, int(net.network_address), int(net.netmask), reason)


def _embedded_ipv4(value: int) -> list[tuple[str, int]]:
    """The IPv4 addresses an IPv6 address (as int, not IPv4-mapped) carries, with the form's name."""
    top16 = value >> 112
    found: list[tuple[str, int]] = []
    if value >> 32 == 0:
        found.append(("IPv4-compatible", value & _ALL32))
    elif value >> 32 == _NAT64 >> 32:
        found.append(("NAT64", value & _ALL32))
    elif top16 == 0x2002:
        found.append(("6to4", (value >> 80) & _ALL32))
    elif value >> 96 == 0x20010000:
        found.append(("Teredo server", (value >> 64) & _ALL32))
        found.append(("Teredo client", (value & _ALL32) ^ _ALL32))
    return found


class PeerPolicy:
    """Decides whether a relay may send to a peer address; see the module docstring for the rules."""

    def __init__(self, allowed: Iterable[str] = (), denied: Iterable[str] = (),
                 own_addresses: Iterable[str] = ()):
        self._allowed: tuple[_Rule, ...] = tuple(
            _rule(_parse_network(entry, "allowed_peers"), "allowed") for entry in allowed)
        deny: list[_Rule] = [_rule(ipaddress.ip_network(cidr), f"{category} {cidr}")
                             for category, cidr in DEFAULT_DENIED]
        for entry in own_addresses:
            net = _parse_network(entry, "own address")
            if net.num_addresses != 1:
                raise PeerPolicyError(f"own address: {entry!r} is a network, not an address")
            if net.network_address.is_unspecified:
                continue  # a wildcard listen address is not an address peers can reach us on
            deny.append(_rule(net, f"own address {net.network_address}"))
        for entry in denied:
            net = _parse_network(entry, "denied_peers")
            deny.append(_rule(net, f"denied_peers {net}"))
        self._denied: tuple[_Rule, ...] = tuple(deny)

    @staticmethod
    def _match(rules: tuple[_Rule, ...], version: int, value: int) -> str | None:
        for rule_version, network, mask, reason in rules:
            if rule_version == version and value & mask == network:
                return reason
        return None

    def deny_reason(self, host: str) -> str | None:
        """None when ``host`` may be relayed to, else why not, e.g. ``"private 10.0.0.0/8 (6to4)"``."""
        if not isinstance(host, str):
            return f"not an IP address: {host!r:.60}"
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return f"not an IP address: {host!r:.60}"
        mapped = addr.ipv4_mapped if addr.version == 6 else None
        if mapped is not None:
            addr = mapped  # a dual-stack socket sends this to the IPv4 address itself
        value = int(addr)
        if self._match(self._allowed, addr.version, value) is not None:
            return None
        reason = self._match(self._denied, addr.version, value)
        if reason is not None:
            return f"{reason} (IPv4-mapped)" if mapped is not None else reason
        if addr.version == 6:
            for form, v4 in _embedded_ipv4(value):
                if self._match(self._allowed, 4, v4) is not None:
                    continue
                reason = self._match(self._denied, 4, v4)
                if reason is not None:
                    return f"{reason} ({form})"
        return None

    def is_allowed(self, host: str) -> bool:
        """True when the relay may send to ``host`` (an IPv4/IPv6 address string); garbage is False."""
        return self.deny_reason(host) is None
