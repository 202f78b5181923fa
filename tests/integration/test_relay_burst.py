"""What goes wrong inside a batched burst (relay._mmsg read/handle/flush, relay/_mmsg_relay.c) is logged with the
socket's name and loses only what it must: a handler's exception its datagram, a forward's the rest of its burst,
a write of something not bytes its socket's queue (counted in write_errors). Reading goes on."""

from __future__ import annotations

import contextlib

from twisted.logger import globalLogPublisher

from relay import datagram
from relay.datagram import DatagramSocket
from relay.shell import open_udp_socket
from tests.support.relay_loopback import Readers, drain, udp_socket


@contextlib.contextmanager
def batched_logging():
    """The batched back-end (it must be built, as CI builds it) and the failures logged meanwhile."""
    before = datagram.backend()
    datagram.use_backend("batched")
    failures: list[dict] = []

    def observe(event: dict) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield failures
    finally:
        globalLogPublisher.removeObserver(observe)
        datagram.use_backend(before)


def test_a_handlers_exception_is_logged_with_its_source_and_loses_only_its_datagram():
    with batched_logging() as failures:
        got = []

        def handler(data, addr):
            if data == b"bad":
                raise ValueError("a bug in a handler")
            got.append(data)

        inbound = DatagramSocket(Readers(), open_udp_socket("127.0.0.1", 0), handler, "in")
        sender = udp_socket()
        for data in (b"a", b"bad", b"b"):
            sender.sendto(data, inbound.sock.getsockname())
        inbound.doRead()
        assert got == [b"a", b"b"]
        assert [(event["log_format"], event["addr"], event["name"], event["log_failure"].type)
                for event in failures] == [
            ("handling a datagram from {addr} on {name}", sender.getsockname(), "in", ValueError)]
        inbound.close()
        sender.close()


def test_a_forwards_exception_drops_the_rest_of_its_burst_and_the_next_burst_is_read():
    with batched_logging() as failures:
        got = []
        inbound = DatagramSocket(Readers(), open_udp_socket("127.0.0.1", 0), lambda d, a: got.append(d), "in")
        calls = []

        def forward(datagrams, start):
            calls.append(start)
            if len(calls) == 1:
                raise MemoryError("as if")
            return start  # nothing relayed: every datagram to the handler

        inbound.forward = forward
        sender = udp_socket()
        for data in (b"1", b"2"):
            sender.sendto(data, inbound.sock.getsockname())
        inbound.doRead()
        assert got == []
        assert [(event["log_format"], event["name"]) for event in failures] == [("relaying datagrams on {name}", "in")]
        sender.sendto(b"3", inbound.sock.getsockname())
        inbound.doRead()
        assert got == [b"3"]
        inbound.close()
        sender.close()


def test_a_write_of_something_not_bytes_counts_its_queue_and_is_logged():
    with batched_logging() as failures:
        peer = udp_socket()
        reactor = Readers()
        out = DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0), lambda data, addr: None, "out")

        def handler(data, addr):
            out.write(data, peer.getsockname())
            out.write(12345, peer.getsockname())  # type: ignore[arg-type]

        inbound = DatagramSocket(reactor, open_udp_socket("127.0.0.1", 0), handler, "in")
        sender = udp_socket()
        sender.sendto(b"lost with the bug", inbound.sock.getsockname())
        inbound.doRead()
        assert drain(peer) == []
        assert out.write_errors == 2
        assert [(event["log_format"], event["count"], event["name"]) for event in failures] == [
            ("sending {count} datagrams on {name}", 2, "out")]
        for thing in (peer, sender, inbound, out):
            thing.close()
