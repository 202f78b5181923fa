"""The relay's UDP sockets: a non-blocking socket watched by the reactor, read and written in batches.

Used for the client listeners and for every relay socket instead of Twisted's udp.Port: that one checks the address
string of every datagram it writes and logs four lines per socket opened and closed, which at thousands of
allocations and packets is work and noise we do not want.

Two back-ends, the same behaviour:
- "batched" (Linux, with the C extension `relay._mmsg` built by `pip install`): one recvmmsg(2) reads up to
  READ_BURST datagrams; what their handlers write, to any of our sockets, is queued and sent when the burst is
  handled, one sendmmsg(2) per socket. A profile of the per-packet path (benchmarks/relay_datagram_bench.py, 10
  allocations, 100 B ChannelData) had two thirds of the relay's CPU in recvfrom and sendto, one system call per
  datagram each way; batched, it is one per burst. A write made outside a read (a TCP client's ChannelData, a
  timer) is sent at once. The sockets are not watched by the reactor one by one but through one epoll set of
  their own (`Multiplexer`, itself one reader of the reactor): one wake-up reads every socket that is ready and
  sends what they all wrote together (the peers' answers from several relay sockets leave the listener in one
  sendmmsg), and the reactor's per-descriptor dispatch (a logging context per event) is paid once. In a
  sendmmsg, consecutive datagrams of one size to one address go as one UDP GSO message (relay/_mmsg.c).
  On top, the steady state of relaying is done in C on the same Python objects (`_mmsg.forward_clients` and
  `forward_peers`, wired by relay.shell through `DatagramSocket.forward`): a client's ChannelData to a permitted
  peer and a permitted peer's datagram to a client with a channel are queued and counted without a Python call;
  every other datagram goes to the handler, in order. A burst's read and hand-off and the batch's flush are C
  too (`_mmsg.read`, `handle`, `flush`). A profile of a worker relaying ChannelData (10 allocations, 100 B, 20 k
  packets/s, ~12 µs of CPU per packet) had 77 % of it in the kernel (sendmmsg two thirds: the loopback delivery
  and the receivers' wake-ups run in the sender's system call; recvmmsg a tenth) and the rest in the interpreter
  on this path and per reactor event; with these, in relay/_mmsg_relay.c, and GSO, the relay_vs_coturn ChannelData
  figure went from ~10-12 to ~6 µs per relayed packet.
- "python" (any OS, or RPTURN_DATAGRAM_IO=python): recvfrom and sendto per datagram. CI runs both.

Writes never raise: a datagram the kernel will not take (send buffer full, ICMP error pending) is dropped and
counted in `write_errors`, as a router would.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import socket
import sys
import weakref
from collections.abc import Callable

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

try:
    from relay import _mmsg
except ImportError:  # not built (no compiler at install time) or not Linux: the pure-Python back-end
    _mmsg = None
if _mmsg is not None and not hasattr(_mmsg, "flush"):  # built from an older source: rebuild (pip install -e .)
    _mmsg = None

__all__ = ["BACKENDS", "IP_MTU_DISCOVER", "IP_PMTUDISC_DO", "DatagramSocket", "Destination", "Forward",
           "available_backends", "backend", "client_forwarder", "peer_forwarder", "use_backend"]

log = Logger()

# Twisted reads at most 8192 bytes per datagram by default; a TURN datagram can carry up to 64 KiB.
MAX_DATAGRAM = 65536
# Datagrams read per wake-up of one socket before the reactor looks at the others (also the batch size).
READ_BURST = 64
# Passes of the multiplexer per reactor event: after sending, what has come in meanwhile (an echo, the next packet)
# is read without going back through the reactor. In a ping-pong through one socket under a real epoll reactor
# this took the relay's CPU per datagram from 35-45 to 22-27 µs (one in flight) and from 15-16 to 9-13 (eight in
# flight); more passes measured no better. Bounded, so TCP connections and timers wait at most this many bursts.
ROUNDS = 4
# Linux <linux/in.h>; Python's socket module does not always export them.
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)

Address = tuple[str, int]
BACKENDS = ("batched", "python")
# forward(datagrams, start) -> the index of the first datagram it did not relay (see `DatagramSocket.forward`)
Forward = Callable[[list, int], int]


def available_backends() -> list[str]:
    """The back-ends this machine can run: "python" always, "batched" where the extension is built (Linux)."""
    return ["batched", "python"] if _mmsg is not None else ["python"]


def _default_backend() -> str:
    wanted = os.environ.get("RPTURN_DATAGRAM_IO", "")
    if wanted == "python" or _mmsg is None or not sys.platform.startswith("linux"):
        return "python"
    return "batched"


_backend = _default_backend()


def backend() -> str:
    """The back-end sockets made from now on use."""
    return _backend


def use_backend(name: str) -> None:
    """Choose the back-end for sockets made from now on (tests and benchmarks compare them); ValueError if this
    machine cannot run it."""
    global _backend
    if name not in available_backends():
        raise ValueError(f"datagram back-end {name!r} is not available here (have {available_backends()})")
    _backend = name


class _Batch:
    """The sockets with queued writes while a batch of datagrams is handled (one per process: one reactor)."""

    __slots__ = ("active", "pending")

    def __init__(self) -> None:
        self.active = False
        self.pending: list[DatagramSocket] = []

    def flush(self) -> None:
        """Send each pending socket's queue (one sendmmsg each; relay/_mmsg_relay.c)."""
        _mmsg.flush(self, _send_failed)  # type: ignore[union-attr]


def _send_failed(endpoint: DatagramSocket, count: int, failure: Exception) -> None:
    """A bug upstream (not bytes, a port out of range): logged, never out into the reactor; the queue is counted in
    write_errors."""
    log.failure("sending {count} datagrams on {name}", Failure(failure), count=count, name=endpoint.name)


def _read_failed(endpoint: DatagramSocket, addr: Address | None, failure: Exception) -> None:
    """A handler raised on the datagram from `addr` (only that one is lost), or the C relaying itself (None)."""
    if addr is None:
        log.failure("relaying datagrams on {name}", Failure(failure), name=endpoint.name)
    else:
        log.failure("handling a datagram from {addr} on {name}", Failure(failure), addr=addr, name=endpoint.name)


_batch = _Batch()


@implementer(IReadDescriptor)
class Multiplexer:
    """The batched sockets of one reactor in one epoll set; the reactor watches only its descriptor.

    Level-triggered: a socket left with datagrams after its READ_BURST stays ready, and so does the set. Made with
    the first socket, gone with the last (the next socket makes a new one). Each event is up to ROUNDS passes:
    read every ready socket, send what they wrote, look again.

    It counts reactor events, passes that found a socket ready and datagrams read (three additions per pass, none
    per datagram) and logs them when it goes: what one wake-up costs is paid per event, so datagrams per event is
    how well a process amortises it (with workers = 2 each worker gets half the traffic).
    """

    def __init__(self, reactor) -> None:
        self.reactor = reactor
        self.epoll = select.epoll()
        self.sockets: dict[int, DatagramSocket] = {}
        self.events = 0
        self.passes = 0
        self.datagrams = 0
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.epoll.fileno()

    def logPrefix(self) -> str:
        return "relay UDP sockets"

    def add(self, endpoint: DatagramSocket) -> None:
        self.sockets[endpoint.fd] = endpoint
        self.epoll.register(endpoint.fd, select.EPOLLIN)

    def remove(self, endpoint: DatagramSocket) -> None:
        if self.sockets.get(endpoint.fd) is endpoint:
            del self.sockets[endpoint.fd]
            if not self.epoll.closed:  # the reactor closes it at shutdown, maybe before the sockets
                with contextlib.suppress(OSError):
                    self.epoll.unregister(endpoint.fd)
        if not self.sockets and not self.epoll.closed:  # the last one: the reactor watches nothing of ours
            self.reactor.removeReader(self)
            self.epoll.close()
            if self.events:
                log.info("relay UDP sockets: {datagrams} datagrams read in {events} reactor events ({per_event:.1f} "
                         "per event) and {passes} passes", datagrams=self.datagrams, events=self.events,
                         per_event=self.datagrams / self.events, passes=self.passes)

    def doRead(self) -> None:
        sockets = self.sockets
        batch = _batch
        self.events += 1
        for _ in range(ROUNDS):
            try:
                ready = self.epoll.poll(0)
            except (OSError, ValueError):  # ValueError: closed meanwhile (the last socket went)
                return
            if not ready:
                return
            self.passes += 1
            batch.active = True
            read = 0
            try:
                for fd, _events in ready:
                    endpoint = sockets.get(fd)
                    if endpoint is not None:
                        read += endpoint._read_burst()
            except Exception:  # handlers' exceptions are caught per datagram; this is for anything else
                log.failure("reading the relay's UDP sockets")
            finally:
                self.datagrams += read
                batch.active = False
                if batch.pending:
                    batch.flush()

    def connectionLost(self, reason) -> None:
        self.epoll.close()


_multiplexers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _multiplexer(reactor) -> Multiplexer:
    multiplexer = _multiplexers.get(reactor)
    if multiplexer is None or multiplexer.epoll.closed:
        multiplexer = _multiplexers[reactor] = Multiplexer(reactor)
    return multiplexer


class Destination:
    """`send(data)` to one address through one socket: a UDP client's, as its allocation sends to it.

    A plain object rather than a closure so that the C forwarding (`peer_forwarder`) can see where it writes.
    """

    __slots__ = ("addr", "endpoint")

    def __init__(self, endpoint: DatagramSocket, addr: Address) -> None:
        self.endpoint = endpoint
        self.addr = addr

    def __call__(self, data: bytes) -> None:
        self.endpoint.write(data, self.addr)


def client_forwarder(clients: dict) -> Forward | None:
    """The C relaying of ChannelData from the clients in `clients` ({address: allocation}, a listener's) as
    relay.shell.TurnUDPListener relays it; None where the extension is not built."""
    if _mmsg is None:
        return None
    return functools.partial(_mmsg.forward_clients, clients, _batch, DatagramSocket)  # no Python frame per call


def peer_forwarder(allocation) -> Forward | None:
    """The C relaying of permitted peers' datagrams with a channel to `allocation`'s client as
    `Allocation.on_peer_datagram` relays them (when its `send` is a `Destination`); None without the extension."""
    if _mmsg is None:
        return None
    return functools.partial(_mmsg.forward_peers, allocation, _batch, DatagramSocket, Destination)


@implementer(IReadDescriptor)
class DatagramSocket:
    """A non-blocking UDP socket watched by the reactor, handing each datagram straight to `handler`."""

    __slots__ = ("family", "fd", "forward", "handler", "ipv6", "multiplexer", "name", "queue", "reactor", "sock",
                 "write", "write_errors")

    def __init__(self, reactor, sock: socket.socket, handler: Callable[[bytes, Address], None], name: str) -> None:
        self.reactor = reactor
        self.sock = sock
        self.fd = sock.fileno()
        self.handler = handler
        self.write_errors = 0
        self.family = int(sock.family)
        self.ipv6 = self.family == socket.AF_INET6
        self.name = name
        self.queue: list[tuple[bytes, Address]] = []
        # write(data, addr): the back-end's, bound once (the per-packet path pays no branch for it)
        self.write: Callable[[bytes, Address], None]
        self.multiplexer: Multiplexer | None = None  # batched: the epoll set this socket is read through
        # Batched: relays what it can of a burst from a given index in C and returns where it stopped; the handler
        # gets that datagram, then forward goes on from the next (`client_forwarder`, `peer_forwarder`).
        self.forward: Forward | None = None
        if _backend == "batched":
            self.write = self._queue
            self.multiplexer = _multiplexer(reactor)
            self.multiplexer.add(self)
        else:
            self.write = self._sendto
            reactor.addReader(self)

    def fileno(self) -> int:
        return self.sock.fileno()  # -1 once closed, which the reactor understands

    def logPrefix(self) -> str:
        return self.name

    def doRead(self) -> None:
        if self.multiplexer is not None:
            self._read_batch()
        else:
            self._read_each()

    def _read_each(self) -> None:
        recvfrom = self.sock.recvfrom
        handler = self.handler
        for _ in range(READ_BURST):  # bounded, so one busy socket cannot starve the others
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                continue  # an ICMP port-unreachable for something we sent earlier
            except OSError:
                return
            if self.ipv6:
                addr = addr[:2]
            try:
                handler(data, addr)
            except Exception:
                log.failure("handling a datagram from {addr} on {name}", addr=addr, name=self.name)

    def _read_batch(self) -> None:
        """Read one burst and send what it wrote (the multiplexer does this for every ready socket at once)."""
        batch = _batch
        batch.active = True
        try:
            self._read_burst()
        finally:
            batch.active = False
            if batch.pending:
                batch.flush()

    def _read_burst(self) -> int:
        """Read up to READ_BURST datagrams and relay them or hand each to the handler (`handle_burst`); how many
        were read."""
        return _mmsg.read(self, _read_failed)  # type: ignore[union-attr]

    def handle_burst(self, datagrams: list[tuple[bytes, Address]]) -> int:
        """Relay or hand to the handler each datagram of a burst (inside a batch); how many there were.

        In C (relay/_mmsg_relay.c), as this did: `forward(datagrams, index)` relays what it can and returns where
        it stopped, the handler gets that datagram, and so on. An exception from the handler is logged and loses
        only its datagram; one from forward (out of memory) the rest of the burst, as which of it went is unknown.
        """
        return _mmsg.handle(self, datagrams, _read_failed)  # type: ignore[union-attr]

    def _sendto(self, data: bytes, addr: Address) -> None:
        try:
            self.sock.sendto(data, addr)
        except (OSError, OverflowError):  # OverflowError: a port out of range
            self.write_errors += 1

    def _queue(self, data: bytes, addr: Address) -> None:
        if not _batch.active:  # outside a read (TCP, timers): at once
            self._sendto(data, addr)
            return
        queue = self.queue
        if not queue:
            _batch.pending.append(self)
        queue.append((data, addr))

    def set_dont_fragment(self) -> bool:
        """Set DF on everything this socket sends (RFC 5766 DONT-FRAGMENT); False where the OS cannot."""
        if self.ipv6 or not sys.platform.startswith("linux"):
            return False
        try:
            self.sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        except OSError:
            return False
        return True

    def close(self) -> None:
        if self.multiplexer is not None:
            self.multiplexer.remove(self)
        else:
            self.reactor.removeReader(self)
        self.sock.close()

    def connectionLost(self, reason) -> None:
        self.sock.close()

