"""Stateful property test of the TURN core: random Allocate/Refresh/CreatePermission/ChannelBind/Send/ChannelData,
peer datagrams, retransmissions, lost TCP connections and time passing, over a few clients and users.

A small model, kept from the RFC's rules and the server's *responses*, predicts every outcome; after every step:
- nothing was written to a peer, or delivered to a client, unless the model had a live permission at that moment
  (every write and delivery is predicted, and their totals must match);
- the allocations, their owners and quotas, permissions and channels are exactly the model's;
- the ports held are exactly those of live allocations plus live reservations, and only live allocations have an
  open relay socket (so expiry frees both);
- no step raises.
"""

from __future__ import annotations

import os

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from relay.allocation import TurnSettings
from relay.stun import Attr, Method, encode_channel_data, parse
from tests.support.relay_fakes import REALM, SERVER, ClientRecorder, FakeTurnClient, TurnHarness, error_code

USERS = ("alice", "bob", "carol")
FIVE_TUPLES = (
    ("udp", ("198.51.100.1", 1000), SERVER),
    ("udp", ("198.51.100.1", 1001), SERVER),
    ("udp", ("198.51.100.2", 1000), SERVER),
    ("tcp", ("198.51.100.2", 1000), SERVER),
)
PEERS = (("127.0.0.2", 9000), ("127.0.0.2", 9001), ("127.0.0.3", 9000), ("10.0.0.1", 9000))
DENIED = {"10.0.0.1"}
CHANNELS = (0x4000, 0x7FFF, 0x3FFF)
MIN_PORT, MAX_PORT, BUSY_PORT = 50000, 50005, 50003
USER_QUOTA, TOTAL_QUOTA = 2, 3
PERMISSION, CHANNEL, COOLDOWN, RESERVATION, DEFAULT, MAXIMUM = 300, 600, 300, 30, 600, 3600

OWN = st.integers(0, 4)  # 0: any client and user; else an existing allocation and its owner
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "")


class ModelAllocation:
    def __init__(self, user: str, expires: float, recorder: ClientRecorder) -> None:
        self.user = user
        self.expires = expires
        self.recorder = recorder
        self.permissions: dict[str, float] = {}
        self.channels: dict[int, tuple[tuple[str, int], float]] = {}
        self.cooldown_number: dict[int, tuple[tuple[str, int], float]] = {}
        self.cooldown_peer: dict[tuple[str, int], tuple[int, float]] = {}


class TurnCoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.harness = TurnHarness(
            settings=TurnSettings(realm=REALM, relay_ip="127.0.0.1", user_quota=USER_QUOTA, total_quota=TOTAL_QUOTA),
            min_port=MIN_PORT, max_port=MAX_PORT, busy_ports=(BUSY_PORT,),
        )
        self.server = self.harness.server
        self.clients: dict[tuple[int, str], FakeTurnClient] = {}
        self.model: dict[tuple, ModelAllocation] = {}
        self.reservations: dict[bytes, tuple[int, float]] = {}
        self.last_request: dict[int, tuple[bytes, bytes, float]] = {}  # client index -> (request, reply, time)
        self.expected_writes = 0
        self.expected_deliveries = 0
        self.recorders: list[ClientRecorder] = []

    # --- helpers ---

    @property
    def now(self) -> float:
        return self.harness.clock()

    def client(self, index: int, user: str) -> FakeTurnClient:
        key = (index, user)
        if key not in self.clients:
            client = self.harness.client(user)
            client.five_tuple = FIVE_TUPLES[index]
            self.clients[key] = client
            self.recorders.append(client.received)
        return self.clients[key]

    def owned(self, index: int, user: str) -> ModelAllocation | int:
        """The model allocation, or the error code a request on it must get (437 none, 441 someone else's)."""
        allocation = self.model.get(FIVE_TUPLES[index])
        if allocation is None:
            return 437
        return allocation if allocation.user == user else 441

    def request(self, index: int, user: str, method: int, attributes: list) -> tuple[object, int | None]:
        client = self.client(index, user)
        message = client.message(method, attributes)
        data = client.signed(message)
        raw = self.server.handle_stun(data, client.five_tuple, client.received)
        reply = parse(raw)
        if error_code(reply) == 438:  # the nonce went stale while time passed
            client.nonce = reply.get(Attr.NONCE)
            message.transaction_id = os.urandom(12)
            data = client.signed(message)
            raw = self.server.handle_stun(data, client.five_tuple, client.received)
            reply = parse(raw)
        self.last_request[index] = (data, raw, self.now)
        return reply, error_code(reply)

    def free_bindable(self) -> set[int]:
        ports = self.harness.ports
        return set(range(MIN_PORT, MAX_PORT + 1)) - ports.held - ports.unusable - {BUSY_PORT}

    def target(self, index: int, user: str, own: int) -> tuple[int, str]:
        """Mostly (own != 0) an existing allocation and its owner, else the drawn client and user."""
        if own and self.model:
            five_tuple = sorted(self.model)[index % len(self.model)]
            return FIVE_TUPLES.index(five_tuple), self.model[five_tuple].user
        return index, user

    # --- rules ---

    @rule(index=st.integers(0, 3), user=st.sampled_from(USERS),
          variant=st.sampled_from(["plain", "df", "even", "pair", "token", "bogus-token", "even+token"]),
          lifetime=st.sampled_from([None, 0, 30, 1200, 99999]))
    def allocate(self, index, user, variant, lifetime):
        five_tuple = FIVE_TUPLES[index]
        attributes: list = [(Attr.REQUESTED_TRANSPORT, 17)]
        token = None
        if variant in ("token", "even+token"):
            token = next(iter(self.reservations), b"no-token")
        elif variant == "bogus-token":
            token = b"no-token"
        if variant in ("even", "even+token"):
            attributes.append((Attr.EVEN_PORT, False))
        if variant == "pair":
            attributes.append((Attr.EVEN_PORT, True))
        if token is not None:
            attributes.append((Attr.RESERVATION_TOKEN, token))
        if variant == "df":
            attributes.append((Attr.DONT_FRAGMENT, True))
        if lifetime is not None:
            attributes.append((Attr.LIFETIME, lifetime))
        bindable = self.free_bindable()
        user_count = sum(1 for a in self.model.values() if a.user == user)
        reply, code = self.request(index, user, Method.ALLOCATE, attributes)
        if five_tuple in self.model:
            assert code == 437
            return
        if variant == "even+token":
            assert code == 400
            return
        if user_count >= USER_QUOTA or len(self.model) >= TOTAL_QUOTA:
            assert code == 486
            return
        if variant in ("plain", "df"):
            assert code == (None if bindable else 508)
        elif variant == "even":
            assert code == (None if any(p % 2 == 0 for p in bindable) else 508)
        elif variant == "pair":
            possible = any(p % 2 == 0 and p + 1 in bindable for p in bindable)  # both bound: the odd one held
            assert code == (None if possible else 508)
        else:
            reserved = self.reservations.pop(token, None)
            assert code == (None if reserved is not None and reserved[0] != BUSY_PORT else 508)
        if code is not None:
            return
        _, port = reply.get(Attr.XOR_RELAYED_ADDRESS)
        if variant in ("even", "pair"):
            assert port % 2 == 0
        if variant == "token":
            assert port == reserved[0]
        if variant == "pair":
            new_token = reply.get(Attr.RESERVATION_TOKEN)
            assert new_token is not None and port + 1 in self.harness.ports.held
            self.reservations[new_token] = (port + 1, self.now + RESERVATION)
        granted = reply.get(Attr.LIFETIME)
        assert granted == (DEFAULT if lifetime is None else max(DEFAULT, min(lifetime, MAXIMUM)))
        self.model[five_tuple] = ModelAllocation(user, self.now + granted, self.client(index, user).received)

    @rule(index=st.integers(0, 3), user=st.sampled_from(USERS), own=OWN,
          lifetime=st.sampled_from([None, 0, 30, 1200, 9999]))
    def refresh(self, index, user, own, lifetime):
        index, user = self.target(index, user, own)
        expected = self.owned(index, user)
        reply, code = self.request(index, user, Method.REFRESH, [] if lifetime is None else [(Attr.LIFETIME, lifetime)])
        if isinstance(expected, int):
            assert code == expected
            return
        assert code is None
        if lifetime == 0:
            assert reply.get(Attr.LIFETIME) == 0
            del self.model[FIVE_TUPLES[index]]
            return
        granted = reply.get(Attr.LIFETIME)
        assert granted == (DEFAULT if lifetime is None else max(DEFAULT, min(lifetime, MAXIMUM)))
        expected.expires = self.now + granted

    @rule(index=st.integers(0, 3), user=st.sampled_from(USERS), own=OWN,
          peers=st.lists(st.sampled_from(PEERS), min_size=0, max_size=3))
    def create_permission(self, index, user, own, peers):
        index, user = self.target(index, user, own)
        expected = self.owned(index, user)
        _, code = self.request(index, user, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, p) for p in peers])
        if isinstance(expected, int):
            assert code == expected
        elif not peers:
            assert code == 400
        elif any(host in DENIED for host, _ in peers):
            assert code == 403
        else:
            assert code is None
            for host, _ in peers:
                expected.permissions[host] = self.now + PERMISSION

    @rule(index=st.integers(0, 3), user=st.sampled_from(USERS), own=OWN, number=st.sampled_from(CHANNELS),
          peer=st.sampled_from(PEERS))
    def channel_bind(self, index, user, own, number, peer):
        index, user = self.target(index, user, own)
        expected = self.owned(index, user)
        _, code = self.request(index, user, Method.CHANNEL_BIND,
                               [(Attr.CHANNEL_NUMBER, number), (Attr.XOR_PEER_ADDRESS, peer)])
        if isinstance(expected, int):
            assert code == expected
            return
        if not 0x4000 <= number <= 0x7FFF:
            assert code == 400
            return
        now = self.now
        bound_peer = expected.channels.get(number, (None, 0))[0]
        if bound_peer is None and expected.cooldown_number.get(number, (None, 0))[1] > now:
            bound_peer = expected.cooldown_number[number][0]
        bound_number = next((n for n, (p, _) in expected.channels.items() if p == peer), None)
        if bound_number is None and expected.cooldown_peer.get(peer, (None, 0))[1] > now:
            bound_number = expected.cooldown_peer[peer][0]
        if (bound_peer not in (None, peer)) or (bound_number not in (None, number)):
            assert code == 400
            return
        if peer[0] in DENIED:
            assert code == 403
            return
        assert code is None
        expected.cooldown_number.pop(number, None)
        expected.cooldown_peer.pop(peer, None)
        expected.channels[number] = (peer, now + CHANNEL)
        expected.permissions[peer[0]] = max(expected.permissions.get(peer[0], 0), now + PERMISSION)

    @rule(index=st.integers(0, 3), own=OWN, peer=st.sampled_from(PEERS), payload=st.binary(max_size=8))
    def send_indication(self, index, own, peer, payload):
        index, _ = self.target(index, "alice", own)
        allocation = self.model.get(FIVE_TUPLES[index])
        client = self.any_client(index)
        client.send_indication(peer, payload)
        if allocation is not None and allocation.permissions.get(peer[0], 0) > self.now:
            self.expected_writes += 1
            assert self.socket_of(index).writes[-1] == (payload, peer)

    @rule(index=st.integers(0, 3), own=OWN, number=st.sampled_from(CHANNELS), payload=st.binary(max_size=8))
    def channel_data(self, index, own, number, payload):
        index, _ = self.target(index, "alice", own)
        allocation = self.model.get(FIVE_TUPLES[index])
        client = self.any_client(index)
        self.server.handle_channel_data(encode_channel_data(number, payload, FIVE_TUPLES[index][0] == "tcp"),
                                        client.five_tuple)
        if allocation is None or number not in allocation.channels:
            return
        peer, expiry = allocation.channels[number]
        if expiry > self.now and allocation.permissions.get(peer[0], 0) > self.now:
            self.expected_writes += 1
            assert self.socket_of(index).writes[-1] == (payload, peer)

    @precondition(lambda self: self.model)
    @rule(pick=st.integers(0, 3), peer=st.sampled_from([*PEERS, ("127.0.0.2", 5555), ("203.0.113.1", 9000)]),
          payload=st.binary(max_size=8))
    def peer_datagram(self, pick, peer, payload):
        five_tuple = sorted(self.model)[pick % len(self.model)]
        allocation = self.model[five_tuple]
        socket = self.socket_of(FIVE_TUPLES.index(five_tuple))
        before = len(allocation.recorder.sent)
        socket.receive(payload, peer)
        if allocation.permissions.get(peer[0], 0) <= self.now:
            assert len(allocation.recorder.sent) == before
            return
        self.expected_deliveries += 1
        (delivered,) = allocation.recorder.sent[before:]
        channel = next((n for n, (p, e) in allocation.channels.items() if p == peer and e > self.now), None)
        if channel is not None:
            assert delivered == encode_channel_data(channel, payload, five_tuple[0] == "tcp")
        else:
            indication = parse(delivered)
            assert indication.get(Attr.XOR_PEER_ADDRESS) == peer and indication.get(Attr.DATA) == payload

    @precondition(lambda self: self.last_request)
    @rule(pick=st.integers(0, 3))
    def retransmit(self, pick):
        index = sorted(self.last_request)[pick % len(self.last_request)]
        request, reply, sent_at = self.last_request[index]
        if self.now - sent_at >= 40:
            return  # forgotten by now: a retransmission this late would be a new request
        assert self.server.handle_stun(request, FIVE_TUPLES[index], ClientRecorder()) == reply

    @rule(index=st.just(3))
    def tcp_connection_lost(self, index):
        self.server.connection_lost(FIVE_TUPLES[index])
        self.model.pop(FIVE_TUPLES[index], None)

    @rule(seconds=st.sampled_from([1, 29, 30, 40, 299, 300, 301, 599, 600, 3600]))
    def time_passes(self, seconds):
        self.harness.advance(seconds)
        now = self.now
        for five_tuple, allocation in list(self.model.items()):
            if allocation.expires <= now:
                del self.model[five_tuple]
                continue
            allocation.permissions = {h: e for h, e in allocation.permissions.items() if e > now}
            for number, (peer, expiry) in list(allocation.channels.items()):
                if expiry <= now:
                    del allocation.channels[number]
                    allocation.cooldown_number[number] = (peer, expiry + COOLDOWN)
                    allocation.cooldown_peer[peer] = (number, expiry + COOLDOWN)
        self.reservations = {t: (p, e) for t, (p, e) in self.reservations.items() if e > now}

    # --- invariants ---

    @invariant()
    def allocations_are_the_models(self):
        assert set(self.server.allocations) == set(self.model)
        for five_tuple, allocation in self.server.allocations.items():
            model = self.model[five_tuple]
            assert allocation.username == model.user
            assert set(allocation.permissions) == set(model.permissions)
            assert allocation.channels == {n: p for n, (p, _) in model.channels.items()}
            assert allocation.channel_of_peer == {p: n for n, p in allocation.channels.items()}
            assert not set(allocation.permissions) & DENIED

    @invariant()
    def quotas_are_counted_right(self):
        counts: dict[str, int] = {}
        for allocation in self.model.values():
            counts[allocation.user] = counts.get(allocation.user, 0) + 1
        assert dict(self.server.quota.per_user) == counts
        assert all(count <= USER_QUOTA for count in counts.values()) and len(self.model) <= TOTAL_QUOTA

    @invariant()
    def ports_held_are_those_of_live_allocations_and_reservations(self):
        allocated = {allocation.port for allocation in self.server.allocations.values()}
        reserved = {port for port, _ in self.reservations.values()}
        assert set(self.server.reservations) == set(self.reservations)
        assert self.harness.ports.held == allocated | reserved
        assert self.harness.opener.open_ports == allocated | reserved  # a reserved port is held bound

    @invariant()
    def nothing_relayed_or_delivered_unpredicted(self):
        assert self.total_writes() == self.expected_writes
        assert sum(len(recorder.sent) for recorder in self.recorders) == self.expected_deliveries

    # --- more helpers ---

    def any_client(self, index: int) -> FakeTurnClient:
        allocation = self.model.get(FIVE_TUPLES[index])
        return self.client(index, allocation.user if allocation else "alice")

    def socket_of(self, index: int):
        return self.harness.opener.socket(self.server.allocations[FIVE_TUPLES[index]].port)

    def total_writes(self) -> int:
        return sum(len(transport.writes) for transport in self.harness.opener.opened)


TurnCoreMachine.TestCase.settings = settings(
    max_examples=5000 if PROFILE == "fuzz" else 1000,
    stateful_step_count=60 if PROFILE == "fuzz" else 40,
    deadline=None,
)
test_turn_core_state_machine = TurnCoreMachine.TestCase
