"""Small pieces the harness tools share: HOST[:PORT] parsing, socket buffer sizing, the client TLS context, and the
datagrams the kernel dropped on our own UDP sockets."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import socket
import ssl

from appliance.config import parse_hostport

STUN_PORT = 3478
SOCKET_BUFFER = 4 << 20  # bytes; bursts at 100k+ pps overflow Linux's 208 KiB default and count as loss


def host_port(text: str, default_port: int | None = STUN_PORT) -> tuple[str, int]:
    """`HOST`, `HOST:PORT`, `[V6]:PORT` or a bare IPv6 address -> (numeric host, port).
    Raises argparse.ArgumentTypeError with a readable message (argparse prints it as a usage error)."""
    try:
        host, port = parse_hostport(text, default_port, port_zero=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise argparse.ArgumentTypeError(f"cannot resolve {host!r}: {e.strerror}") from None
    return str(infos[0][4][0]), port


def peer_port(text: str) -> tuple[str, int]:
    """HOST:PORT with the port required."""
    return host_port(text, default_port=None)


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def raise_buffers(sock: socket.socket, size: int = SOCKET_BUFFER) -> None:
    """Ask for large kernel buffers; Linux caps them at net.core.[rw]mem_max without complaint."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        # A smaller buffer only means more loss at high rates, which the figures then show.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def client_tls_context(ca_file: str | None) -> ssl.SSLContext:
    """TLS 1.2+ client context: verifying against `ca_file`, or (None) accepting any certificate, as coturn's
    turnutils_uclient does: a load tool measures the relay, the tests check certificates elsewhere."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file:
        context.load_verify_locations(ca_file)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


PROC_UDP = ("/proc/net/udp", "/proc/net/udp6")


def udp_socket_drops(inodes: set[int], tables: tuple[str, ...] = PROC_UDP) -> int | None:
    """Datagrams the kernel dropped (receive buffer full) on the UDP sockets with these inodes, from the `drops`
    column of /proc/net/udp{,6}; None where those tables cannot be read."""
    total = 0
    try:
        for table in tables:
            with open(table) as lines:
                next(lines, None)  # header
                for line in lines:
                    fields = line.split()
                    if len(fields) >= 13 and int(fields[9]) in inodes:
                        total += int(fields[-1])
    except (OSError, ValueError):
        return None
    return total
