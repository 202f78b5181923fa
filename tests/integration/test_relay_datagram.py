"""The relay's UDP sockets on loopback, with each datagram back-end (relay.datagram): the batched one (recvmmsg and
sendmmsg through the C extension) and the pure-Python fallback behave the same. No reactor runs: the tests call
`doRead` as the reactor would."""

from __future__ import annotations

import os
import select
import socket
import time

import pytest

from relay import datagram
from relay.datagram import READ_BURST, DatagramSocket
from relay.shell import open_udp_socket
from relay.stun import Attr, Message, MessageClass, Method, encode, encode_channel_data, parse, parse_channel_data
from tests.support.relay_loopback import LoopbackRelay, Readers, drain, udp_socket
from tests.support.relay_process import EchoPeer, RawTurnClient, RelayProcess


@pytest.fixture(params=datagram.BACKENDS)
def backend(request):
    """Every test below runs once per back-end; "batched" must be available (in CI the install builds it)."""
    before = datagram.backend()
    datagram.use_backend(request.param)  # ValueError (a failure, not a skip) where the extension is missing
    yield request.param
    datagram.use_backend(before)


def endpoint(handler, host: str = "127.0.0.1") -> DatagramSocket:
    return DatagramSocket(Readers(), open_udp_socket(host, 0), handler, "test")


def close_all(*things) -> None:
    """Close the sockets and endpoints a test opened."""
    for thing in things:
        thing.close()


def test_extension_is_built_on_linux():
    assert datagram.available_backends() == ["batched", "python"]


def test_a_burst_is_read_in_order_with_plain_addresses(backend):
    got = []
    sock = endpoint(lambda data, addr: got.append((data, addr)))
    sender = udp_socket()
    sent = [os.urandom(1 + i) for i in range(READ_BURST + 5)]
    for data in sent:
        sender.sendto(data, sock.sock.getsockname())
    sock.doRead()
    assert [data for data, _ in got] == sent[:READ_BURST]  # one wake-up reads at most READ_BURST
    sock.doRead()
    assert [data for data, _ in got] == sent
    assert {addr for _, addr in got} == {sender.getsockname()}
    assert all(type(addr) is tuple and len(addr) == 2 for _, addr in got)
    sock.doRead()  # nothing waiting: returns quietly
    sock.close()
    sender.close()


def test_ipv6_addresses_are_host_and_port(backend):
    got = []
    sock = endpoint(lambda data, addr: got.append(addr), "::1")
    sender = udp_socket("::1")
    sender.sendto(b"x", sock.sock.getsockname())
    sock.doRead()
    assert got == [sender.getsockname()[:2]]
    sock.close()
    sender.close()


def test_a_datagram_of_64_kib_is_read_whole(backend):
    got = []
    sock = endpoint(lambda data, addr: got.append(data))
    sender = udp_socket()
    big = os.urandom(65507)  # the largest IPv4 UDP payload
    sender.sendto(big, sock.sock.getsockname())
    sock.doRead()
    assert got == [big]
    sock.close()
    sender.close()


def test_writes_while_reading_go_out_after_the_burst_in_order(backend):
    peer = udp_socket()
    out = endpoint(lambda data, addr: None)
    written_during = []

    def forward(data, addr):
        out.write(data, peer.getsockname())
        written_during.append(bool(select.select([peer], [], [], 0)[0]))  # batched: nothing has left yet

    inbound = endpoint(forward)
    sender = udp_socket()
    sent = [b"%d" % i for i in range(20)]
    for data in sent:
        sender.sendto(data, inbound.sock.getsockname())
    inbound.doRead()
    assert [data for data, _ in drain(peer)] == sent
    assert any(written_during) == (backend == "python")
    out.write(b"outside a read", peer.getsockname())  # a TCP client's ChannelData, say: sent at once
    assert drain(peer) == [(b"outside a read", out.sock.getsockname())]
    close_all(peer, sender, inbound, out)


def test_a_write_that_fails_is_counted_and_never_raises(backend):
    peer = udp_socket()
    out = endpoint(lambda data, addr: None)

    def write_both(data, addr):
        out.write(data, ("::1", 9))  # not an address an IPv4 socket can send to
        out.write(data, peer.getsockname())

    inbound = endpoint(write_both)
    sender = udp_socket()
    sender.sendto(b"one", inbound.sock.getsockname())
    inbound.doRead()
    out.write(b"two", ("::1", 9))
    assert out.write_errors == 2
    assert drain(peer) == [(b"one", out.sock.getsockname())]
    close_all(peer, sender, inbound, out)


def test_many_senders_each_get_their_own_address(backend):
    """More sources than the extension's address cache has slots (256): every datagram names its own sender."""
    got = []
    sock = endpoint(lambda data, addr: got.append((data, addr)))
    senders = [udp_socket(buffer=65536) for _ in range(300)]
    for i, sender in enumerate(senders):
        sender.sendto(b"%d" % i, sock.sock.getsockname())
    for _ in range(300 // READ_BURST + 1):
        sock.doRead()
    assert sorted(got) == sorted((b"%d" % i, sender.getsockname()) for i, sender in enumerate(senders))
    for sender in senders:
        sender.close()
    sock.close()


def test_a_burst_writes_any_bytes_like_payload_and_more_than_one_batch(backend):
    peer = udp_socket()
    out = endpoint(lambda data, addr: None)

    def write_many(data, addr):
        for n in range(150):  # more than one sendmmsg call takes (64)
            payload = b"%d" % n
            out.write(memoryview(payload) if n % 3 == 0 else bytearray(payload) if n % 3 == 1 else payload,
                      peer.getsockname())
        out.write(b"bad port", ("127.0.0.1", 70000))  # that one fails, counted; the others go
        out.write(b"last", peer.getsockname())

    inbound = endpoint(write_many)
    sender = udp_socket()
    sender.sendto(b"go", inbound.sock.getsockname())
    inbound.doRead()
    assert [data for data, _ in drain(peer)] == [b"%d" % n for n in range(150)] + [b"last"]
    assert out.write_errors == 1
    close_all(peer, sender, inbound, out)


def test_a_write_of_something_not_bytes_is_a_logged_bug_and_reading_goes_on(backend):
    """A programming error in what is written must not stop the reactor reading our sockets."""
    reactor = Readers()
    peer = udp_socket()
    out = DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0), lambda data, addr: None, "out")

    def handler(data, addr):
        out.write(12345 if data == b"bug" else data, peer.getsockname())

    inbound = DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0), handler, "in")
    sender = udp_socket()
    sender.sendto(b"bug", inbound.sock.getsockname())
    for reader in list(reactor.readers):
        reader.doRead()
    sender.sendto(b"fine", inbound.sock.getsockname())
    for reader in list(reactor.readers):
        reader.doRead()
    assert [data for data, _ in drain(peer)] == [b"fine"]
    close_all(peer, sender, inbound, out)


def test_a_socket_closed_with_writes_queued_sends_nothing(backend):
    peer = udp_socket()
    out = endpoint(lambda data, addr: None)

    def write_then_close(data, addr):
        out.write(data, peer.getsockname())
        if data == b"close":
            out.close()

    inbound = endpoint(write_then_close)
    sender = udp_socket()
    source = out.sock.getsockname()
    sender.sendto(b"close", inbound.sock.getsockname())
    inbound.doRead()
    assert drain(peer) == ([(b"close", source)] if backend == "python" else [])
    close_all(peer, sender, inbound)


def test_an_exception_in_a_handler_loses_only_its_datagram(backend):
    got = []
    peer = udp_socket()
    out = endpoint(lambda data, addr: None)

    def handler(data, addr):
        if data == b"bad":
            raise ValueError("a bug in a handler")
        got.append(data)
        out.write(data, peer.getsockname())

    inbound = endpoint(handler)
    sender = udp_socket()
    for data in (b"a", b"bad", b"b"):
        sender.sendto(data, inbound.sock.getsockname())
    inbound.doRead()
    assert got == [b"a", b"b"]
    assert [data for data, _ in drain(peer)] == [b"a", b"b"]
    close_all(peer, sender, inbound, out)


def test_the_reactors_readers_read_every_ready_socket_and_send_what_they_wrote(backend):
    """As the reactor runs it: each back-end's readers (the sockets themselves, or the batched sockets' epoll set)
    deliver what waits on every socket; what the handlers wrote leaves once they are done."""
    reactor = Readers()
    peer = udp_socket()
    out = DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0), lambda data, addr: None, "out")
    inbound = [DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0),
                              lambda data, addr: out.write(data, peer.getsockname()), f"in {i}") for i in range(3)]
    assert len(reactor.readers) == (4 if backend == "python" else 1)
    sender = udp_socket()
    for i, sock in enumerate(inbound):
        for n in range(5):
            sender.sendto(b"%d-%d" % (i, n), sock.sock.getsockname())
    for reader in list(reactor.readers):
        reader.doRead()
    assert sorted(data for data, _ in drain(peer)) == sorted(b"%d-%d" % (i, n) for i in range(3) for n in range(5))
    inbound[0].close()  # no longer watched: what arrives for it stays unread
    sender.sendto(b"late", inbound[1].sock.getsockname())
    for reader in list(reactor.readers):
        reader.doRead()
    assert drain(peer) == [(b"late", out.sock.getsockname())]
    assert len(reactor.readers) == (3 if backend == "python" else 1)
    for sock in (peer, sender):
        sock.close()
    for endpoint in (*inbound[1:], out):
        endpoint.close()


def test_what_arrives_while_a_burst_is_handled_is_read_in_the_same_wake_up(backend):
    """Batched: after sending what a burst wrote, the epoll set is looked at again, so a datagram one of our sockets
    sent to another is handled before control goes back to the reactor (per datagram: at that socket's own turn)."""
    reactor = Readers()
    got = []
    second = DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0), lambda data, addr: got.append(data), "second")
    first = DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0),
                           lambda data, addr: first.write(data + b" relayed", second.sock.getsockname()), "first")
    sender = udp_socket()
    sender.sendto(b"ping", first.sock.getsockname())
    reader = first if backend == "python" else reactor.readers[0]
    reader.doRead()
    assert got == ([] if backend == "python" else [b"ping relayed"])
    sender.close()
    first.close()
    second.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_channel_data_is_relayed_both_ways_through_the_shell(backend, host):
    relay = LoopbackRelay(host)
    peer = udp_socket(host)
    clients = [relay.client(peer.getsockname()[:2], channel=0x4000 + i) for i in range(3)]
    for i, client in enumerate(clients):
        for n in range(30):
            client.sock.send(encode_channel_data(0x4000 + i, b"%d-%d" % (i, n)))
    relay.read_listener(90)
    at_peer = drain(peer)
    assert sorted(data for data, _ in at_peer) == sorted(b"%d-%d" % (i, n) for i in range(3) for n in range(30))
    assert {addr for _, addr in at_peer} == {tuple(client.relayed) for client in clients}
    for data, addr in at_peer:
        peer.sendto(b"back " + data, addr)
    relay.read_relays()
    for i, client in enumerate(clients):
        received = [parse_channel_data(data) for data, _ in drain(client.sock)]
        assert received == [(0x4000 + i, b"back %d-%d" % (i, n)) for n in range(30)]
    relay.close()
    peer.close()


def test_send_and_data_indications_are_relayed_through_the_shell(backend):
    relay = LoopbackRelay()
    peer = udp_socket()
    client = relay.client(peer.getsockname())
    send = Message(Method.SEND, MessageClass.INDICATION, os.urandom(12),
                   [(Attr.XOR_PEER_ADDRESS, peer.getsockname()), (Attr.DATA, b"hello")])
    client.sock.send(encode(send))
    relay.read_listener()
    assert drain(peer) == [(b"hello", tuple(client.relayed))]
    peer.sendto(b"world", tuple(client.relayed))
    relay.read_relays()
    [(data, _)] = drain(client.sock)
    indication = parse(data)
    assert (indication.method, indication.msg_class) == (Method.DATA, MessageClass.INDICATION)
    assert indication.get(Attr.DATA) == b"world"
    assert indication.get(Attr.XOR_PEER_ADDRESS) == peer.getsockname()
    relay.close()
    peer.close()


def test_channel_data_after_the_allocation_is_gone_is_dropped_and_counted(backend):
    relay = LoopbackRelay()
    peer = udp_socket()
    client = relay.client(peer.getsockname(), channel=0x4000)
    reply = relay.request(client.sock, Method.REFRESH, [(Attr.LIFETIME, 0)], client.nonce)
    assert reply.msg_class == MessageClass.SUCCESS
    assert relay.core.udp_allocations(relay.address) == {}
    client.sock.send(encode_channel_data(0x4000, b"late"))
    relay.read_listener()
    assert drain(peer) == []
    assert relay.core.stats["channel_data_dropped"] == 1
    relay.close()
    peer.close()


def test_relay_sockets_take_a_dual_stack_listeners_clients(backend):
    """On a `::` listener an IPv4 client arrives as ::ffff:a.b.c.d and is written back to in that form."""
    relay = LoopbackRelay("::")
    peer = udp_socket()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(("127.0.0.1", relay.address[1]))
    sock.setblocking(False)
    reply = relay.request(sock, Method.BINDING, [])
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) == sock.getsockname()
    sock.close()
    relay.close()
    peer.close()


@pytest.mark.parametrize(("setting", "logged"), [(None, "batched (recvmmsg/sendmmsg)"),
                                                 ("python", "per datagram (recvfrom/sendto)")])
def test_the_real_relay_runs_each_back_end_and_relays_channel_data_both_ways(tmp_path, monkeypatch, setting, logged):
    """twistd relay with workers = 2 (the worker processes inherit RPTURN_DATAGRAM_IO): the log names the back-end,
    and ChannelData goes to an echo peer and back."""
    if setting is None:
        monkeypatch.delenv("RPTURN_DATAGRAM_IO", raising=False)
    else:
        monkeypatch.setenv("RPTURN_DATAGRAM_IO", setting)
    relay = RelayProcess(tmp_path, workers=2).start()
    peer = EchoPeer()
    client = RawTurnClient((relay.host, relay.port))
    try:
        assert client.allocate().msg_class == MessageClass.SUCCESS
        bound = client.request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000), (Attr.XOR_PEER_ADDRESS,
                                                                                     peer.address)])
        assert bound.msg_class == MessageClass.SUCCESS
        for n in range(50):
            client.send_bytes(encode_channel_data(0x4000, b"media %d" % n))
        echoed = sorted(parse_channel_data(client.recv_frame()) for _ in range(50))
        assert echoed == sorted((0x4000, b"media %d" % n) for n in range(50))
        deadline = time.monotonic() + 10  # the relay answers once one worker is up; the other may still start
        while relay.log().count(f"datagram I/O {logged}") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert relay.log().count(f"datagram I/O {logged}") == 2  # one line per worker's listener
    finally:
        client.close()
        peer.close()
        relay.stop()


def epoll_reactor():
    """Twisted's own epoll reactor, not installed: the tests below run one pass of its loop (`doIteration`)."""
    from twisted.internet.epollreactor import EPollReactor

    return EPollReactor()


def close_reactor(reactor) -> None:
    reactor.removeAll()
    reactor._poller.close()


def test_under_the_epoll_reactor_the_relays_sockets_are_read_without_the_log_context(backend, monkeypatch):
    """With appliance.lean_dispatch (the relay service installs it), one pass of Twisted's epoll loop reads the
    relay's sockets (the batched sockets' one event, or each socket's own) and sends what they wrote, and never
    enters the per-event legacy log context: a wake-up is what workers = 2 pays more often."""
    from twisted.python import log

    from appliance import lean_dispatch

    reactor = epoll_reactor()
    assert lean_dispatch.install(reactor)
    contexts = []
    monkeypatch.setattr(log, "callWithLogger", lambda *args, **kwargs: contexts.append(args))
    peer = udp_socket()
    relayed = DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0),
                             lambda data, addr: relayed.write(data + b" relayed", peer.getsockname()), "relay")
    sender = udp_socket()
    for n in range(3):
        sender.sendto(b"%d" % n, relayed.sock.getsockname())
    deadline = time.monotonic() + 5
    got: list = []
    while len(got) < 3 and time.monotonic() < deadline:
        reactor.doIteration(0.1)
        got += drain(peer)
    assert got == [(b"%d relayed" % n, relayed.sock.getsockname()) for n in range(3)]
    assert contexts == []
    close_all(relayed, sender, peer)
    close_reactor(reactor)


def test_the_relay_service_installs_the_lean_dispatch_on_the_epoll_reactor(tmp_path):
    from relay.config import relay_config_from_table
    from relay.service import RelayService
    from tests.support.net import free_port

    reactor = epoll_reactor()
    config = relay_config_from_table({"listen": [f"127.0.0.1:{free_port()}"], "realm": "rpturn.test",
                                      "relay_ip": "127.0.0.1", "min_port": 40000, "max_port": 40099,
                                      "allowed_peers": ["127.0.0.0/8"], "users": {"alice": "secret"}})
    service = RelayService(config, reactor, nonce_secret=os.urandom(32))
    assert not getattr(reactor, "lean_dispatch", False)
    service.startService()
    try:
        assert reactor.lean_dispatch is True
    finally:
        service.stopService()
        close_reactor(reactor)


def test_the_multiplexer_counts_datagrams_per_reactor_event_and_logs_them_when_it_goes(monkeypatch):
    """Batched: events, passes that found a socket ready and datagrams read are counted (no per-datagram work) and
    logged in one line when the last socket closes: datagrams per event is what a wake-up's cost is spread over."""
    from twisted.logger import Logger, formatEvent

    monkeypatch.setattr(datagram, "_backend", datagram.backend())  # restored after the test
    datagram.use_backend("batched")
    events: list = []
    monkeypatch.setattr(datagram, "log", Logger(observer=events.append))
    reactor = Readers()
    sink = DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0), lambda data, addr: None, "sink")
    multiplexer = sink.multiplexer
    sender = udp_socket()
    for n in range(5):
        sender.sendto(b"%d" % n, sink.sock.getsockname())
    time.sleep(0.05)
    multiplexer.doRead()  # one event: a pass reads all five, a second finds nothing
    sender.sendto(b"more", sink.sock.getsockname())
    time.sleep(0.05)
    multiplexer.doRead()
    assert (multiplexer.events, multiplexer.passes, multiplexer.datagrams) == (2, 2, 6)
    assert events == []
    close_all(sink, sender)
    assert [formatEvent(event) for event in events] == [
        "relay UDP sockets: 6 datagrams read in 2 reactor events (3.0 per event) and 2 passes"]
