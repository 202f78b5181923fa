"""TLS as a Twisted transport around the stdlib's `ssl.SSLObject` and `ssl.MemoryBIO`.

Why not Twisted's `TLSMemoryBIOProtocol` over pyOpenSSL: through cffi every `recv`/`bio_read` allocates a 32 KiB
buffer and every read ends in an exception, and an idle connection holds about twice the OpenSSL memory. Here the
read loop stops on the incoming BIO being empty (no exception per read) and each write goes straight into the TCP
transport, so the TCP transport's own back-pressure reaches the application's producer unchanged.

On Twisted's TCP transports the connection reads the socket itself (`read_socket` as the transport's `doRead`):
the reactor's read goes straight to the decryption, one call where `doRead` -> `_dataReceived` -> `dataReceived`
were three, with the same answers to the reactor at the end of the stream or on a socket error.

`TLSConnection` is the protocol on the TCP transport and the transport of the wrapped protocol (`write`,
`loseConnection` with close_notify, `abortConnection`, producers, `pauseProducing`/`resumeProducing` of reading).
Writes made before the handshake finished are held and the registered producer is paused until then.
`TLSFactory` wraps a server or client factory; its `creator` gives each connection an `SSLObject` (`wrap`).

Shared by both services (hence here, in the appliance layer): the proxy's client and node connections, and the
relay's TURN over TLS (`tls_listen`, relay.tls).
"""

from __future__ import annotations

import contextlib
import ssl
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import error, main, tcp
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ITransport
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

_READ = 16384  # one TLS record's plaintext at most: SSL_read never returns more
_RECV = 65536  # bytes read from the socket at once (Twisted's FileDescriptor.bufferSize)


def _send_now(transport: Any, data: bytes) -> None:
    """Write `data` to a TCP transport, straight to the socket when nothing is queued before it.

    Twisted's `write` only queues: the bytes go out on the next reactor turn, after an epoll_ctl to watch for
    writability, an epoll wait and another epoll_ctl to stop watching — three syscalls and a turn of the loop per
    response. When the transport's buffers are empty (the usual case: one write per read), a `send` now is what the
    next turn would have done; whatever the kernel does not take is queued as before, so ordering, back-pressure and
    producers work unchanged."""
    if (type(transport) is tcp.Server or type(transport) is tcp.Client) and not transport._tempDataBuffer \
            and transport.offset == len(transport.dataBuffer) and transport.connected \
            and not transport.disconnecting and not transport._writeDisconnected:
        try:
            sent = transport.socket.send(data)
        except OSError:  # would block, or the connection is gone: Twisted's write finds out as usual
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class SSLObjectCreator(TypingProtocol):
    def wrap(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> ssl.SSLObject: ...


@implementer(ITransport, IPushProducer)
class TLSConnection(Protocol):
    """One TLS connection: TCP bytes in and out through memory BIOs, plaintext to and from `wrapped`."""

    def __init__(self, creator: SSLObjectCreator, wrapped: Protocol) -> None:
        self.creator = creator
        self.wrapped = wrapped
        self.handshake_listener = IHandshakeListener.providedBy(wrapped)
        self.sslobj: ssl.SSLObject | None = None
        self.tls: Any = None  # what reads and writes records: the C object under `sslobj` (see connectionMade)
        self.incoming: ssl.MemoryBIO | None = None
        self.outgoing: ssl.MemoryBIO | None = None
        self.handshaken = False
        self.held: list[bytes] = []  # application writes made before the handshake finished
        self.held_producer = False  # we paused the application's producer for `held`
        self.disconnecting = False
        self.tls_done = False  # no more TLS bytes in either direction (close_notify, error or abort)
        self.reason: Failure | None = None
        self.connected = False
        self.tickets_expected = False  # client side: the peer's TLS 1.3 session tickets may still arrive
        self.recv: Any = None  # the TCP socket's recv when this connection reads it itself (see connectionMade)

    # -- the TCP side ----------------------------------------------------------------------------------------
    def connectionMade(self) -> None:
        transport = self.transport
        if type(transport) is tcp.Server or type(transport) is tcp.Client:
            # The reactor calls the transport's doRead for each read: `read_socket` in its place reads the socket
            # and decrypts in one call, where tcp.Connection's doRead -> _dataReceived -> dataReceived took three.
            self.recv = transport.socket.recv
            transport.doRead = self.read_socket
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sslobj = self.creator.wrap(self.incoming, self.outgoing)
        # ssl.SSLObject's read, write and pending are one-line Python wrappers around the same methods of the C
        # object it holds (same arguments, same exceptions): per request that is 6 Python calls saved.
        self.tls = getattr(self.sslobj, "_sslobj", self.sslobj)
        self.connected = True
        self.tickets_expected = not self.sslobj.server_side
        self.wrapped.makeConnection(self)
        if not self.tls_done and not self.sslobj.server_side:
            self._handshake()

    def _send(self) -> None:
        """Hand whatever TLS produced (records, alerts, tickets) to the TCP transport."""
        out = self.outgoing
        if out is not None and out.pending:
            _send_now(self.transport, out.read())

    def _handshake(self) -> None:
        try:
            self.sslobj.do_handshake()  # type: ignore[union-attr]
        except ssl.SSLWantReadError:
            self._send()
            return
        except (ssl.SSLError, ssl.CertificateError):
            self._tls_failed(Failure())
            return
        self.handshaken = True
        self._send()
        if self.handshake_listener:
            self.wrapped.handshakeCompleted()  # type: ignore[attr-defined]
        if self.held:
            held, self.held = self.held, []
            self._encrypt(b"".join(held))
            if self.disconnecting and not self.tls_done:
                self._shutdown()
        if self.held_producer:
            self.held_producer = False
            producer = self.transport.producer
            if producer is not None and not self.transport.producerPaused:
                producer.resumeProducing()

    def read_socket(self) -> Any:
        """`tcp.Connection.doRead` with its `_dataReceived` (same answers: None, CONNECTION_LOST on a socket error,
        CONNECTION_DONE at the end of the stream), the bytes going straight to `dataReceived`."""
        try:
            data = self.recv(_RECV)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.dataReceived(data)
        return None

    def dataReceived(self, data: bytes) -> None:
        if self.tls_done:
            return
        incoming, tls = self.incoming, self.tls
        incoming.write(data)  # type: ignore[union-attr]
        if not self.handshaken:
            self._handshake()
            if not self.handshaken or self.tls_done:
                return
        pieces = []
        # Read while the BIO or OpenSSL holds bytes: a complete record never ends in SSLWantReadError, only a
        # partial one at the end of a TCP read does.
        while incoming.pending or tls.pending():  # type: ignore[union-attr]
            try:
                piece = tls.read(_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer's close_notify after ours: nothing more to say
                piece = b""
            except ssl.SSLError:
                self._deliver(pieces)
                self._tls_failed(Failure())
                return
            if not piece:
                # The peer's close_notify (the stdlib returns it as b"" while ours is unsent): it says nothing more,
                # so answer it and close. Waiting for its FIN instead would hold the connection as long as a
                # client that half-closes TLS keeps TCP open. A clean end whether or not our answer still reaches
                # a peer that has already closed its socket.
                self._deliver(pieces)
                if self.reason is None:
                    self.reason = Failure(error.ConnectionDone())
                self._shutdown()
                return
            pieces.append(piece)
        if pieces:  # (the wrapped protocol may end the connection: tls_done is looked at after)
            self.wrapped.dataReceived(pieces[0] if len(pieces) == 1 else b"".join(pieces))
            if self.tls_done:
                return
        if self.tickets_expected:
            # OpenSSL 3.0 sets up a 16 KiB write buffer to read a TLS 1.3 NewSessionTicket and frees it only after
            # the next write: a node's tickets, arriving after our request, would keep it for the life of an
            # /events stream. A zero-length write frees it now and sends nothing. Tickets come before the first
            # response bytes, so this stops there.
            if pieces:
                self.tickets_expected = False
            try:
                tls.write(b"")
            except ssl.SSLError:
                self._tls_failed(Failure())
                return
        if self.outgoing.pending:  # type: ignore[union-attr]
            self._send()  # TLS 1.3 post-handshake messages (key update answers)

    def _deliver(self, pieces: list[bytes]) -> None:
        if pieces and not self.tls_done:
            self.wrapped.dataReceived(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.tls_done = True
        self.connected = False
        reason, self.reason = self.reason or reason, None
        self.sslobj = self.tls = self.incoming = self.outgoing = None
        self.held = []
        self.wrapped.connectionLost(reason)

    # -- endings ---------------------------------------------------------------------------------------------
    def _tls_failed(self, failure: Failure) -> None:
        """Handshake or record error: send OpenSSL's alert, then close the TCP connection."""
        if self.reason is None:
            self.reason = failure
        self.tls_done = True
        self.disconnecting = True
        self._send()
        self.transport.loseConnection()

    def _shutdown(self) -> None:
        """Send our close_notify (or answer the peer's) and close the TCP connection once it is written."""
        self.tls_done = True
        self.disconnecting = True
        with contextlib.suppress(ssl.SSLError):  # SSLWantReadError: the peer's close_notify is not awaited
            self.sslobj.unwrap()  # type: ignore[union-attr]
        self._send()
        self.transport.loseConnection()

    # -- ITransport for the wrapped protocol -----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.tls_done or (self.disconnecting and self.transport.producer is None):
            return
        if not self.handshaken:
            self.held.append(data)
            producer = self.transport.producer
            if producer is not None and not self.held_producer:
                self.held_producer = True
                producer.pauseProducing()
            return
        try:  # (_encrypt and _send_now, inlined: two calls less per response)
            self.tls.write(data)
        except ssl.SSLError:
            self._tls_failed(Failure())
            return
        data = self.outgoing.read()  # type: ignore[union-attr]
        t = self.transport
        # (`recv` is set on Twisted's own TCP transports, those _send_now writes to directly: see there)
        if self.recv is not None and not t._tempDataBuffer and t.offset == len(t.dataBuffer) and t.connected \
                and not t.disconnecting and not t._writeDisconnected:
            try:
                sent = t.socket.send(data)
            except OSError:  # would block, or the connection is gone: Twisted's write finds out as usual
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        t.write(data)

    def _encrypt(self, data: bytes) -> None:
        try:
            self.tls.write(data)
        except ssl.SSLError:
            self._tls_failed(Failure())
            return
        _send_now(self.transport, self.outgoing.read())  # type: ignore[union-attr]

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """close_notify after what was written; the application writes nothing more, so its producer goes."""
        if self.disconnecting or not self.connected:
            return
        self.disconnecting = True
        if self.transport.producer is not None:
            self.transport.unregisterProducer()
        if not self.handshaken:
            if not self.held:  # nothing to say: a close_notify mid-handshake would wait for the peer forever
                self.abortConnection()
            return  # held writes go out, then close_notify, when the handshake finishes
        self._shutdown()

    def abortConnection(self) -> None:
        self.tls_done = True
        self.disconnecting = True
        self.held = []
        self.transport.abortConnection()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def getHandle(self) -> Any:
        return self.transport.getHandle()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.transport.setTcpNoDelay(enabled)

    # -- producers: writes go straight to TCP, so its back-pressure is the application producer's -------------
    @property
    def producer(self) -> Any:
        return self.transport.producer if self.transport is not None else None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.tls_done:
            producer.stopProducing()
            return
        self.transport.registerProducer(producer, streaming)
        if not self.handshaken and self.held and streaming:
            self.held_producer = True
            producer.pauseProducing()

    def unregisterProducer(self) -> None:
        self.held_producer = False
        if self.transport is not None and self.transport.producer is not None:
            self.transport.unregisterProducer()

    # IPushProducer: the application pausing its own reading
    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()


class TLSFactory(ClientFactory):
    """Wraps the protocols of `wrapped` (a server or client factory) in TLS from `creator`."""

    noisy = False

    def __init__(self, creator: SSLObjectCreator, wrapped: Any) -> None:
        self.creator = creator
        self.wrapped = wrapped

    def buildProtocol(self, addr: Any) -> TLSConnection | None:
        p = self.wrapped.buildProtocol(addr)
        if p is None:
            return None
        tls = TLSConnection(self.creator, p)
        tls.factory = self
        return tls

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def startedConnecting(self, connector: Any) -> None:
        self.wrapped.startedConnecting(connector)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.wrapped.clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.wrapped.clientConnectionLost(connector, reason)
