"""The relay's C forwarding (relay._mmsg forward_clients / forward_peers, wired by relay.shell) against the Python
path it stands in for: the same random bursts of datagrams through two identical relays, one forwarding in C and
one handing every datagram to the Python handlers, queue the same datagrams on the same sockets to the same
addresses and leave the same counters.

Each side is the real shell and core on loopback (tests/support/relay_loopback.py) with three UDP clients: client 0
with channel 0x4000 to PEER (its ChannelData towards the client padded or not, drawn: the rule over TCP), client 1
with only a permission, client 2 with channel 0x4000 whose permission has gone (as when it expires first). The
bursts are handed to the sockets' `handle_burst` inside a batch, as the multiplexer does after recvmmsg, and what
they queued is taken instead of sent. Both sides use the batched back-end (where the C path lives; the pure-Python
back-end's equivalence is tests/integration/test_relay_datagram.py's); it must be built, as CI builds it.
"""

from __future__ import annotations

import contextlib
import os

from hypothesis import given
from hypothesis import strategies as st

from relay import datagram
from relay.stun import Attr, Message, MessageClass, Method, encode, encode_channel_data, parse
from tests.support.relay_loopback import REALM, USER, LoopbackRelay
from tests.support.strategies import scaled

PEER = ("127.0.0.1", 50001)
OTHER_PEER = ("127.0.0.1", 50002)  # same host as PEER: permitted, no channel until a ChannelBind in the sequence
STRANGER = ("127.0.0.2", 50003)  # no permission anywhere
UNKNOWN_SOURCE = ("127.0.0.9", 40404)  # no allocation
CLIENTS = 3
COUNTERS = ("packets_from_client", "bytes_from_client", "packets_to_client", "bytes_to_client",
            "client_packets_dropped", "peer_packets_dropped")

payloads = st.binary(max_size=120)
client_datagrams = st.one_of(
    st.tuples(st.just("channel"), st.sampled_from([0x4000, 0x4001, 0x4002, 0x7FFF]), payloads,
              st.binary(max_size=3)),  # trailing bytes past the length: allowed
    st.tuples(st.just("short"), st.sampled_from([0x4000, 0x4001]), payloads, st.integers(1, 10)),
    st.tuples(st.just("tiny"), st.binary(max_size=3).map(lambda b: b"\x40" + b[:2])),
    st.tuples(st.just("binding")),
    st.tuples(st.just("garbage"), st.binary(max_size=40)),
    st.tuples(st.just("send"), st.sampled_from([PEER, OTHER_PEER, STRANGER]), payloads),
    st.tuples(st.just("bind"), st.sampled_from([0x4001, 0x4002])),  # to OTHER_PEER, signed
)
listener_bursts = st.tuples(st.just("listener"), st.lists(
    st.tuples(st.sampled_from([0, 1, 2, None]), client_datagrams), min_size=1, max_size=12))
relay_bursts = st.tuples(st.integers(0, CLIENTS - 1), st.lists(
    st.tuples(st.sampled_from([PEER, OTHER_PEER, STRANGER]), payloads), min_size=1, max_size=12))
passes = st.lists(st.lists(st.one_of(listener_bursts, relay_bursts), min_size=1, max_size=4), min_size=1,
                  max_size=5)


@contextlib.contextmanager
def batched():
    before = datagram.backend()
    datagram.use_backend("batched")  # ValueError (a failure, not a skip) where the extension is not built
    try:
        yield
    finally:
        datagram.use_backend(before)


class Side:
    """One relay: C forwarding on (`fast`) or every datagram to the Python handlers."""

    def __init__(self, fast: bool, pad: bool) -> None:
        self.relay = LoopbackRelay()
        self.clients = [self.relay.client(PEER, channel=channel) for channel in (0x4000, None, 0x4000)]
        self.addresses = [client.sock.getsockname()[:2] for client in self.clients]
        by_client = {allocation.five_tuple[1]: allocation for allocation in self.relay.core.allocations.values()}
        self.allocations = [by_client[address] for address in self.addresses]
        self.allocations[0].pad = pad
        del self.allocations[2].permissions[PEER[0]]
        self.roles = {id(self.relay.listener): "listener"}
        self.roles.update({id(allocation.relay): f"relay {k}" for k, allocation in enumerate(self.allocations)})
        self.names = {address: f"client {k}" for k, address in enumerate(self.addresses)}
        self.handled = 0  # datagrams that reached a Python handler
        for endpoint in (self.relay.listener, *(allocation.relay for allocation in self.allocations)):
            assert endpoint.forward is not None
            if not fast:
                endpoint.forward = None
            endpoint.handler = self.counting(endpoint.handler)
        # Compared from here: a stray datagram from another process on this machine to a port just reused (read
        # while the setup's requests were answered) must not make the two sides differ.
        self.baseline = self.totals()

    def counting(self, handler):
        def handle(data, addr):
            self.handled += 1
            handler(data, addr)
        return handle

    def client_datagram(self, k: int | None, kind: tuple) -> tuple[bytes, tuple]:
        source = UNKNOWN_SOURCE if k is None else self.addresses[k]
        match kind:
            case ("channel", number, payload, extra):
                return encode_channel_data(number, payload) + extra, source
            case ("short", number, payload, missing):
                return encode_channel_data(number, payload)[:4 + len(payload) - missing], source
            case ("tiny", data):
                return data, source
            case ("binding",):
                return encode(Message(Method.BINDING, MessageClass.REQUEST, os.urandom(12), [])), source
            case ("garbage", data):
                return data, source
            case ("send", peer, payload):
                return encode(Message(Method.SEND, MessageClass.INDICATION, os.urandom(12),
                                      [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, payload)])), source
            case ("bind", number):
                nonce = self.clients[k].nonce if k is not None else "no-nonce"
                request = Message(Method.CHANNEL_BIND, MessageClass.REQUEST, os.urandom(12), [
                    (Attr.CHANNEL_NUMBER, number), (Attr.XOR_PEER_ADDRESS, OTHER_PEER), (Attr.USERNAME, USER),
                    (Attr.REALM, REALM), (Attr.NONCE, nonce)])
                return encode(request, integrity_key=self.relay.key), source
        raise AssertionError(kind)

    def run(self, bursts: list) -> list:
        """One multiplexer pass: each burst handed to its socket, then what they all queued (not sent)."""
        batch = datagram._batch
        batch.active = True
        try:
            for target, items in bursts:
                if target == "listener":
                    self.relay.listener.handle_burst([self.client_datagram(k, kind) for k, kind in items])
                else:
                    self.allocations[target].relay.handle_burst([(payload, peer) for peer, payload in items])
        finally:
            batch.active = False
        out = []
        for endpoint in batch.pending:
            role = self.roles[id(endpoint)]
            out.extend((role, self.names.get(addr, addr), normal(data) if role == "listener" else data)
                       for data, addr in endpoint.queue)
            endpoint.queue = []
        batch.pending = []
        return out

    def totals(self) -> dict:
        return {**{f"stats {key}": value for key, value in self.relay.core.stats.items()},
                **{f"client {k} {name}": getattr(allocation, name)
                   for k, allocation in enumerate(self.allocations) for name in COUNTERS}}

    def counters(self) -> dict:
        """What the bursts so far changed: the core's counters and the allocations'."""
        baseline = self.baseline
        return {key: value - baseline.get(key, 0) for key, value in self.totals().items()
                if value != baseline.get(key, 0)}


def normal(data: bytes) -> tuple:
    """To a client: ChannelData byte for byte, a STUN message by what does not differ between two relays (ids,
    nonces, MACs)."""
    if data and 0x40 <= data[0] <= 0x7F:
        return ("channel data", data)
    message = parse(data)
    error = message.get(Attr.ERROR_CODE)
    return (message.method, message.msg_class, error[0] if error else None, message.get(Attr.DATA),
            message.get(Attr.XOR_PEER_ADDRESS))


@scaled(0.1)
@given(passes, st.booleans())
def test_c_forwarding_queues_and_counts_what_the_python_path_does(sequence, pad):
    with batched():
        fast, python = Side(fast=True, pad=pad), Side(fast=False, pad=pad)
    try:
        for bursts in sequence:
            assert fast.run(bursts) == python.run(bursts)
            assert fast.counters() == python.counters()
        assert fast.handled <= python.handled
    finally:
        fast.relay.close()
        python.relay.close()


def test_forwardable_datagrams_never_reach_the_python_handlers():
    """The property above compares two paths only if the C one is taken: relayed ChannelData both ways and no
    handler call."""
    with batched():
        side = Side(fast=True, pad=False)
    try:
        out = side.run([("listener", [(0, ("channel", 0x4000, b"to the peer", b""))] * 5),
                        (0, [(PEER, b"to the client")] * 5)])
        assert out == [("relay 0", PEER, b"to the peer")] * 5 + \
            [("listener", "client 0", ("channel data", encode_channel_data(0x4000, b"to the client")))] * 5
        assert side.handled == 0
        assert side.allocations[0].packets_from_client == side.allocations[0].packets_to_client == 5
    finally:
        side.relay.close()
