"""`appliance.tls_transport.TLSConnection` reading records, in memory: one record per TCP read (the usual case, read
without a list), several records in one read, a record split over reads, and the data before a close_notify in the
same read. The peer is a plain `ssl.SSLObject`; the TCP transport is Twisted's `StringTransport`."""

import contextlib
import ssl

import pytest
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport

from appliance.certs import ServerTLS
from appliance.tls_transport import TLSConnection
from tests.support.revproxy_process import Pki


class Reader(Protocol):
    def __init__(self) -> None:
        self.reads: list[bytes] = []
        self.lost = None

    def dataReceived(self, data: bytes) -> None:
        self.reads.append(data)

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


class Peer:
    """The browser's side: an SSLObject whose records are handed over by hand."""

    def __init__(self, root: str) -> None:
        ctx = ssl.create_default_context(cafile=root)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def records(self, data: bytes) -> bytes:
        self.tls.write(data)
        return self.outgoing.read()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def connected(pki: Pki) -> tuple[Peer, TLSConnection, Reader, StringTransport]:
    peer, reader, tcp = Peer(str(pki.root)), Reader(), StringTransport()
    conn = TLSConnection(ServerTLS(str(pki.bundle)), reader)
    conn.makeConnection(tcp)
    for _ in range(10):
        try:
            peer.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        hello = peer.outgoing.read()
        if hello:
            conn.dataReceived(hello)
        back = tcp.value()
        tcp.clear()
        if back:
            peer.incoming.write(back)
        if done and conn.handshaken and not hello and not back:
            return peer, conn, reader, tcp
    raise AssertionError("no handshake")


def test_one_record_per_read_is_delivered_as_it_came(pki):
    peer, conn, reader, _ = connected(pki)
    conn.dataReceived(peer.records(b"GET / HTTP/1.1\r\n\r\n"))
    conn.dataReceived(peer.records(b"second"))
    assert reader.reads == [b"GET / HTTP/1.1\r\n\r\n", b"second"]


def test_several_records_in_one_read_are_delivered_together_in_order(pki):
    peer, conn, reader, _ = connected(pki)
    conn.dataReceived(peer.records(b"one") + peer.records(b"two") + peer.records(b"x" * 20000))
    assert reader.reads == [b"onetwo" + b"x" * 20000]


def test_a_record_split_over_reads_is_delivered_once_whole(pki):
    peer, conn, reader, _ = connected(pki)
    first, second = peer.records(b"split record"), peer.records(b"next")
    conn.dataReceived(first[:7])
    assert reader.reads == []
    conn.dataReceived(first[7:] + second[:3])
    conn.dataReceived(second[3:])
    assert reader.reads == [b"split record", b"next"]


@pytest.mark.parametrize("records", [1, 3])
def test_the_data_before_a_close_notify_in_the_same_read_is_delivered(pki, records):
    peer, conn, reader, _ = connected(pki)
    data = b"".join(peer.records(b"r%d" % i) for i in range(records))
    with contextlib.suppress(ssl.SSLWantReadError):  # (our close_notify is not there yet)
        peer.tls.unwrap()
    conn.dataReceived(data + peer.outgoing.read())
    assert b"".join(reader.reads) == b"".join(b"r%d" % i for i in range(records))
