"""The relay's Twisted shell: client listeners on UDP and TCP, one UDP socket per allocation. It only moves bytes.

All protocol decisions live in the pure core (`relay.dispatch.TurnServer` and the modules it dispatches to); this
module hands it whole datagrams and whole TCP frames, sends back what it returns, binds the relay sockets it asks
for and writes its log lines (`log_event`, the core's injected sink) through twisted.logger.
"""

from __future__ import annotations

import contextlib
import enum
import socket
from collections.abc import Callable

from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from appliance.limits import open_files_limit
from appliance.sockets import bind_udp, listen_on
from relay import datagram
from relay.allocation import Allocation
from relay.datagram import DatagramSocket, Destination, client_forwarder, peer_forwarder
from relay.dispatch import SEND_INDICATION_TYPE, TurnServer
from relay.stun import StunDecodeError, tcp_frame_length

log = Logger()

# Kernel socket buffers: bursts of media must not be dropped while the reactor is busy elsewhere.
SOCKET_BUFFER = 4 * 1024 * 1024
# Seconds a TCP connection without an allocation may go without sending a whole frame.
TCP_IDLE_TIMEOUT = 30.0
# A TCP control connection may not buffer more than one maximal frame plus a bit (with an allocation; without
# one, `tcp_unallocated_buffer`: a STUN request is a few hundred bytes).
MAX_TCP_BUFFER = 65536 + 8

Address = tuple[str, int]
DATAGRAM_IO = {"batched": "batched (recvmmsg/sendmmsg)", "python": "per datagram (recvfrom/sendto)"}


def log_event(text: str, **fields) -> None:
    """The core's event sink (relay.events): one structured twisted.logger line, rendered from `text`."""
    log.info("{text}", text=text, **fields)


def unmap(host: str) -> str:
    """'::ffff:1.2.3.4' (a dual-stack socket's view of an IPv4 client) -> '1.2.3.4'."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def tune_socket(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        # The kernel caps it at net.core.*mem_max; a smaller buffer still works.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def open_udp_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, non-blocking UDP socket (`appliance.sockets`) with large buffers. OSError when the port is taken."""
    sock = bind_udp(host, port, reuse_port=reuse_port)
    tune_socket(sock)
    return sock


class TurnUDPListener:
    """Client-facing UDP socket (3478): STUN messages and ChannelData from many clients.

    A datagram from a client holding an allocation here is found by its source address alone (the core's
    `udp_allocations`): ChannelData goes straight to the allocation, a Send indication to the core's per-packet
    path; no 5-tuple is built. A request from a source without one first passes the core's flood gate (`admit`),
    before any STUN work: a flood's excess costs a dict look-up and a bucket. Then it goes to the core with its
    5-tuple. On the batched back-end the first case, ChannelData a client's allocation relays, is done in C on the
    same dicts (`datagram.client_forwarder`) and never reaches `datagramReceived` (not on a dual-stack socket,
    whose clients' addresses are unmapped here first).
    """

    def __init__(self, core: TurnServer, local: Address) -> None:
        self.core = core
        self.local = local
        self.dual_stack = local[0] == "::"
        self.clients = core.udp_allocations(local)
        self.admit = core.admit
        self.write: Callable[[bytes, Address], None] = lambda data, addr: None
        self.endpoint: DatagramSocket | None = None

    def attach(self, endpoint: DatagramSocket) -> None:
        self.endpoint = endpoint
        self.write = endpoint.write
        endpoint.handler = self.datagramReceived
        if not self.dual_stack:
            endpoint.forward = client_forwarder(self.clients)

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        reply_to = addr  # on a dual-stack socket an IPv4 client must be written to as ::ffff:a.b.c.d
        if self.dual_stack:
            addr = (unmap(addr[0]), addr[1])
        allocation = self.clients.get(addr)
        if allocation is None:
            if data and 0x40 <= data[0] <= 0x7F:
                # ChannelData without an allocation: dropped and counted by the core for a look-up, not through the
                # gate, whose bucket is the source IP's: media still arriving after its allocation went (a restart)
                # must not spend what that IP's next Allocate needs.
                self.core.handle_channel_data(data, ("udp", addr, self.local))
                return
            if not self.admit(addr[0], len(data)):
                return
        elif len(data) >= 4:
            if 0x40 <= data[0] <= 0x7F:
                allocation.on_client_channel_data(data)
                return
            if data[:2] == SEND_INDICATION_TYPE:
                self.core.send_indication(data, allocation)
                return
        five_tuple = ("udp", addr, self.local)
        if data and 0x40 <= data[0] <= 0x7F:  # from a client with an allocation, short of the ChannelData header
            self.core.handle_channel_data(data, five_tuple)
            return
        write = self.write
        # An allocation made by this request sends to its client through this (a Destination: the C forwarding of
        # peers' datagrams knows it).
        send = Destination(self.endpoint, reply_to) if self.endpoint is not None else lambda out: write(out, reply_to)
        reply = self.core.handle_stun(data, five_tuple, send, True)
        if reply is not None:
            write(reply, reply_to)


class StreamState(enum.Enum):
    OPEN = "open"  # frames are read and answered
    CLOSING = "closing"  # refused, unframeable or over its buffer: answers already written go out, nothing is read


class TurnTCPConnection(Protocol):
    """One client's TCP control connection (RFC 5766 §2.1): a stream of STUN messages and padded ChannelData.

    The core admits it (or refuses it: per-source and global caps on connections without an allocation) and closes
    it when it outlives its lifetime without an allocation; while it holds none it may buffer only
    `tcp_unallocated_buffer` bytes. Closing is graceful (`loseConnection`): the answer to a valid frame read before
    the stream turned unframeable still goes out.
    """

    transport_name = "tcp"

    def __init__(self, core: TurnServer, local: Address, clock) -> None:
        self.core = core
        self.local = local
        self.clock = clock
        self.buffer = bytearray()
        self.five_tuple: tuple = ()
        self.frames = 0
        self.idle_check = None
        self.state = StreamState.OPEN

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.five_tuple = (self.transport_name, (unmap(peer.host), peer.port), self.local)
        self.transport.setTcpNoDelay(True)
        if not self.core.tcp_connection_made(self.five_tuple, self.transport.abortConnection, open_files_limit()):
            self.state = StreamState.CLOSING
            self.transport.abortConnection()
            return
        self.idle_check = self.clock.callLater(TCP_IDLE_TIMEOUT, self.check_idle)

    def close(self, *counters: str) -> None:
        """Stop reading and close once what was written is sent (answers to earlier frames included)."""
        for counter in counters:
            self.core.stats[counter] += 1
        self.state = StreamState.CLOSING
        self.transport.loseConnection()

    def check_idle(self) -> None:
        """Close a connection that neither holds an allocation nor sent a whole frame for a while.

        Otherwise anyone could hold sockets open for free, e.g. with a half-sent frame. Counting frames costs the
        hot path one integer increment; no timer is touched per packet.
        """
        if self.frames or self.five_tuple in self.core.allocations:
            self.frames = 0
            self.idle_check = self.clock.callLater(TCP_IDLE_TIMEOUT, self.check_idle)
            return
        self.idle_check = None
        self.core.stats["tcp_idle_closed"] += 1
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.state is not StreamState.OPEN:
            return
        buffer = self.buffer
        buffer += data
        offset = 0
        try:
            while True:
                # A small copy of the header: a memoryview export would pin the bytearray's size.
                size = tcp_frame_length(bytes(buffer[offset : offset + 20]))
                if size is None or len(buffer) - offset < size:
                    break
                frame = bytes(buffer[offset : offset + size])
                offset += size
                self.frameReceived(frame)
                if self.state is not StreamState.OPEN:
                    return
        except StunDecodeError:
            # The stream cannot be framed any more: nothing after this point can be trusted. What was answered
            # before it goes out first (loseConnection flushes; abortConnection would discard it).
            del buffer[:]
            self.close("malformed", "tcp_unframeable_closed")
            return
        del buffer[:offset]
        if buffer:
            limit = MAX_TCP_BUFFER if self.five_tuple in self.core.allocations else \
                self.core.settings.tcp_unallocated_buffer
            if len(buffer) > limit:
                del buffer[:]
                self.close("malformed", "tcp_buffer_closed")

    def frameReceived(self, frame: bytes) -> None:
        self.frames += 1
        if 0x40 <= frame[0] <= 0x7F:
            self.core.handle_channel_data(frame, self.five_tuple)
            return
        reply = self.core.handle_stun(frame, self.five_tuple, self.transport.write)
        if reply is not None:
            self.transport.write(reply)

    def connectionLost(self, reason) -> None:
        if self.idle_check is not None and self.idle_check.active():
            self.idle_check.cancel()
        if self.five_tuple:
            self.core.connection_lost(self.five_tuple)


class TurnTCPFactory(Factory):
    noisy = False  # the service logs its own "listening" line

    def __init__(self, core: TurnServer, local: Address, clock) -> None:
        self.core = core
        self.local = local
        self.clock = clock

    def buildProtocol(self, addr) -> TurnTCPConnection:
        return TurnTCPConnection(self.core, self.local, self.clock)


def relay_opener(reactor, relay_ip: str) -> Callable:
    """The core's RelayOpener: bind a UDP socket on relay_ip:port, or None if that port is taken."""

    def open_relay(port: int, deliver: Callable[[bytes, Address], None]) -> DatagramSocket | None:
        try:
            sock = open_udp_socket(relay_ip, port)
        except OSError:
            return None
        endpoint = DatagramSocket(reactor, sock, deliver, f"relay {relay_ip}:{port}")
        owner = getattr(deliver, "__self__", None)  # deliver is an allocation's on_peer_datagram: relayed in C
        if isinstance(owner, Allocation) and deliver == owner.on_peer_datagram:
            endpoint.forward = peer_forwarder(owner)
        return endpoint

    return open_relay


def listen_udp(reactor, core: TurnServer, host: str, port: int, sock: socket.socket | None = None) -> DatagramSocket:
    """The client-facing UDP listener on host:port, on `sock` when the supervisor handed one down."""
    listener = TurnUDPListener(core, (host, port))
    if sock is None:
        sock = open_udp_socket(host, port)
    else:
        sock.setblocking(False)
        tune_socket(sock)
    endpoint = DatagramSocket(reactor, sock, listener.datagramReceived, f"TURN UDP {host}:{port}")
    listener.attach(endpoint)
    log.info("relay UDP {host}:{port}: datagram I/O {backend}", host=host, port=port,
             backend=DATAGRAM_IO[datagram.backend()])
    return endpoint


def listen_tcp(reactor, core: TurnServer, host: str, port: int, sock: socket.socket | None = None):
    """The client-facing TCP listener on host:port, on `sock` when the supervisor handed one down."""
    return listen_on(reactor, TurnTCPFactory(core, (host, port), reactor), host, port, sock)
