"""Sans-I/O STUN/TURN client (RFC 5389 Binding, RFC 5766 TURN) for the harness tools and tests.

`TurnClient` holds no socket and reads no clock: the caller feeds it what arrived (`receive`) and the time
(`now`, seconds on any monotonic clock), calls `handle_timeout` when `next_timeout()` is reached, and writes
whatever `data_to_send()` returns to the server, in order (datagrams over UDP, frames of the byte stream over
TCP).  What happened comes back as events: `Success`, `Failure` (a final STUN error response, or a transaction
that timed out: code `TIMEOUT`) and `DataReceived` (a Data indication or ChannelData from a peer).

It does what RFC 5389/5766 ask of a client so its drivers do not have to: retransmission over UDP (RTO 500 ms
doubling, Rc = 7 sends, Rm = 16), one Ti = 39.5 s timer over TCP, long-term credentials (401 -> retry with
USERNAME/REALM/NONCE/MESSAGE-INTEGRITY, 438 -> retry with the fresh nonce), integrity checks on responses, and,
with `keepalive=True`, refreshing the allocation, its permissions and its channels before they expire.

The load path does not go through events: `packet_template` precomputes the ChannelData or Send-indication
framing for one peer and payload size once, and `relay.client_stream.data_payload_offset` finds the payload in
what comes back (`relay.client_stream.StreamFramer` cuts a TCP stream into the frames `receive` takes).
"""

from __future__ import annotations

import os
import struct
from dataclasses import KW_ONLY, dataclass
from typing import Any

from relay import stun
from relay.stun import Attr, Message, MessageClass, Method

Address = tuple[str, int]

# RFC 5389 7.2.1: initial RTO, number of sends over UDP, last wait as a multiple of the RTO; 7.2.2: TCP timeout.
RTO = 0.5
RC = 7
RM = 16
TI = 39.5

# RFC 5766: REQUESTED-TRANSPORT value for UDP; channel number range; permission (8.) and channel (11.) lifetimes.
TRANSPORT_UDP = 17
CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x7FFE
PERMISSION_LIFETIME = 300.0
CHANNEL_LIFETIME = 600.0
# Refresh this long before the server forgets: RFC 5766 advises refreshing a minute before expiry.
REFRESH_MARGIN = 60.0
REFRESH_RETRY = 10.0

# Event code for a transaction that got no final response.
TIMEOUT = 0

_CHANNEL_HEADER = struct.Struct("!HH")


class ClientError(ValueError):
    """The caller asked for something the client state does not allow (no allocation, no channel, ...)."""


@dataclass(frozen=True)
class Credentials:
    """Long-term credentials (RFC 5389 10.2). The realm the server announces wins; `realm` stands in when it
    announces none."""

    username: str
    password: str
    realm: str | None = None


@dataclass(frozen=True, eq=False)
class Success:
    """A success response to the request identified by `handle` (the id `request_*` returned)."""

    handle: bytes
    method: int
    message: Message


@dataclass(frozen=True, eq=False)
class Failure:
    """A final error response (`code` from ERROR-CODE) or no response at all (`code == TIMEOUT`)."""

    handle: bytes
    method: int
    code: int
    reason: str
    message: Message | None = None


@dataclass(frozen=True, eq=False)
class DataReceived:
    """Application data from a peer: `channel` is set for ChannelData, None for a Data indication."""

    peer: Address | None
    payload: bytes
    channel: int | None = None


Event = Success | Failure | DataReceived


@dataclass(frozen=True)
class PacketTemplate:
    """Precomputed framing of application data to one peer: write the payload at `payload_offset` and send
    `buffer` as is (its length is fixed, padding included)."""

    buffer: bytearray
    payload_offset: int
    payload_size: int


@dataclass(frozen=True)
class Allocation:
    relayed: Address
    mapped: Address | None
    lifetime: int


@dataclass(eq=False)
class _Transaction:
    handle: bytes
    method: int
    attributes: list[tuple[int, Any]]
    wire: bytes = b""
    transaction_id: bytes = b""
    authenticated: bool = False
    stale_nonce_retries: int = 0
    tries: int = 0
    rto: float = RTO
    next_at: float = 0.0
    give_up_at: float = 0.0
    on_success: Any = None  # callable(Message, now) applying the response to the client state


@dataclass
class _Refresh:
    """A lifetime to keep up: when to act, and what to send."""

    due: float
    kind: str  # "allocation", "permission", "channel"
    key: Any = None
    pending: bool = False
    handle: bytes = b""  # of the request in flight


def new_transaction_id() -> bytes:
    return os.urandom(12)


@dataclass(eq=False, repr=False)
class TurnClient:
    """One client of one STUN/TURN server over one transport (one 5-tuple, so at most one allocation).

    The fields are how it behaves (`TurnClient(credentials, reliable=True, ...)`); its state starts in
    `__post_init__`."""

    credentials: Credentials | None = None
    _: KW_ONLY
    reliable: bool = False
    software: str | None = None
    rto: float = RTO
    max_sends: int = RC
    last_wait: int = RM
    reliable_timeout: float = TI
    keepalive: bool = False
    transaction_timeout: float | None = None  # caps the RFC schedule (interactive tools)

    def __post_init__(self) -> None:
        self.realm: str | None = self.credentials.realm if self.credentials else None
        self.nonce: str | None = None
        self._key: bytes | None = None
        self.allocation: Allocation | None = None
        self.permissions: dict[str, float] = {}  # peer IP -> when installed
        self.channels: dict[int, Address] = {}  # channel number -> peer
        self.channel_of: dict[Address, int] = {}
        self._next_channel = CHANNEL_MIN
        self._by_tid: dict[bytes, _Transaction] = {}
        self._outbox: list[bytes] = []
        self._refreshes: dict[tuple[str, Any], _Refresh] = {}

    # -- what the driver moves ------------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Everything to write to the server since the last call, in order."""
        out, self._outbox = self._outbox, []
        return out

    def next_timeout(self) -> float | None:
        """When `handle_timeout` must next be called (None: nothing pending)."""
        times = [t.next_at for t in self._by_tid.values()]
        if self.keepalive:
            times.extend(r.due for r in self._refreshes.values() if not r.pending)
        return min(times) if times else None

    def handle_timeout(self, now: float) -> list[Event]:
        """Retransmit, give up, or refresh whatever is due at `now`."""
        events: list[Event] = []
        for tx in [t for t in self._by_tid.values() if t.next_at <= now]:
            if now >= tx.give_up_at:
                del self._by_tid[tx.transaction_id]
                events.append(Failure(tx.handle, tx.method, TIMEOUT, "no response"))
                self._refresh_failed(tx.handle, now)
            else:
                self._transmit(tx, now)
        if self.keepalive:
            for refresh in [r for r in self._refreshes.values() if not r.pending and r.due <= now]:
                self._start_refresh(refresh, now)
        return events

    def receive(self, data: bytes, now: float) -> list[Event]:
        """One datagram (UDP) or one whole frame (TCP, see `relay.client_stream.StreamFramer`) from the server."""
        if data and 0x40 <= data[0] <= 0x7F:
            try:
                channel, payload = stun.parse_channel_data(data)
            except stun.StunDecodeError:
                return []
            return [DataReceived(self.channels.get(channel), payload, channel)]
        try:
            message = stun.parse(data)
        except stun.StunDecodeError:
            return []  # not for us to answer; a client drops what it cannot parse (RFC 5389 7.3)
        if message.msg_class == MessageClass.INDICATION:
            if message.method == Method.DATA and message.get(Attr.DATA) is not None:
                return [DataReceived(message.get(Attr.XOR_PEER_ADDRESS), message.get(Attr.DATA))]
            return []
        if message.msg_class not in (MessageClass.SUCCESS, MessageClass.ERROR):
            return []
        tx = self._by_tid.get(message.transaction_id)
        if tx is None or message.method != tx.method:
            return []  # a late retransmission's answer, or a stray
        if (
            tx.authenticated
            and self._key is not None
            and message.integrity_offset is not None
            and not stun.check_integrity(message, self._key)
        ):
            return []  # RFC 5389 10.2.3: a response whose integrity fails is discarded, as if never received
        del self._by_tid[tx.transaction_id]
        if message.msg_class == MessageClass.SUCCESS:
            if tx.on_success is not None:
                tx.on_success(message, now)
            return [Success(tx.handle, tx.method, message)]
        return self._on_error(tx, message, now)

    # -- requests --------------------------------------------------------------------------------------------

    def request_binding(self, now: float) -> bytes:
        """A Binding request (never authenticated). Returns its handle."""
        return self._start(Method.BINDING, [], now, authenticate=False)

    def request_allocate(self, now: float, lifetime: int | None = None, *, dont_fragment: bool = False) -> bytes:
        attributes: list[tuple[int, Any]] = [(Attr.REQUESTED_TRANSPORT, TRANSPORT_UDP)]
        if lifetime is not None:
            attributes.append((Attr.LIFETIME, lifetime))
        if dont_fragment:
            attributes.append((Attr.DONT_FRAGMENT, True))
        return self._start(Method.ALLOCATE, attributes, now, on_success=self._allocated)

    def request_refresh(self, now: float, lifetime: int | None = None) -> bytes:
        """Refresh the allocation; `lifetime=0` deletes it."""
        attributes: list[tuple[int, Any]] = [] if lifetime is None else [(Attr.LIFETIME, lifetime)]
        return self._start(Method.REFRESH, attributes, now, on_success=self._refreshed)

    def request_create_permission(self, now: float, peers: list[Address]) -> bytes:
        if not peers:
            raise ClientError("CreatePermission needs at least one peer")
        attributes: list[tuple[int, Any]] = [(Attr.XOR_PEER_ADDRESS, tuple(peer)) for peer in peers]
        hosts = [peer[0] for peer in peers]
        return self._start(
            Method.CREATE_PERMISSION, attributes, now,
            on_success=lambda _m, t: self._permitted(hosts, t),
        )

    def request_channel_bind(self, now: float, peer: Address, channel: int | None = None) -> bytes:
        """Bind `channel` (default: the peer's existing channel, else the next free one) to `peer`."""
        peer = (peer[0], peer[1])
        if channel is None:
            channel = self.channel_of.get(peer) or self._allocate_channel_number()
        if not CHANNEL_MIN <= channel <= CHANNEL_MAX:
            raise ClientError(f"channel number {channel:#x} outside 0x4000-0x7FFE")
        attributes = [(Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer)]
        return self._start(
            Method.CHANNEL_BIND, attributes, now,
            on_success=lambda _m, t: self._bound(channel, peer, t),
        )

    # -- application data -------------------------------------------------------------------------------------

    def send_data(self, peer: Address, payload: bytes) -> None:
        """Queue `payload` for `peer`: ChannelData if a channel is bound, else a Send indication."""
        peer = (peer[0], peer[1])
        channel = self.channel_of.get(peer)
        if channel is not None:
            self._outbox.append(stun.encode_channel_data(channel, payload, pad=self.reliable))
        else:
            message = Message(
                method=Method.SEND, msg_class=MessageClass.INDICATION, transaction_id=new_transaction_id(),
                attributes=[(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, payload)],
            )
            self._outbox.append(stun.encode(message))

    def packet_template(self, peer: Address, size: int, *, channel: bool) -> PacketTemplate:
        """Framing for `size`-byte payloads to `peer`, as ChannelData (`channel=True`, the channel must be bound)
        or as a Send indication. The load generator fills the payload in place and sends the buffer."""
        peer = (peer[0], peer[1])
        if channel:
            number = self.channel_of.get(peer)
            if number is None:
                raise ClientError(f"no channel bound to {peer[0]}:{peer[1]}")
            wire = stun.encode_channel_data(number, bytes(size), pad=self.reliable)
            return PacketTemplate(bytearray(wire), _CHANNEL_HEADER.size, size)
        marker = b"\xa5" * size  # found again after encoding: the DATA value is the only run of it
        message = Message(
            method=Method.SEND, msg_class=MessageClass.INDICATION, transaction_id=new_transaction_id(),
            attributes=[(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, marker)],
        )
        wire = stun.encode(message)
        offset = wire.rindex(marker) if size else len(wire)
        buffer = bytearray(wire)
        buffer[offset:offset + size] = bytes(size)
        return PacketTemplate(buffer, offset, size)

    # -- state changes on success ---------------------------------------------------------------------------

    def _allocated(self, message: Message, now: float) -> None:
        lifetime = message.get(Attr.LIFETIME, 600)
        self.allocation = Allocation(
            message.get(Attr.XOR_RELAYED_ADDRESS), message.get(Attr.XOR_MAPPED_ADDRESS), lifetime
        )
        self._schedule("allocation", None, now + max(lifetime - REFRESH_MARGIN, lifetime / 2))

    def _refreshed(self, message: Message, now: float) -> None:
        lifetime = message.get(Attr.LIFETIME, 0)
        if lifetime == 0:
            self.allocation = None
            self.permissions.clear()
            self.channels.clear()
            self.channel_of.clear()
            self._refreshes.clear()
            return
        if self.allocation is not None:
            self.allocation = Allocation(self.allocation.relayed, self.allocation.mapped, lifetime)
        self._schedule("allocation", None, now + max(lifetime - REFRESH_MARGIN, lifetime / 2))

    def _permitted(self, hosts: list[str], now: float) -> None:
        for host in hosts:
            self.permissions[host] = now
            self._schedule("permission", host, now + PERMISSION_LIFETIME - REFRESH_MARGIN)

    def _bound(self, channel: int, peer: Address, now: float) -> None:
        self.channels[channel] = peer
        self.channel_of[peer] = channel
        self.permissions[peer[0]] = now  # RFC 5766 11.2: a ChannelBind installs or refreshes the permission
        self._schedule("channel", peer, now + CHANNEL_LIFETIME - REFRESH_MARGIN)

    def _schedule(self, kind: str, key: Any, due: float) -> None:
        self._refreshes[(kind, key)] = _Refresh(due, kind, key)

    def _start_refresh(self, refresh: _Refresh, now: float) -> None:
        if refresh.kind == "allocation":
            handle = self.request_refresh(now)
        elif refresh.kind == "permission":
            handle = self.request_create_permission(now, [(refresh.key, 0)])
        else:
            handle = self.request_channel_bind(now, refresh.key, self.channel_of.get(refresh.key))
        # The request's success replaces this record through _schedule; a failure re-arms it.
        refresh.pending = True
        refresh.handle = handle

    def _allocate_channel_number(self) -> int:
        for _ in range(CHANNEL_MAX - CHANNEL_MIN + 1):
            number = self._next_channel
            self._next_channel = CHANNEL_MIN if number >= CHANNEL_MAX else number + 1
            if number not in self.channels:
                return number
        raise ClientError("all channel numbers are bound")

    # -- transactions ----------------------------------------------------------------------------------------

    def _start(
        self, method: int, attributes: list[tuple[int, Any]], now: float, *, authenticate: bool = True,
        on_success: Any = None,
    ) -> bytes:
        tx = _Transaction(handle=b"", method=method, attributes=attributes, on_success=on_success)
        tx.authenticated = authenticate and self._key is not None and self.nonce is not None
        self._send_new(tx, now)
        tx.handle = tx.transaction_id
        return tx.handle

    def _send_new(self, tx: _Transaction, now: float) -> None:
        """(Re)build the request with a fresh transaction id and current credentials, and send it."""
        tx.transaction_id = new_transaction_id()
        attributes = list(tx.attributes)
        if self.software:
            attributes.append((Attr.SOFTWARE, self.software))
        key = None
        if tx.authenticated and self.credentials is not None:
            attributes += [
                (Attr.USERNAME, self.credentials.username), (Attr.REALM, self.realm), (Attr.NONCE, self.nonce),
            ]
            key = self._key
        message = Message(
            method=tx.method, msg_class=MessageClass.REQUEST, transaction_id=tx.transaction_id,
            attributes=attributes,
        )
        tx.wire = stun.encode(message, integrity_key=key)
        tx.tries = 0
        tx.rto = self.rto
        if self.reliable:
            tx.give_up_at = now + self.reliable_timeout
        else:
            # Sends at 0, RTO, 3 RTO, 7 RTO, ... (Rc sends), then Rm * RTO after the last: 39.5 s by default.
            tx.give_up_at = now + self.rto * ((1 << (self.max_sends - 1)) - 1 + self.last_wait)
        if self.transaction_timeout is not None:
            tx.give_up_at = min(tx.give_up_at, now + self.transaction_timeout)
        self._by_tid[tx.transaction_id] = tx
        self._transmit(tx, now)

    def _transmit(self, tx: _Transaction, now: float) -> None:
        self._outbox.append(tx.wire)
        tx.tries += 1
        if self.reliable or tx.tries >= self.max_sends:
            tx.next_at = tx.give_up_at
        else:
            tx.next_at = min(now + tx.rto, tx.give_up_at)
            tx.rto *= 2

    def _on_error(self, tx: _Transaction, message: Message, now: float) -> list[Event]:
        code, reason = message.get(Attr.ERROR_CODE, (400, "error response without ERROR-CODE"))
        realm, nonce = message.get(Attr.REALM), message.get(Attr.NONCE)
        can_auth = self.credentials is not None and nonce is not None and (realm or self.realm) is not None
        if code == 401 and can_auth and not tx.authenticated:
            self._take_challenge(realm, nonce)
            tx.authenticated = True
            self._send_new(tx, now)
            return []
        if code == 438 and can_auth and tx.stale_nonce_retries < 2:
            self._take_challenge(realm, nonce)
            tx.stale_nonce_retries += 1
            tx.authenticated = True
            self._send_new(tx, now)
            return []
        self._refresh_failed(tx.handle, now)
        return [Failure(tx.handle, tx.method, code, reason, message)]

    def _take_challenge(self, realm: str | None, nonce: str) -> None:
        assert self.credentials is not None
        # RFC 5389 10.2.2: the realm is the one the server sends; a configured realm only stands in for none.
        if realm is not None:
            self.realm = realm
        self.nonce = nonce
        self._key = stun.long_term_key(self.credentials.username, self.realm or "", self.credentials.password)

    def _refresh_failed(self, handle: bytes, now: float) -> None:
        """A keepalive request failed: try again a little later rather than never (the lifetime may still allow
        it; if not, the server answers 437 and the caller sees the Failure)."""
        for refresh in self._refreshes.values():
            if refresh.handle == handle:
                refresh.pending = False
                refresh.due = now + REFRESH_RETRY
