"""The relay's Twisted shell: client listeners on UDP and TCP, one UDP socket per allocation. It only moves bytes.

All protocol decisions live in `relay.allocation.TurnServer`; this module hands it whole datagrams and whole
TCP frames, sends back what it returns, and binds the relay sockets it asks for.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

from twisted.internet import error
from twisted.internet.interfaces import IReactorUDP
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.logger import Logger

from relay.allocation import TurnServer
from relay.stun import StunDecodeError, tcp_frame_length

log = Logger()

# Twisted reads at most 8192 bytes per datagram by default; a TURN datagram can carry up to 64 KiB.
MAX_DATAGRAM = 65536
# Kernel socket buffers: bursts of media must not be dropped while the reactor is busy elsewhere.
SOCKET_BUFFER = 4 * 1024 * 1024
# A TCP control connection may not buffer more than one maximal frame plus a bit.
MAX_TCP_BUFFER = 65536 + 8

Address = tuple[str, int]


def unmap(host: str) -> str:
    """'::ffff:1.2.3.4' (a dual-stack socket's view of an IPv4 client) -> '1.2.3.4'."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def tune_socket(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        # The kernel caps it at net.core.*mem_max; a smaller buffer still works.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


class TurnUDPListener(DatagramProtocol):
    """Client-facing UDP socket (3478): STUN messages and ChannelData from many clients."""

    def __init__(self, core: TurnServer, local: Address) -> None:
        self.core = core
        self.local = local
        self.dual_stack = local[0] == "::"

    def startProtocol(self) -> None:
        tune_socket(self.transport.socket)

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        if self.dual_stack:
            addr = (unmap(addr[0]), addr[1])
        five_tuple = ("udp", addr[:2], self.local)
        if data and 0x40 <= data[0] <= 0x7F:
            self.core.handle_channel_data(data, five_tuple)
            return
        write = self.transport.write
        reply = self.core.handle_stun(data, five_tuple, lambda out: write(out, addr))
        if reply is not None:
            write(reply, addr)


class TurnTCPConnection(Protocol):
    """One client's TCP control connection (RFC 5766 §2.1): a stream of STUN messages and padded ChannelData."""

    def __init__(self, core: TurnServer, local: Address) -> None:
        self.core = core
        self.local = local
        self.buffer = bytearray()
        self.five_tuple: tuple = ()

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.five_tuple = ("tcp", (unmap(peer.host), peer.port), self.local)
        self.transport.setTcpNoDelay(True)

    def dataReceived(self, data: bytes) -> None:
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
        except StunDecodeError:
            # The stream cannot be framed any more: nothing after this point can be trusted.
            self.core.stats["malformed"] += 1
            log.info("TCP stream from {client} cannot be framed; closing", client=self.five_tuple[1])
            self.transport.abortConnection()
            return
        del buffer[:offset]
        if len(buffer) > MAX_TCP_BUFFER:
            self.core.stats["malformed"] += 1
            self.transport.abortConnection()

    def frameReceived(self, frame: bytes) -> None:
        if 0x40 <= frame[0] <= 0x7F:
            self.core.handle_channel_data(frame, self.five_tuple)
            return
        reply = self.core.handle_stun(frame, self.five_tuple, self.transport.write)
        if reply is not None:
            self.transport.write(reply)

    def connectionLost(self, reason) -> None:
        if self.five_tuple:
            self.core.connection_lost(self.five_tuple)


class TurnTCPFactory(Factory):
    def __init__(self, core: TurnServer, local: Address) -> None:
        self.core = core
        self.local = local

    def buildProtocol(self, addr) -> TurnTCPConnection:
        return TurnTCPConnection(self.core, self.local)


class _RelayProtocol(DatagramProtocol):
    """A relay socket: every datagram from a peer goes straight to the allocation's handler."""

    def __init__(self, deliver: Callable[[bytes, Address], None]) -> None:
        # The allocation's handler *is* datagramReceived: no extra call frame per packet.
        self.datagramReceived = deliver  # type: ignore[method-assign]

    def startProtocol(self) -> None:
        tune_socket(self.transport.socket)


class RelaySocket:
    """What the core holds for a bound relay port: `write(data, peer)` and `close()`."""

    __slots__ = ("port", "write")

    def __init__(self, port) -> None:
        self.port = port
        self.write = port.write

    def close(self) -> None:
        self.port.stopListening()


def relay_opener(reactor: IReactorUDP, relay_ip: str) -> Callable:
    """The core's RelayOpener: bind a UDP socket on relay_ip:port, or None if that port is taken."""

    def open_relay(port: int, deliver: Callable[[bytes, Address], None]) -> RelaySocket | None:
        try:
            listening = reactor.listenUDP(port, _RelayProtocol(deliver), interface=relay_ip,
                                          maxPacketSize=MAX_DATAGRAM)
        except error.CannotListenError:
            return None
        return RelaySocket(listening)

    return open_relay
