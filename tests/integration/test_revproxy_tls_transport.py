"""`appliance.tls_transport`: the TLS transport over stdlib `ssl.SSLObject`, on loopback with real sockets.

Each test drives its own reactor instance by hand (`spin`), so nothing touches the global reactor; a blocking
stdlib `ssl` client in a thread stands in for a browser where the wire behaviour (close_notify) is what is checked.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory
from twisted.internet.selectreactor import SelectReactor
from zope.interface import implementer

from appliance import certs
from appliance.tls_transport import TLSFactory
from revproxy import node_tls
from tests.support.revproxy_process import Pki


def spin(reactor: Any, done: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < end, "timed out"
        reactor.iterate(0.005)


@implementer(IHandshakeListener)
class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.made = self.handshaken = False
        self.lost: Any = None

    def connectionMade(self) -> None:
        self.made = True

    def handshakeCompleted(self) -> None:
        self.handshaken = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


class One(ServerFactory, ClientFactory):
    """Builds one given protocol (or records each new one)."""

    def __init__(self, make: Callable[[], Protocol] = Recorder) -> None:
        self.make = make
        self.built: list[Any] = []
        self.failed: Any = None

    def buildProtocol(self, addr: Any) -> Protocol:
        p = self.make()
        self.built.append(p)
        return p

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.failed = reason


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


@pytest.fixture
def reactor():
    r = SelectReactor()
    yield r
    for selectable in r.removeAll():  # listening ports and connections left open: close their sockets
        with contextlib.suppress(OSError, AttributeError):
            selectable.socket.close()


def serve(reactor: Any, pki: Pki, make: Callable[[], Protocol] = Recorder) -> tuple[One, certs.ServerTLS, int]:
    server_tls = certs.ServerTLS(str(pki.bundle))
    factory = One(make)
    port = reactor.listenTCP(0, TLSFactory(server_tls, factory), interface="127.0.0.1")
    return factory, server_tls, port.getHost().port


def connect(reactor: Any, pki: Pki, port: int, ca: str | None = None) -> One:
    factory = One()
    creator = node_tls.client_creator("127.0.0.1", "localhost", True, ca or str(pki.root))
    reactor.connectTCP("127.0.0.1", port, TLSFactory(creator, factory))
    return factory


def blocking_client(pki: Pki, port: int, send: bytes, result: dict[str, Any]) -> threading.Thread:
    """A stdlib client that reports how the stream ended: b"" after close_notify, SSLEOFError without one."""
    def run() -> None:
        ctx = pki.client_context()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as s:
            s.sendall(send)
            got = bytearray()
            try:
                while chunk := s.recv(65536):
                    got += chunk
                result["end"] = "close_notify"
            except (ssl.SSLEOFError, ConnectionResetError) as e:
                result["end"] = type(e).__name__
            result["data"] = bytes(got)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_handshake_verifies_the_chain_with_only_the_root_and_bytes_flow_both_ways(reactor, pki):
    server, _, port = serve(reactor, pki)
    client = connect(reactor, pki, port)
    spin(reactor, lambda: bool(client.built) and client.built[0].handshaken)
    c = client.built[0]
    assert c.transport.sslobj.version() in ("TLSv1.2", "TLSv1.3")
    c.transport.write(b"ping")
    spin(reactor, lambda: bool(server.built) and server.built[0].data == b"ping")
    server.built[0].transport.write(b"pong")
    spin(reactor, lambda: c.data == b"pong")


def test_writes_made_before_the_handshake_are_sent_once_it_completes(reactor, pki):
    class Eager(Recorder):
        def connectionMade(self) -> None:
            self.transport.write(b"early ")
            self.transport.writeSequence([b"bytes"])

    server, _, port = serve(reactor, pki)
    client = One(Eager)
    reactor.connectTCP("127.0.0.1", port, TLSFactory(node_tls.client_creator("127.0.0.1", "localhost", True,
                                                                           str(pki.root)), client))
    spin(reactor, lambda: bool(server.built) and server.built[0].data == b"early bytes")


def test_a_certificate_the_ca_does_not_vouch_for_fails_the_handshake(reactor, pki, tmp_path):
    (tmp_path / "other").mkdir()
    other = Pki(tmp_path / "other")
    _, _, port = serve(reactor, pki)
    client = connect(reactor, pki, port, ca=str(other.root))
    spin(reactor, lambda: bool(client.built) and client.built[0].lost is not None)
    assert not client.built[0].handshaken
    assert client.built[0].lost.check(ssl.SSLCertVerificationError)


def test_a_big_write_pauses_the_producer_until_the_peer_reads_and_arrives_intact(reactor, pki):
    @implementer(IHandshakeListener)
    class Producer(Recorder):
        pauses = resumes = 0

        def pauseProducing(self) -> None:
            self.pauses += 1

        def resumeProducing(self) -> None:
            self.resumes += 1

        def stopProducing(self) -> None:
            pass

    payload = bytes(range(256)) * (32 * 1024)  # 8 MiB
    server, _, port = serve(reactor, pki, Producer)
    client = connect(reactor, pki, port)
    spin(reactor, lambda: bool(client.built) and client.built[0].handshaken and bool(server.built))
    c, s = client.built[0], server.built[0]
    c.transport.pauseProducing()  # the client stops reading: the server's TCP buffer fills
    s.transport.registerProducer(s, True)
    for i in range(0, len(payload), 65536):
        s.transport.write(payload[i:i + 65536])
    assert s.pauses >= 1
    c.transport.resumeProducing()
    spin(reactor, lambda: len(c.data) == len(payload), timeout=20)
    assert s.resumes >= 1
    assert bytes(c.data) == payload


def test_pausing_reading_stops_delivery_until_resumed(reactor, pki):
    server, _, port = serve(reactor, pki)
    client = connect(reactor, pki, port)
    spin(reactor, lambda: bool(client.built) and client.built[0].handshaken and bool(server.built))
    c, s = client.built[0], server.built[0]
    s.transport.pauseProducing()
    c.transport.write(b"held")
    deadline = time.monotonic() + 0.3
    spin(reactor, lambda: time.monotonic() > deadline)
    assert s.data == b""
    s.transport.resumeProducing()
    spin(reactor, lambda: s.data == b"held")


def test_lose_connection_sends_close_notify_after_the_data(reactor, pki):
    class Answer(Recorder):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(b"bye" * 10000)
            self.transport.loseConnection()

    _, _, port = serve(reactor, pki, Answer)
    result: dict[str, Any] = {}
    t = blocking_client(pki, port, b"hello", result)
    spin(reactor, lambda: not t.is_alive())
    assert result == {"end": "close_notify", "data": b"bye" * 10000}


def test_abort_connection_ends_without_close_notify(reactor, pki):
    class Abort(Recorder):
        def dataReceived(self, data: bytes) -> None:
            self.transport.abortConnection()

    server, _, port = serve(reactor, pki, Abort)
    result: dict[str, Any] = {}
    t = blocking_client(pki, port, b"hello", result)
    spin(reactor, lambda: not t.is_alive() and server.built[0].lost is not None)
    assert result["end"] in ("SSLEOFError", "ConnectionResetError")


def test_the_peers_close_notify_is_answered_and_ends_the_connection(reactor, pki):
    server, _, port = serve(reactor, pki)
    client = connect(reactor, pki, port)
    spin(reactor, lambda: bool(client.built) and client.built[0].handshaken and bool(server.built))
    client.built[0].transport.loseConnection()
    spin(reactor, lambda: server.built[0].lost is not None and client.built[0].lost is not None)
    # A clean TLS close on both ends, not an error or an abort.
    assert server.built[0].lost.check(error.ConnectionDone), server.built[0].lost
    assert client.built[0].lost.check(error.ConnectionDone), client.built[0].lost


def test_a_close_notify_from_a_peer_that_keeps_tcp_open_is_answered_at_once(reactor, pki):
    """A peer that sends close_notify and waits for ours (TCP still open, as `unwrap` does) gets it and the FIN:
    without the answer the connection would stay until the peer gave up or a timeout closed it."""
    server, _, port = serve(reactor, pki)
    result: dict[str, Any] = {}

    def run() -> None:
        ctx = pki.client_context()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(b"last words")
            try:
                plain = s.unwrap()  # sends our close_notify, then waits for the server's
            except (OSError, ssl.SSLError) as e:
                result["end"] = type(e).__name__
                return
            result["end"] = "answered"
            result["fin"] = plain.recv(1) == b""  # and then the server's FIN on the bare TCP stream

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    spin(reactor, lambda: not thread.is_alive())
    spin(reactor, lambda: bool(server.built) and server.built[0].lost is not None)
    assert result == {"end": "answered", "fin": True}
    assert bytes(server.built[0].data) == b"last words"
    assert server.built[0].lost.check(error.ConnectionDone), server.built[0].lost


def test_reload_gives_new_connections_the_new_certificate_and_keeps_open_ones(reactor, pki, tmp_path):
    server, server_tls, port = serve(reactor, pki)
    first = connect(reactor, pki, port)
    spin(reactor, lambda: bool(first.built) and first.built[0].handshaken and len(server.built) == 1)
    old_cert = first.built[0].transport.sslobj.getpeercert(binary_form=True)
    (tmp_path / "new").mkdir()
    new = Pki(tmp_path / "new")
    server_tls.reload(str(new.bundle))
    second = connect(reactor, new, port)
    spin(reactor, lambda: bool(second.built) and second.built[0].handshaken)
    assert second.built[0].transport.sslobj.getpeercert(binary_form=True) != old_cert
    first.built[0].transport.write(b"still here")
    spin(reactor, lambda: server.built[0].data == b"still here")


def _malloc_in_use() -> int:
    """Bytes the C allocator has handed out (OpenSSL's buffers among them), not what the OS shows as RSS."""
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def _bytes_per_open_client(reactor: Any, pki: Pki, tickets: int, n: int = 40) -> float:
    """C memory per connection pair held open after one request and answer, the node sending `tickets` TLS 1.3
    session tickets (they arrive after the request is written, like a node's)."""
    class Answer(Recorder):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(b"answer")

    _, server_tls, port = serve(reactor, pki, Answer)
    server_tls.context.num_tickets = tickets
    client = One()
    creator = node_tls.client_creator("127.0.0.1", "localhost", True, str(pki.root))
    before = _malloc_in_use()
    for _ in range(n):
        reactor.connectTCP("127.0.0.1", port, TLSFactory(creator, client))
    spin(reactor, lambda: len(client.built) == n and all(c.handshaken for c in client.built))
    for c in client.built:
        c.transport.write(b"request")
    spin(reactor, lambda: all(c.data == b"answer" for c in client.built))
    assert all(c.transport.sslobj.version() == "TLSv1.3" for c in client.built)
    per_pair = (_malloc_in_use() - before) / n
    for c in client.built:
        c.transport.abortConnection()
    spin(reactor, lambda: all(c.lost is not None for c in client.built))
    return per_pair


def test_the_nodes_session_tickets_leave_no_16k_buffer_behind_on_an_open_connection(reactor, pki):
    without = _bytes_per_open_client(reactor, pki, tickets=0)
    with_tickets = _bytes_per_open_client(reactor, pki, tickets=2)
    assert with_tickets - without < 4096, (with_tickets, without)


@pytest.mark.parametrize("ending", ["fin", "rst"])
def test_the_connection_reads_its_socket_itself_and_ends_as_twisteds_read_would(reactor, pki, ending):
    """The TCP transport's doRead is the TLS connection's own read (one call per read); a TCP end without
    close_notify still ends the connection: ConnectionDone on a FIN, ConnectionLost on a reset."""
    server, _, port = serve(reactor, pki)
    ctx = pki.client_context()
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost",
                        do_handshake_on_connect=False)
    s.setblocking(False)

    def handshaken() -> bool:
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
            s.do_handshake()
            return bool(server.built) and server.built[0].handshaken
        return False

    spin(reactor, handshaken)
    tls = server.built[0].transport
    assert tls.transport.doRead == tls.read_socket
    s.setblocking(True)
    s.sendall(b"hello")
    spin(reactor, lambda: server.built[0].data == b"hello")
    if ending == "rst":  # (closing with a zero linger time sends a reset)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    else:  # (the socket's own shutdown: no close_notify)
        s.shutdown(socket.SHUT_WR)
    spin(reactor, lambda: server.built[0].lost is not None)
    expected = error.ConnectionDone if ending == "fin" else error.ConnectionLost
    assert server.built[0].lost.check(expected), server.built[0].lost
    s.close()
