"""The relay's real UDP shell and core on loopback sockets in this process, with no reactor running: the tests of
the datagram back-ends and benchmarks/relay_datagram_bench.py drive the sockets' `doRead` themselves.

    relay = LoopbackRelay()                              # listener on 127.0.0.1:<free>, relay ports 40000-40999
    client = relay.client(peer_address, channel=0x4000)  # allocated and bound through the listener, signed
    client.sock.send(encode_channel_data(0x4000, b"hi")); relay.read_listener()   # -> relayed to the peer
    relay.read_relays()                                  # what peers sent to the relayed addresses -> clients
    relay.close()
"""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import dataclass

from relay.allocation import TurnSettings
from relay.auth import CredentialStore, NonceIssuer
from relay.datagram import READ_BURST, DatagramSocket
from relay.dispatch import TurnServer
from relay.policy import PeerPolicy
from relay.ports import PortPool
from relay.shell import listen_udp, relay_opener
from relay.stun import Attr, Message, MessageClass, Method, encode, long_term_key, parse

REALM, USER, PASSWORD = "loopback.test", "bench", "bench-secret"

Address = tuple[str, int]


class Readers:
    """A reactor stand-in: what is watched for reading, and `iterate()`, one pass of a reactor's loop over it."""

    def __init__(self) -> None:
        self.readers: list[DatagramSocket] = []
        self.epoll = select.epoll()
        self.by_fd: dict[int, DatagramSocket] = {}

    def addReader(self, reader: DatagramSocket) -> None:
        self.readers.append(reader)
        self.by_fd[reader.fileno()] = reader
        self.epoll.register(reader.fileno(), select.EPOLLIN)

    def removeReader(self, reader: DatagramSocket) -> None:
        self.readers.remove(reader)
        fd = reader.fileno()
        if self.by_fd.get(fd) is reader:
            del self.by_fd[fd]
            self.epoll.unregister(fd)

    def iterate(self) -> int:
        """What a reactor does when it wakes: ask which readers are ready and let each read. How many were."""
        ready = self.epoll.poll(0)
        for fd, _events in ready:
            reader = self.by_fd.get(fd)
            if reader is not None:
                reader.doRead()
        return len(ready)


@dataclass
class LoopbackClient:
    sock: socket.socket  # connected to the listener, non-blocking once set up
    relayed: Address
    nonce: str


class LoopbackRelay:
    """A `TurnServer` with the real shell: its UDP listener and relay sockets on 127.0.0.1 (or ::1)."""

    def __init__(self, host: str = "127.0.0.1", min_port: int = 40000, max_port: int = 40999) -> None:
        self.reactor = Readers()
        self.host = host
        self.key = long_term_key(USER, REALM, PASSWORD)
        self.core = TurnServer(
            TurnSettings(realm=REALM, relay_ip=host, unauthenticated_rate=0.0),
            credentials=CredentialStore(REALM, {USER: PASSWORD}), nonces=NonceIssuer(os.urandom(32)),
            policy=PeerPolicy(allowed=["127.0.0.0/8", "::1/128"], own_addresses=[]),
            ports=PortPool(min_port, max_port), open_relay=relay_opener(self.reactor, host), clock=time.monotonic,
        )
        self.listener = listen_udp(self.reactor, self.core, host, 0)
        self.address: Address = self.listener.sock.getsockname()[:2]
        self.clients: list[LoopbackClient] = []

    @property
    def relays(self) -> list[DatagramSocket]:
        return [allocation.relay for allocation in self.core.allocations.values()]

    def read_listener(self, expected: int = 1) -> None:
        """Read the listener as the reactor would until `expected` datagrams had their chance (bursts of
        READ_BURST), then once more."""
        for _ in range(expected // READ_BURST + 1):
            self.listener.doRead()

    def read_relays(self) -> None:
        for relay in self.relays:
            relay.doRead()

    def run_reactor(self, passes: int = 1) -> None:
        """`passes` reactor wake-ups (readers read only when ready), as the real reactor runs the shell."""
        for _ in range(passes):
            self.reactor.iterate()

    def close(self) -> None:
        for client in self.clients:
            client.sock.close()
        self.core.close()
        self.listener.close()
        self.reactor.epoll.close()

    def request(self, sock: socket.socket, method: int, attributes: list, nonce: str | None = None) -> Message:
        """A request through the listener (signed when `nonce` is given) and its parsed response."""
        message = Message(method, MessageClass.REQUEST, os.urandom(12), list(attributes))
        if nonce is not None:
            message.add(Attr.USERNAME, USER)
            message.add(Attr.REALM, REALM)
            message.add(Attr.NONCE, nonce)
        sock.send(encode(message, integrity_key=self.key if nonce is not None else None))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            self.listener.doRead()
            try:
                return parse(sock.recv(65536))
            except BlockingIOError:
                time.sleep(0.001)
        raise TimeoutError(f"no answer to {method:#x} from the loopback relay")

    def client(self, peer: Address, *, channel: int | None = None) -> LoopbackClient:
        """A client socket with an allocation and a permission for `peer` (a channel to it if `channel`)."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.host, 0))
        sock.connect(self.address)
        sock.setblocking(False)
        transport = [(Attr.REQUESTED_TRANSPORT, 17)]
        nonce = self.request(sock, Method.ALLOCATE, transport).get(Attr.NONCE)
        reply = self.request(sock, Method.ALLOCATE, transport, nonce)
        assert reply.msg_class == MessageClass.SUCCESS, reply
        relayed = reply.get(Attr.XOR_RELAYED_ADDRESS)
        if channel is not None:
            reply = self.request(sock, Method.CHANNEL_BIND,
                                 [(Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer)], nonce)
        else:
            reply = self.request(sock, Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer)], nonce)
        assert reply.msg_class == MessageClass.SUCCESS, reply
        client = LoopbackClient(sock, relayed, nonce)
        self.clients.append(client)
        return client



def udp_socket(host: str = "127.0.0.1", buffer: int = 4 * 1024 * 1024) -> socket.socket:
    """A bound, non-blocking UDP socket with large buffers (a peer, or a client sending bursts)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, buffer)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[tuple[bytes, Address]]:
    """Every datagram waiting on a non-blocking socket."""
    out = []
    while True:
        try:
            data, addr = sock.recvfrom(65536)
        except BlockingIOError:
            return out
        out.append((data, addr[:2]))
