"""rpturn-peer: UDP echo peer(s) for TURN tests, counting what they echo; stops on SIGINT/SIGTERM.

Prints `listening on HOST:PORT` for each socket once bound (port 0 picks a free one), and on exit one line per
socket: `HOST:PORT echoed N datagrams (B bytes)`.

A plain non-blocking socket loop rather than the reactor: the echo peer sits on the measured path of the relay
benchmark, and draining each socket in a tight recvfrom/sendto loop echoes about 1.5 x what a Twisted
DatagramProtocol does on the same core (see the README's harness figures).
"""

from __future__ import annotations

import argparse
import selectors
import signal
import socket
import sys
from types import FrameType

from appliance.config import format_hostport
from relay.harness.common import family_of, peer_port, raise_buffers

PROG = "rpturn-peer"
DEFAULT_LISTEN = ("127.0.0.1", 3480)  # turnutils_peer's port
BURST = 256  # datagrams drained from one socket before looking at the others and at signals


class EchoPeer:
    """Echo sockets and their counters; `serve()` runs until `stop()` (or a signal, see `main`)."""

    def __init__(self, addresses: list[tuple[str, int]]) -> None:
        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        self.echoed: dict[socket.socket, list[int]] = {}  # socket -> [datagrams, bytes]
        for host, port in addresses:
            sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
            raise_buffers(sock)
            sock.bind((host, port))
            sock.setblocking(False)
            self.sockets.append(sock)
            self.echoed[sock] = [0, 0]
            self.selector.register(sock, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ)
        self.running = False

    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for sock in self.sockets]

    def wakeup_fd(self) -> int:
        return self._wake_w.fileno()

    def stop(self) -> None:
        self.running = False

    def serve(self) -> None:
        self.running = True
        while self.running:
            for key, _ in self.selector.select():
                sock = key.fileobj
                if sock is self._wake_r:
                    self._drain_wakeups()
                    continue
                self._echo(sock)  # type: ignore[arg-type]

    def _echo(self, sock: socket.socket) -> None:
        recvfrom, sendto = sock.recvfrom, sock.sendto
        count = size = 0
        for _ in range(BURST):
            try:
                data, addr = recvfrom(65536)
            except BlockingIOError:
                break
            except OSError:
                continue  # an ICMP error queued on the socket by an earlier sendto: nothing to echo
            try:
                sendto(data, addr)
            except OSError:
                continue  # full buffer or unreachable sender: a lost echo, as on any UDP path
            count += 1
            size += len(data)
        totals = self.echoed[sock]
        totals[0] += count
        totals[1] += size

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except BlockingIOError:
            pass
        self.running = False  # only signals write to the wake-up socket

    def report(self) -> list[str]:
        lines = []
        for sock in self.sockets:
            host, port = sock.getsockname()[:2]
            datagrams, size = self.echoed[sock]
            lines.append(f"{format_hostport(host, port)} echoed {datagrams} datagrams ({size} bytes)")
        return lines

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self._wake_r.close()
        self._wake_w.close()
        self.selector.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="UDP echo peer(s) for TURN relay tests.")
    parser.add_argument("--listen", "-L", type=peer_port, action="append", metavar="ADDR:PORT",
                        help="address to echo on (repeatable; default 127.0.0.1:3480; port 0 picks one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        peer = EchoPeer(args.listen or [DEFAULT_LISTEN])
    except OSError as e:
        print(f"{PROG}: cannot listen: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        pass  # the wake-up fd has already woken the loop, which then stops

    signal.set_wakeup_fd(peer.wakeup_fd(), warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for host, port in peer.addresses():
        print(f"listening on {format_hostport(host, port)}", flush=True)
    try:
        peer.serve()
    finally:
        signal.set_wakeup_fd(-1)
        for line in peer.report():
            print(line, flush=True)
        peer.close()


if __name__ == "__main__":
    main()
