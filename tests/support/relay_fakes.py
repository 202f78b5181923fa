"""Test doubles for the pure TURN core: a clock, relay sockets that record writes, a client that records what
the server sends it, and a harness wiring a real `TurnServer` to them with real credentials, nonces, policy
and port pool, recording the log events the core emits. Nothing here touches the network.

    harness = TurnHarness()
    client = harness.client("alice")            # authenticated requests for alice over UDP
    reply = client.allocate()                   # the parsed response (401/438 challenges answered for you)
    harness.clock.advance(301); harness.server.expire()
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from relay.allocation import Allocation, FiveTuple, TurnSettings
from relay.auth import CredentialStore, NonceIssuer
from relay.dispatch import TurnServer
from relay.policy import PeerPolicy
from relay.ports import PortPool
from relay.stun import Attr, Message, MessageClass, Method, encode, long_term_key, parse
from tests.support.clock import FakeClock

Address = tuple[str, int]

REALM = "example.org"
USERS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
SERVER = ("127.0.0.1", 3478)
RELAY_IP = "127.0.0.1"


class FakeRelayTransport:
    """A bound relay socket: records every write; `receive` plays a datagram from a peer into the core."""

    def __init__(self, port: int, deliver: Callable[[bytes, Address], None], df_supported: bool = True) -> None:
        self.port = port
        self.deliver = deliver
        self.writes: list[tuple[bytes, Address]] = []
        self.closed = False
        self.df_supported = df_supported
        self.dont_fragment = False

    def set_dont_fragment(self) -> bool:
        """DF on everything this socket sends; False (nothing set) when `df_supported` is off, as on some OSes."""
        self.dont_fragment = self.df_supported
        return self.df_supported

    def write(self, data: bytes, addr: Address) -> None:
        assert not self.closed, "write on a closed relay socket"
        self.writes.append((data, addr))

    def close(self) -> None:
        self.closed = True

    def receive(self, data: bytes, peer: Address) -> None:
        """A datagram from `peer` arrives at the relayed address (dropped, as by the OS, once closed)."""
        if not self.closed:
            self.deliver(data, peer)


class FakeRelayOpener:
    """The core's RelayOpener: 'binds' any port except those in `busy` (taken by another process)."""

    def __init__(self, busy: Iterable[int] = (), df_supported: bool = True) -> None:
        self.busy = set(busy)
        self.df_supported = df_supported
        self.opened: list[FakeRelayTransport] = []  # every socket ever opened, in order
        self.attempts: list[int] = []

    def __call__(self, port: int, deliver: Callable[[bytes, Address], None]) -> FakeRelayTransport | None:
        self.attempts.append(port)
        if port in self.busy:
            return None
        assert port not in self.open_ports, f"port {port} bound twice"
        transport = FakeRelayTransport(port, deliver, self.df_supported)
        self.opened.append(transport)
        return transport

    @property
    def open_ports(self) -> set[int]:
        return {t.port for t in self.opened if not t.closed}

    def socket(self, port: int) -> FakeRelayTransport:
        """The open socket on `port`."""
        (transport,) = [t for t in self.opened if t.port == port and not t.closed]
        return transport


class ClientRecorder:
    """A ClientSender: what the server sent this client outside responses (Data indications, ChannelData)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.sent.append(data)


@dataclass
class TurnHarness:
    """A real TurnServer wired to fakes. Peers in 127.0.0.0/8 are allowed; everything else follows the defaults."""

    settings: TurnSettings = field(default_factory=lambda: TurnSettings(realm=REALM, relay_ip=RELAY_IP))
    users: dict[str, str] = field(default_factory=lambda: dict(USERS))
    allowed_peers: tuple[str, ...] = ("127.0.0.0/8",)
    min_port: int = 50000
    max_port: int = 50099
    busy_ports: tuple[int, ...] = ()
    df_supported: bool = True
    clock: FakeClock = field(default_factory=FakeClock)

    def __post_init__(self) -> None:
        import random

        self.opener = FakeRelayOpener(self.busy_ports, self.df_supported)
        self.ports = PortPool(self.min_port, self.max_port, random.Random(7), clock=self.clock)
        self.nonces = NonceIssuer(b"0123456789abcdef0123456789abcdef", lifetime=600)
        self.credentials = CredentialStore(self.settings.realm, self.users)
        self.events: list[dict[str, Any]] = []  # every log line the core emitted: its fields and its `text`
        self.server = TurnServer(
            self.settings,
            credentials=self.credentials,
            nonces=self.nonces,
            policy=PeerPolicy(allowed=self.allowed_peers, own_addresses=[SERVER[0]]),
            ports=self.ports,
            open_relay=self.opener,
            clock=self.clock,
            emit=self.record_event,
        )

    def record_event(self, text: str, **fields: Any) -> None:
        self.events.append({"text": text, **fields})

    def client(self, username: str = "alice", *, address: Address = ("198.51.100.7", 40000),
               transport: str = "udp", password: str | None = None) -> FakeTurnClient:
        return FakeTurnClient(self, username, password if password is not None else self.users[username],
                              (transport, address, SERVER))

    def advance(self, seconds: float) -> None:
        """Let time pass and run the sweep the shell runs every second."""
        self.clock.advance(seconds)
        self.server.expire()


class FakeTurnClient:
    """Builds (authenticated) requests for one 5-tuple and feeds them to the harness's server."""

    def __init__(self, harness: TurnHarness, username: str, password: str, five_tuple: FiveTuple) -> None:
        self.harness = harness
        self.username = username
        self.key = long_term_key(username, harness.settings.realm, password)
        self.five_tuple = five_tuple
        self.nonce: str | None = None
        self.received = ClientRecorder()

    @property
    def allocation(self) -> Allocation | None:
        return self.harness.server.allocations.get(self.five_tuple)

    def message(self, method: int, attributes: list[tuple[int, Any]] = (), *,
                msg_class: int = MessageClass.REQUEST, transaction_id: bytes | None = None) -> Message:
        return Message(method, msg_class, transaction_id or os.urandom(12), list(attributes))

    def signed(self, message: Message, *, nonce: str | None = None, username: str | None = None,
               key: bytes | None = None, fingerprint: bool = False) -> bytes:
        """`message` with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (the client's own unless overridden)."""
        if self.nonce is None and nonce is None:
            self.nonce = self.challenge()
        signed = Message(message.method, message.msg_class, message.transaction_id, list(message.attributes))
        signed.add(Attr.USERNAME, username if username is not None else self.username)
        signed.add(Attr.REALM, self.harness.settings.realm)
        signed.add(Attr.NONCE, nonce if nonce is not None else self.nonce)
        return encode(signed, integrity_key=key if key is not None else self.key, fingerprint=fingerprint)

    def send_raw(self, data: bytes) -> Message | None:
        """Hand bytes to handle_stun; the parsed response, or None."""
        reply = self.harness.server.handle_stun(data, self.five_tuple, self.received)
        return parse(reply) if reply is not None else None

    def challenge(self) -> str:
        """Get a NONCE the way a client does: an unauthenticated Allocate gets 401 with REALM and NONCE."""
        reply = self.send_raw(encode(self.message(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, 17)])))
        assert reply is not None and reply.get(Attr.ERROR_CODE)[0] == 401
        return reply.get(Attr.NONCE)

    def request(self, method: int, attributes: list[tuple[int, Any]] = (), **signing: Any) -> Message:
        """An authenticated request; the parsed response (a 438 is answered once with the fresh NONCE)."""
        message = self.message(method, attributes)
        reply = self.send_raw(self.signed(message, **signing))
        assert reply is not None
        if reply.msg_class == MessageClass.ERROR and reply.get(Attr.ERROR_CODE)[0] == 438 and not signing:
            self.nonce = reply.get(Attr.NONCE)
            message.transaction_id = os.urandom(12)
            reply = self.send_raw(self.signed(message))
            assert reply is not None
        return reply

    def allocate(self, *extra: tuple[int, Any], lifetime: int | None = None) -> Message:
        attributes: list[tuple[int, Any]] = [(Attr.REQUESTED_TRANSPORT, 17), *extra]
        if lifetime is not None:
            attributes.append((Attr.LIFETIME, lifetime))
        return self.request(Method.ALLOCATE, attributes)

    def refresh(self, lifetime: int | None = None) -> Message:
        return self.request(Method.REFRESH, [] if lifetime is None else [(Attr.LIFETIME, lifetime)])

    def create_permission(self, *peers: Address) -> Message:
        return self.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer) for peer in peers])

    def channel_bind(self, channel: int, peer: Address) -> Message:
        return self.request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer)])

    def send_indication(self, peer: Address, payload: bytes) -> None:
        message = self.message(Method.SEND, [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, payload)],
                               msg_class=MessageClass.INDICATION)
        assert self.harness.server.handle_stun(encode(message), self.five_tuple, self.received) is None

    def channel_data(self, channel: int, payload: bytes) -> None:
        from relay.stun import encode_channel_data

        self.harness.server.handle_channel_data(
            encode_channel_data(channel, payload, self.five_tuple[0] == "tcp"), self.five_tuple
        )

    def relay_socket(self) -> FakeRelayTransport:
        allocation = self.allocation
        assert allocation is not None
        return self.harness.opener.socket(allocation.port)


def error_code(reply: Message) -> int | None:
    """The response's error code, None for a success response."""
    value = reply.get(Attr.ERROR_CODE)
    return value[0] if value is not None else None


# Peers and helpers the core's unit tests share (their fixtures: tests/unit/conftest.py).
PEER = ("127.0.0.2", 9000)
OTHER_PEER = ("127.0.0.3", 9001)
DENIED_PEER = ("10.0.0.1", 9000)  # asked for, refused: nothing is ever sent there


def logged(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The events of one kind among those a harness recorded (`harness.events`)."""
    return [event for event in events if event.get("event") == name]


def with_settings(**changes: Any) -> TurnHarness:
    """A harness whose TurnSettings differ from the default in `changes` (quotas, external_ip, ...)."""
    return TurnHarness(settings=TurnSettings(realm=REALM, relay_ip="127.0.0.1", **changes))


def raw_handle(harness: TurnHarness, data: bytes, client_address: Address = ("198.51.100.7", 40000)) -> bytes | None:
    """Hand any bytes to the server as a UDP datagram from `client_address`; its response bytes, or None."""
    reply = harness.server.handle_stun(data, ("udp", client_address, SERVER), lambda _: None)
    return reply
