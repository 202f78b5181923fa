"""TURN (RFC 5766) allocations, permissions and channels, and the STUN/TURN request handlers (pure, clock injected).

`TurnServer` takes whole STUN messages and ChannelData from clients (identified by their 5-tuple) and returns the
bytes to answer with; it asks the shell for relay sockets through `open_relay` and writes to them. Nothing here
does I/O of its own or reads the clock outside `handle_stun` and `expire`.

Liveness is membership: a permission, channel or allocation is in its dict exactly while it is live, and
`expire()` (called by the shell about once a second) removes what has run out. So the per-packet paths
(`Allocation.on_client_channel_data`, `Allocation.on_peer_datagram`, Send indications) are a couple of dict
look-ups and one write: no Message objects, no clock, no logging.

Log lines carry their fields for machines (`event`, `five_tuple`, `user`, ...) but are formatted from one
pre-built `text`: twisted.logger's format-string rendering of many fields costs twice as much per line.

Decisions the RFC leaves open, taken here:
- DONT-FRAGMENT in an Allocate is honoured by asking the relay socket to set DF on everything it sends
  (`RelayTransport.set_dont_fragment`); where the OS cannot, the Allocate gets 420 listing DONT-FRAGMENT, as RFC
  5766 6.2 permits. In a Send indication it is ignored: DF is per socket, not per packet.
- Only responses to *authenticated* requests are kept for retransmissions (keyed by 5-tuple and transaction id,
  for `transaction_lifetime` seconds): no state is held for a client before it authenticates, and a retransmitted
  unauthenticated request simply gets a fresh challenge.
- A channel's number and peer stay reserved for `channel_cooldown` seconds after the binding expires (RFC 5766
  11), so late ChannelData for the old binding cannot reach a new peer.
- Relayed addresses are IPv4 (the family of the relay socket): REQUESTED-ADDRESS-FAMILY IPv6 gets 440 (RFC
  6156), peers of the other family get 443.
- A CHANGE-REQUEST with no flags (sent by RFC 3489 clients in their first test) is ignored rather than 420'd.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.logger import Logger

from relay.auth import NonceStatus
from relay.quota import LocalQuota
from relay.ratelimit import LogLimiter
from relay.stun import (
    MAGIC_COOKIE,
    Attr,
    Message,
    MessageClass,
    Method,
    StunDecodeError,
    check_integrity,
    encode,
    encode_channel_data,
    encode_data_indication,
    error_response,
    parse,
    parse_send_indication,
    success_response,
)

if TYPE_CHECKING:
    from relay.auth import CredentialStore, NonceIssuer
    from relay.policy import PeerPolicy
    from relay.ports import PortPool
    from relay.quota import Quota

# Peer IPs one allocation may hold permissions for at once (RFC 5766 sets no limit; a media session needs a few).
MAX_PERMISSIONS = 1000

__all__ = [
    "Allocation",
    "ClientSender",
    "FiveTuple",
    "RelayOpener",
    "RelayTransport",
    "TurnError",
    "TurnServer",
    "TurnSettings",
    "format_five_tuple",
]

log = Logger()

Address = tuple[str, int]
FiveTuple = tuple[str, Address, Address]  # ("udp"|"tcp", client (host, port), server (host, port))
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

TRANSPORT_UDP = 17  # REQUESTED-TRANSPORT protocol number (RFC 5766 14.7)
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x7FFF
REQUESTED_ADDRESS_FAMILY = 0x0017  # RFC 6156; the codec keeps it as raw bytes
CHANGE_REQUEST = 0x0003  # RFC 3489/5780
BIND_ATTEMPTS = 10  # ports tried when the shell cannot bind the one the pool offered
TRANSACTION_CACHE_LIMIT = 100_000  # responses kept for retransmissions; beyond this new ones are not cached

_SEND_INDICATION_TYPE = b"\x00\x16"  # Send (0x006) | indication (0x010)
_TURN_METHODS = (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND)


@dataclass(frozen=True)
class TurnSettings:
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


def format_five_tuple(five_tuple: FiveTuple) -> str:
    transport, (client_host, client_port), (server_host, server_port) = five_tuple
    return f"{transport} {client_host}:{client_port}->{server_host}:{server_port}"


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
        self.pad = five_tuple[0] == "tcp"  # ChannelData is padded to 4 bytes over TCP (RFC 5766 11.5)
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


class TurnServer:
    """The TURN server's state and logic: every allocation, keyed by its 5-tuple."""

    def __init__(
        self,
        settings: TurnSettings,
        *,
        credentials: CredentialStore,
        nonces: NonceIssuer,
        policy: PeerPolicy,
        ports: PortPool,
        open_relay: RelayOpener,
        clock: Callable[[], float],
        quota: Quota | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.nonces = nonces
        self.policy = policy
        self.ports = ports
        self.open_relay = open_relay
        self.clock = clock
        # Allocation counts per user and in all; shared by every worker process when there are several.
        self.quota: Quota = quota if quota is not None else LocalQuota()
        self.allocations: dict[FiveTuple, Allocation] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        # Anyone can make auth failures happen: log them, but not at the rate a flood arrives.
        self._auth_log_limit = LogLimiter(rate=10.0, burst=50.0)
        self.reservations: dict[bytes, tuple[int, float]] = {}  # RESERVATION-TOKEN -> (port, expiry)
        # (5-tuple, transaction id) -> (response bytes, expiry), in expiry order.
        self._transactions: collections.OrderedDict[tuple[FiveTuple, bytes], tuple[bytes, float]] = (
            collections.OrderedDict()
        )
        self._handlers = {
            Method.ALLOCATE: self._allocate,
            Method.REFRESH: self._refresh,
            Method.CREATE_PERMISSION: self._create_permission,
            Method.CHANNEL_BIND: self._channel_bind,
        }

    def reconfigure(
        self,
        *,
        settings: TurnSettings | None = None,
        credentials: CredentialStore | None = None,
        policy: PeerPolicy | None = None,
    ) -> None:
        """SIGHUP: new settings, users or peer policy for new requests; live allocations are kept as they are."""
        if settings is not None:
            self.settings = settings
        if credentials is not None:
            self.credentials = credentials
        if policy is not None:
            self.policy = policy

    # --- from the shell ---

    def handle_stun(self, data: bytes, five_tuple: FiveTuple, send: ClientSender) -> bytes | None:
        """A whole STUN message (never ChannelData) from a client: the response to send back, or None."""
        if data[:2] == _SEND_INDICATION_TYPE:
            self._send_indication(data, five_tuple)
            return None
        try:
            request = parse(data)
        except StunDecodeError:
            self.stats["malformed"] += 1
            return None
        if request.msg_class == MessageClass.INDICATION:
            self.stats["indications"] += 1  # Binding keepalives; other indications from a client are ignored
            return None
        if request.msg_class != MessageClass.REQUEST:
            self.stats["unexpected_responses"] += 1
            return None
        self.stats["requests"] += 1
        if request.method == Method.BINDING:
            return self._binding(request, five_tuple)
        handler = self._handlers.get(request.method)
        if handler is None or request.cookie != MAGIC_COOKIE:
            return self._finish(request, self._error(request, TurnError(400, "unknown method or no magic cookie")))
        cached = self._transactions.get((five_tuple, request.transaction_id))
        if cached is not None:
            self.stats["retransmissions"] += 1
            return cached[0]
        return self._authenticated(request, five_tuple, send, handler)

    def handle_channel_data(self, data: bytes, five_tuple: FiveTuple) -> None:
        """ChannelData from a client (hot path)."""
        allocation = self.allocations.get(five_tuple)
        if allocation is None or len(data) < 4:
            self.stats["channel_data_dropped"] += 1
            return
        allocation.on_client_channel_data(data)

    def connection_lost(self, five_tuple: FiveTuple) -> None:
        """The client's TCP control connection closed: its allocation goes with it (RFC 5766 2.1)."""
        allocation = self.allocations.get(five_tuple)
        if allocation is not None:
            self._delete(allocation, "connection-lost")

    def expire(self) -> None:
        """Drop what has run out: allocations, permissions, channels, reservations, cached responses."""
        now = self.clock()
        cooldown = self.settings.channel_cooldown
        for allocation in list(self.allocations.values()):
            if allocation.expires_at <= now:
                self._delete(allocation, "expired")
            else:
                allocation.sweep(now, cooldown)
        for token, (port, expiry) in list(self.reservations.items()):
            if expiry <= now:
                del self.reservations[token]
                self.ports.release(port)
        transactions = self._transactions
        while transactions:
            key, (_, expiry) = next(iter(transactions.items()))
            if expiry > now:
                break
            del transactions[key]

    def close(self) -> None:
        """Shutdown: delete every allocation and reservation."""
        for allocation in list(self.allocations.values()):
            self._delete(allocation, "shutdown")
        for port, _ in self.reservations.values():
            self.ports.release(port)
        self.reservations.clear()
        self._transactions.clear()

    # --- Binding and Send indications: no authentication ---

    def _binding(self, request: Message, five_tuple: FiveTuple) -> bytes:
        unknown = [
            kind for kind in request.unknown_required
            if not (kind == CHANGE_REQUEST and request.get(CHANGE_REQUEST) == b"\0\0\0\0")
        ]  # fmt: skip
        if unknown:
            return self._finish(request, self._error(request, TurnError(420, unknown=tuple(unknown))))
        response = success_response(request)
        if request.cookie == MAGIC_COOKIE:
            response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple[1])
        else:  # RFC 3489 client: it cannot read XOR-MAPPED-ADDRESS (RFC 5389 12.2)
            response.add(Attr.MAPPED_ADDRESS, five_tuple[1])
        return self._finish(request, response)

    def _send_indication(self, data: bytes, five_tuple: FiveTuple) -> None:
        allocation = self.allocations.get(five_tuple)
        if allocation is None:
            self.stats["send_dropped"] += 1
            return
        parsed = parse_send_indication(data)
        if parsed is None:
            self.stats["malformed"] += 1
            return
        allocation.on_client_send(parsed[1], parsed[0])

    # --- the long-term credential mechanism (RFC 5389 10.2) ---

    def _authenticated(self, request: Message, five_tuple: FiveTuple, send: ClientSender, handler) -> bytes:
        now = self.clock()
        client_ip = five_tuple[1][0]
        if request.integrity_offset is None:
            return self._challenge(request, 401, client_ip, now)  # the normal first step, not a failure
        username = request.get(Attr.USERNAME)
        if username is None or request.get(Attr.REALM) is None or request.get(Attr.NONCE) is None:
            self._auth_failure(five_tuple, username, "USERNAME, REALM or NONCE missing")
            return self._finish(request, self._error(request, TurnError(400, "USERNAME, REALM and NONCE needed")))
        status = self.nonces.check(request.get(Attr.NONCE), client_ip, now)
        if status is NonceStatus.STALE:
            # Routine: every client's nonce runs out after nonce_lifetime. Counted, not logged.
            self.stats["stale_nonces"] += 1
            return self._challenge(request, 438, client_ip, now)
        if status is not NonceStatus.VALID:
            self._auth_failure(five_tuple, username, "invalid nonce")
            return self._challenge(request, 438, client_ip, now)
        key = self.credentials.key_for(username)
        if key is None:
            self._auth_failure(five_tuple, username, "unknown user")
            return self._challenge(request, 401, client_ip, now)
        if not check_integrity(request, key):
            self._auth_failure(five_tuple, username, "bad MESSAGE-INTEGRITY")
            return self._challenge(request, 401, client_ip, now)
        # Authenticated: every answer from here on carries MESSAGE-INTEGRITY and is replayed to retransmissions.
        unknown = list(request.unknown_required)
        if request.method == Method.ALLOCATE and REQUESTED_ADDRESS_FAMILY in unknown:
            unknown.remove(REQUESTED_ADDRESS_FAMILY)
        if unknown:
            response = self._error(request, TurnError(420, unknown=tuple(unknown)))
        else:
            try:
                response = handler(request, five_tuple, send, username, now)
            except TurnError as refusal:
                response = self._error(request, refusal)
        raw = self._finish(request, response, key)
        if len(self._transactions) < TRANSACTION_CACHE_LIMIT:
            self._transactions[(five_tuple, request.transaction_id)] = (
                raw, now + self.settings.transaction_lifetime,
            )  # fmt: skip
        return raw

    def _challenge(self, request: Message, code: int, client_ip: str, now: float) -> bytes:
        response = self._error(request, TurnError(code))
        response.add(Attr.REALM, self.settings.realm)
        response.add(Attr.NONCE, self.nonces.issue(client_ip, now))
        return self._finish(request, response)

    def _auth_failure(self, five_tuple: FiveTuple, username: str | None, reason: str) -> None:
        self.stats["auth_failures"] += 1
        suppressed = self._auth_log_limit.allow(self.clock())
        if suppressed is None:
            return  # a flood: counted in stats, not logged line by line
        source = format_five_tuple(five_tuple)
        text = f"TURN auth failure from {source} user {username!r}: {reason}"
        if suppressed:
            text += f" ({suppressed} earlier auth failures not logged: rate limit)"
        log.info("{text}", text=text, event="auth_failure", source=source, user=username, reason=reason,
                 suppressed=suppressed)

    # --- TURN requests (RFC 5766 6-11), each after authentication ---

    def _allocate(self, request: Message, five_tuple: FiveTuple, send: ClientSender, username: str,
                  now: float) -> Message:
        settings = self.settings
        if five_tuple in self.allocations:
            raise TurnError(437)
        transport = request.get(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            raise TurnError(400, "REQUESTED-TRANSPORT missing")
        if transport != TRANSPORT_UDP:
            raise TurnError(442)
        family = request.get(REQUESTED_ADDRESS_FAMILY)
        if family is not None and family[:1] != b"\x01":
            raise TurnError(440, "Address Family not Supported")
        even_port = request.get(Attr.EVEN_PORT)
        token = request.get(Attr.RESERVATION_TOKEN)
        if token is not None and even_port is not None:
            raise TurnError(400, "EVEN-PORT and RESERVATION-TOKEN together")
        if not self.quota.try_acquire(username, settings.user_quota, settings.total_quota):
            raise TurnError(486)
        lifetime = self._lifetime(request)
        allocation = Allocation(five_tuple, username, send, now, lifetime)
        try:
            reservation_token = self._bind_relay(allocation, even_port, token, now)
        except TurnError:
            self.quota.release(username)
            raise
        if request.get(Attr.DONT_FRAGMENT) is not None:
            set_dont_fragment = getattr(allocation.relay, "set_dont_fragment", None)
            if set_dont_fragment is None or not set_dont_fragment():
                allocation.close()
                self.ports.release(allocation.port)
                self.quota.release(username)
                self._drop_reservation(reservation_token)
                raise TurnError(420, unknown=(Attr.DONT_FRAGMENT,))
        host = settings.external_ip or settings.relay_ip
        if host in ("0.0.0.0", "::"):  # no advertised address configured: the one the client reached
            host = five_tuple[2][0]
        allocation.relayed_address = (host, allocation.port)
        self.allocations[five_tuple] = allocation
        self.stats["allocations_created"] += 1
        where, relayed = format_five_tuple(five_tuple), _format_address(allocation.relayed_address)
        log.info("{text}",
                 text=f"TURN allocation created {where} user {username!r} relayed {relayed} lifetime {lifetime}s",
                 event="allocation_created", five_tuple=where, user=username, relayed=relayed, lifetime=lifetime)
        response = success_response(request)
        response.add(Attr.XOR_RELAYED_ADDRESS, allocation.relayed_address)
        response.add(Attr.LIFETIME, lifetime)
        if reservation_token is not None:
            response.add(Attr.RESERVATION_TOKEN, reservation_token)
        response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple[1])
        return response

    def _bind_relay(self, allocation: Allocation, even_port: bool | None, token: bytes | None,
                    now: float) -> bytes | None:
        """Pick and bind the relay port; the RESERVATION-TOKEN for the next port if the R bit asked for one."""
        deliver = allocation.on_peer_datagram
        if token is not None:
            reserved = self.reservations.pop(token, None)
            if reserved is None or reserved[1] <= now:
                if reserved is not None:
                    self.ports.release(reserved[0])
                raise TurnError(508, "unknown or expired RESERVATION-TOKEN")
            port = reserved[0]
            relay = self.open_relay(port, deliver)
            if relay is None:
                self.ports.mark_unusable(port)
                raise TurnError(508)
            allocation.port, allocation.relay = port, relay
            return None
        for _ in range(BIND_ATTEMPTS):
            next_port = None
            if even_port:
                pair = self.ports.acquire_pair()
                if pair is None:
                    break
                port, next_port = pair
            else:
                port = self.ports.acquire(even=even_port is not None)
                if port is None:
                    break
            relay = self.open_relay(port, deliver)
            if relay is None:
                self.ports.mark_unusable(port)
                if next_port is not None:
                    self.ports.release(next_port)
                continue
            allocation.port, allocation.relay = port, relay
            if next_port is None:
                return None
            new_token = os.urandom(8)
            self.reservations[new_token] = (next_port, now + self.settings.reservation_lifetime)
            return new_token
        raise TurnError(508)

    def _drop_reservation(self, token: bytes | None) -> None:
        if token is not None and token in self.reservations:
            self.ports.release(self.reservations.pop(token)[0])

    def _refresh(self, request: Message, five_tuple: FiveTuple, send: ClientSender, username: str,
                 now: float) -> Message:
        allocation = self._allocation_of(five_tuple, username)
        requested = request.get(Attr.LIFETIME)
        response = success_response(request)
        if requested == 0:
            self._delete(allocation, "refresh-0")
            response.add(Attr.LIFETIME, 0)
            return response
        lifetime = self._lifetime(request)
        allocation.lifetime = lifetime
        allocation.expires_at = now + lifetime
        self.stats["allocations_refreshed"] += 1
        where, relayed = format_five_tuple(five_tuple), _format_address(allocation.relayed_address)
        log.info("{text}",
                 text=f"TURN allocation refreshed {where} user {username!r} relayed {relayed} lifetime {lifetime}s",
                 event="allocation_refreshed", five_tuple=where, user=username, relayed=relayed, lifetime=lifetime)
        response.add(Attr.LIFETIME, lifetime)
        return response

    def _create_permission(self, request: Message, five_tuple: FiveTuple, send: ClientSender, username: str,
                           now: float) -> Message:
        allocation = self._allocation_of(five_tuple, username)
        peers = request.get_all(Attr.XOR_PEER_ADDRESS)
        if not peers:
            raise TurnError(400, "XOR-PEER-ADDRESS missing")
        for peer in peers:  # all or nothing (RFC 5766 9.2)
            self._check_peer(allocation, peer)
        new_hosts = {host for host, _ in peers} - allocation.permissions.keys()
        if len(allocation.permissions) + len(new_hosts) > MAX_PERMISSIONS:
            # One call talks to a handful of peers; thousands are a client filling our memory.
            raise TurnError(508, "too many permissions on this allocation")
        expires_at = now + self.settings.permission_lifetime
        for host, _ in peers:
            allocation.install_permission(host, expires_at)
        return success_response(request)

    def _channel_bind(self, request: Message, five_tuple: FiveTuple, send: ClientSender, username: str,
                      now: float) -> Message:
        allocation = self._allocation_of(five_tuple, username)
        number = request.get(Attr.CHANNEL_NUMBER)
        peer = request.get(Attr.XOR_PEER_ADDRESS)
        if number is None or peer is None:
            raise TurnError(400, "CHANNEL-NUMBER and XOR-PEER-ADDRESS needed")
        if not CHANNEL_MIN <= number <= CHANNEL_MAX:
            raise TurnError(400, "channel number outside 0x4000-0x7FFF")
        conflict = allocation.channel_conflict(number, peer, now)
        if conflict is not None:
            raise TurnError(400, conflict)
        self._check_peer(allocation, peer)
        if peer[0] not in allocation.permissions and len(allocation.permissions) >= MAX_PERMISSIONS:
            raise TurnError(508, "too many permissions on this allocation")
        allocation.bind_channel(number, peer, now + self.settings.channel_lifetime)
        # A channel binding also installs or refreshes the permission for the peer's IP (RFC 5766 11.2).
        allocation.install_permission(peer[0], now + self.settings.permission_lifetime)
        return success_response(request)

    # --- helpers ---

    def _allocation_of(self, five_tuple: FiveTuple, username: str) -> Allocation:
        allocation = self.allocations.get(five_tuple)
        if allocation is None:
            raise TurnError(437)
        if allocation.username != username:  # RFC 5766 4: the 5-tuple's allocation belongs to one user
            raise TurnError(441)
        return allocation

    def _check_peer(self, allocation: Allocation, peer: Address) -> None:
        host = peer[0]
        reason = self.policy.deny_reason(host)
        if reason is not None:
            self.stats["permissions_denied"] += 1
            where = format_five_tuple(allocation.five_tuple)
            log.info("{text}",
                     text=f"TURN permission denied {where} user {allocation.username!r} peer {host}: {reason}",
                     event="permission_denied", five_tuple=where, user=allocation.username, peer=host, reason=reason)
            raise TurnError(403)
        if (":" in host) != (":" in allocation.relayed_address[0]):
            raise TurnError(443, "Peer Address Family Mismatch")

    def _lifetime(self, request: Message) -> int:
        """RFC 5766 6.2/7.2: min(requested, maximum), but never below the default."""
        requested = request.get(Attr.LIFETIME)
        settings = self.settings
        if requested is None:
            return settings.default_lifetime
        return max(settings.default_lifetime, min(requested, settings.max_lifetime))

    def _delete(self, allocation: Allocation, reason: str) -> None:
        del self.allocations[allocation.five_tuple]
        allocation.close()
        self.ports.release(allocation.port)
        user = allocation.username
        self.quota.release(user)
        self.stats["allocations_deleted"] += 1
        if allocation.peer_packets_dropped:
            self.stats["peer_packets_dropped"] += allocation.peer_packets_dropped
        if allocation.client_packets_dropped:
            self.stats["client_packets_dropped"] += allocation.client_packets_dropped
        a = allocation
        where, relayed = format_five_tuple(a.five_tuple), _format_address(a.relayed_address)
        log.info(
            "{text}",
            text=f"TURN allocation deleted {where} user {user!r} relayed {relayed} ({reason}): "
                 f"from client {a.packets_from_client} packets {a.bytes_from_client} bytes, "
                 f"to client {a.packets_to_client} packets {a.bytes_to_client} bytes",
            event="allocation_deleted", five_tuple=where, user=user, relayed=relayed, reason=reason,
            packets_from_client=a.packets_from_client, bytes_from_client=a.bytes_from_client,
            packets_to_client=a.packets_to_client, bytes_to_client=a.bytes_to_client,
            peer_packets_dropped=a.peer_packets_dropped,
        )  # fmt: skip

    def _error(self, request: Message, refusal: TurnError) -> Message:
        self.stats[f"error_{refusal.code}"] += 1
        response = error_response(request, refusal.code, refusal.reason)
        if refusal.code == 420:
            # error_response lists the codec's unknown attributes; ours may differ (DONT-FRAGMENT, CHANGE-REQUEST).
            response.attributes = [(kind, value) for kind, value in response.attributes
                                   if kind != Attr.UNKNOWN_ATTRIBUTES]
            unknown = refusal.unknown if refusal.unknown is not None else tuple(request.unknown_required)
            response.add(Attr.UNKNOWN_ATTRIBUTES, unknown)
        for kind, value in refusal.attributes:
            response.add(kind, value)
        return response

    def _finish(self, request: Message, response: Message, key: bytes | None = None) -> bytes:
        """SOFTWARE on every response; MESSAGE-INTEGRITY once authenticated; FINGERPRINT if the request had one."""
        response.add(Attr.SOFTWARE, self.settings.software)
        return encode(response, integrity_key=key, fingerprint=request.get(Attr.FINGERPRINT) is not None)


def _format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
