"""One TURN allocation (RFC 5766 5) and the vocabulary the pure core shares: addresses, 5-tuples, settings,
the relay-socket seam and `TurnError` (pure: no I/O, no clock of its own, no Twisted).

An `Allocation` is one relayed transport address with its permissions and channels. Liveness is membership: a
permission or channel is in its dict exactly while it is live, and `sweep()` (run by the core's expiry about once a
second) removes what has run out. So the per-packet paths (`on_client_channel_data`, `on_client_send`,
`on_peer_datagram`) are a couple of dict look-ups and one write: no Message objects, no clock, no logging.

The rest of the core, one job per module:
- `relay.dispatch`      `TurnServer`: what the shell hands over (STUN messages, ChannelData, lost connections,
                        the expiry tick) dispatched to handlers; the table of allocations by 5-tuple
- `relay.handlers`      Binding and the four TURN requests (Allocate, Refresh, CreatePermission, ChannelBind)
- `relay.authenticator` the long-term credential mechanism (401/438 challenges, MESSAGE-INTEGRITY)
- `relay.transactions`  responses replayed to retransmitted requests
- `relay.relay_ports`   relay sockets bound on pool ports, EVEN-PORT reservations
- `relay.events`        the operator log lines, handed to a sink the shell injects
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from relay.flood_limits import FloodLimits
from relay.stun import encode_channel_data, encode_data_indication

__all__ = [
    "Address",
    "Allocation",
    "ClientSender",
    "FiveTuple",
    "RelayOpener",
    "RelayTransport",
    "TurnError",
    "TurnSettings",
]

Address = tuple[str, int]
FiveTuple = tuple[str, Address, Address]  # ("udp"|"tcp"|"tls", client (host, port), server (host, port))
ClientSender = Callable[[bytes], None]  # sends bytes to this client over its own transport


class RelayTransport(Protocol):
    """What the shell hands back for a bound relay socket.

    It may also have `set_dont_fragment() -> bool`: set DF on everything the socket sends, False where the OS
    cannot. Without it, Allocate requests with DONT-FRAGMENT get 420.
    """

    def write(self, data: bytes, addr: Address) -> None: ...

    def close(self) -> None: ...


# open_relay(port, deliver): bind a UDP socket on relay_ip:port, route each datagram it receives to
# deliver(data, peer); None if the port cannot be bound (the core then tries another port).
RelayOpener = Callable[[int, Callable[[bytes, Address], None]], "RelayTransport | None"]


@dataclass(frozen=True, kw_only=True)
class TurnSettings(FloodLimits):
    """What the TURN core is told; the flood bounds are `FloodLimits`'s, as the config file's."""

    realm: str
    software: str = "rpturn"
    relay_ip: str = "0.0.0.0"  # the relay sockets' address, advertised unless external_ip is set
    external_ip: str | None = None  # advertised in XOR-RELAYED-ADDRESS when behind static NAT
    default_lifetime: int = 600
    max_lifetime: int = 3600
    permission_lifetime: int = 300
    channel_lifetime: int = 600
    user_quota: int = 0  # allocations per username, 0 = unlimited
    total_quota: int = 0  # allocations in all, 0 = unlimited
    reservation_lifetime: int = 30  # EVEN-PORT R bit: how long the next port stays reserved (RFC 5766 14.9)
    transaction_lifetime: float = 40.0  # how long a response is replayed to retransmissions (RFC 5389 7.3.1)
    channel_cooldown: int = 300  # a channel's number and peer stay reserved after it expires (RFC 5766 11)


class TurnError(Exception):
    """A request is refused: the STUN error code, an optional reason and extra attributes for the response."""

    def __init__(self, code: int, reason: str | None = None, attributes: tuple[tuple[int, Any], ...] = (),
                 unknown: tuple[int, ...] | None = None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.attributes = attributes
        self.unknown = unknown  # for 420: the attributes to list in UNKNOWN-ATTRIBUTES


class Allocation:
    """One relayed transport address and its permissions and channels (RFC 5766 5)."""

    __slots__ = (
        "_channel_cooldown",
        "_next_deadline",
        "_peer_cooldown",
        "_transaction_counter",
        "bytes_from_client",
        "bytes_to_client",
        "channel_expires",
        "channel_of_peer",
        "channels",
        "client_packets_dropped",
        "created_at",
        "expires_at",
        "five_tuple",
        "lifetime",
        "packets_from_client",
        "packets_to_client",
        "pad",
        "peer_packets_dropped",
        "permissions",
        "port",
        "relay",
        "relayed_address",
        "send",
        "username",
    )

    def __init__(self, five_tuple: FiveTuple, username: str, send: ClientSender, now: float, lifetime: int) -> None:
        self.five_tuple = five_tuple
        self.username = username
        self.send = send
        self.pad = five_tuple[0] != "udp"  # ChannelData is padded to 4 bytes over TCP and TLS (RFC 5766 11.5)
        self.created_at = now
        self.lifetime = lifetime
        self.expires_at = now + lifetime
        self.port = 0
        self.relay: RelayTransport | None = None
        self.relayed_address: Address = ("0.0.0.0", 0)
        self.permissions: dict[str, float] = {}  # peer IP -> expiry
        self.channels: dict[int, Address] = {}  # channel number -> peer
        self.channel_of_peer: dict[Address, int] = {}
        self.channel_expires: dict[int, float] = {}
        self._channel_cooldown: dict[int, tuple[Address, float]] = {}  # expired number -> (old peer, until)
        self._peer_cooldown: dict[Address, tuple[int, float]] = {}  # expired peer -> (old number, until)
        self._next_deadline = float("inf")  # no permission, channel or cooldown runs out before this
        self._transaction_counter = int.from_bytes(os.urandom(8))
        self.packets_from_client = self.bytes_from_client = 0
        self.packets_to_client = self.bytes_to_client = 0
        self.peer_packets_dropped = 0  # from peers without a permission
        self.client_packets_dropped = 0  # towards peers without a permission, or on unbound channels

    # --- hot path ---

    def on_client_channel_data(self, data: bytes) -> None:
        """ChannelData from the client (at least 4 bytes): relay its payload to the channel's peer."""
        peer = self.channels.get(data[0] << 8 | data[1])
        if peer is None or peer[0] not in self.permissions:
            self.client_packets_dropped += 1
            return
        length = data[2] << 8 | data[3]
        if 4 + length > len(data):  # RFC 5766 11.6: a length past the end of the message is discarded
            self.client_packets_dropped += 1
            return
        self.relay.write(data[4 : 4 + length], peer)  # type: ignore[union-attr]
        self.packets_from_client += 1
        self.bytes_from_client += length

    def on_client_send(self, payload: bytes, peer: Address) -> None:
        """The DATA of a Send indication: relay it to the peer if there is a permission (RFC 5766 10.2)."""
        if peer[0] not in self.permissions:
            self.client_packets_dropped += 1
            return
        self.relay.write(payload, peer)  # type: ignore[union-attr]
        self.packets_from_client += 1
        self.bytes_from_client += len(payload)

    def on_peer_datagram(self, data: bytes, peer: Address) -> None:
        """A UDP datagram at the relayed address: to the client as ChannelData or a Data indication (10.3, 11.5)."""
        if peer[0] not in self.permissions:
            self.peer_packets_dropped += 1
            return
        channel = self.channel_of_peer.get(peer)
        if channel is not None:
            self.send(encode_channel_data(channel, data, self.pad))
        else:
            self._transaction_counter += 1
            tid = (self._transaction_counter & 0xFFFFFFFFFFFFFFFFFFFFFFFF).to_bytes(12)
            self.send(encode_data_indication(tid, peer, data))
        self.packets_to_client += 1
        self.bytes_to_client += len(data)

    # --- control ---

    def install_permission(self, host: str, expires_at: float) -> None:
        if self.permissions.get(host, 0.0) < expires_at:
            self.permissions[host] = expires_at
        self._note_deadline(expires_at)

    def channel_conflict(self, number: int, peer: Address, now: float) -> str | None:
        """Why `number` cannot be bound to `peer` (RFC 5766 11.2), or None if it can."""
        bound_peer = self.channels.get(number)
        if bound_peer is None and number in self._channel_cooldown:
            old_peer, until = self._channel_cooldown[number]
            bound_peer = old_peer if until > now else None
        if bound_peer is not None and bound_peer != peer:
            return f"channel 0x{number:04x} is bound to another peer"
        bound_number = self.channel_of_peer.get(peer)
        if bound_number is None and peer in self._peer_cooldown:
            old_number, until = self._peer_cooldown[peer]
            bound_number = old_number if until > now else None
        if bound_number is not None and bound_number != number:
            return "peer is bound to another channel"
        return None

    def bind_channel(self, number: int, peer: Address, expires_at: float) -> None:
        self._channel_cooldown.pop(number, None)
        self._peer_cooldown.pop(peer, None)
        self.channels[number] = peer
        self.channel_of_peer[peer] = number
        self.channel_expires[number] = expires_at
        self._note_deadline(expires_at)

    def sweep(self, now: float, cooldown: float) -> None:
        """Drop expired permissions, channels and cooldowns. Cheap when nothing is due."""
        if now < self._next_deadline:
            return
        deadline = float("inf")
        for host, expiry in list(self.permissions.items()):
            if expiry <= now:
                del self.permissions[host]
            else:
                deadline = min(deadline, expiry)
        for number, expiry in list(self.channel_expires.items()):
            if expiry <= now:
                peer = self.channels.pop(number)
                del self.channel_expires[number]
                del self.channel_of_peer[peer]
                if cooldown > 0:
                    self._channel_cooldown[number] = (peer, expiry + cooldown)
                    self._peer_cooldown[peer] = (number, expiry + cooldown)
            else:
                deadline = min(deadline, expiry)
        for cooldowns in (self._channel_cooldown, self._peer_cooldown):
            for key, (_, until) in list(cooldowns.items()):
                if until <= now:
                    del cooldowns[key]
                else:
                    deadline = min(deadline, until)
        self._next_deadline = deadline

    def close(self) -> None:
        """Stop relaying: forget every permission and channel and close the relay socket."""
        self.permissions.clear()
        self.channels.clear()
        self.channel_of_peer.clear()
        self.channel_expires.clear()
        if self.relay is not None:
            self.relay.close()

    def _note_deadline(self, when: float) -> None:
        if when < self._next_deadline:
            self._next_deadline = when
