"""Listening sockets for both services: one way to bind, one backlog, dual-stack only for `::`.

- `bind_udp` / `bind_tcp`: a bound (TCP: listening) non-blocking socket. `reuse_port` puts it in a SO_REUSEPORT
  group (the worker supervisor binds one socket per worker and keeps them all); `::` is dual-stack (IPv4 clients
  appear as ::ffff:a.b.c.d), any other IPv6 address is IPv6 only, as the operator wrote it.
- `Listener` + `bind_listener`: the same with the config key it came from, so a port already in use is one
  `ConfigError` line naming the file, the service's table, the key and address:port — never a traceback.
- `check_local_address`: bind a throw-away UDP socket to prove an address (`relay_ip`) belongs to this host.
- `listen_on`: a Twisted TCP listening port over such a socket (the relay's TCP and TLS listeners).
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

from appliance.config import ConfigError, format_hostport

# One backlog for every TCP listener; Linux caps it at net.core.somaxconn anyway.
BACKLOG = 4096


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _socket(kind: int, host: str, reuse_port: bool) -> socket.socket:
    family = family_of(host)
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart while old connections linger
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
    except OSError:
        sock.close()
        raise
    return sock


def _bound(kind: int, host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = _socket(kind, host, reuse_port)
    try:
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def bind_udp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, non-blocking UDP socket. Raises OSError when the port is taken or the address is not ours."""
    return _bound(socket.SOCK_DGRAM, host, port, reuse_port)


def bind_tcp(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, listening, non-blocking TCP socket. Raises OSError as bind_udp."""
    return _bound(socket.SOCK_STREAM, host, port, reuse_port)


def listen_on(reactor, factory, host: str, port: int, sock: socket.socket | None = None):
    """A Twisted listening port for `factory` on host:port: over `sock` when the supervisor handed one down, else on
    a socket bound here. adoptStreamPort duplicates the descriptor: the reactor's copy is the one that stays open."""
    if sock is None:
        sock = bind_tcp(host, port)
    sock.setblocking(False)
    try:
        return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        sock.close()


@dataclass(frozen=True)
class Listener:
    """One socket a service listens on, with where it was configured (for the error line)."""

    kind: str  # "udp" or "tcp"
    host: str
    port: int
    table: str  # the service's table, e.g. "relay"
    key: str  # e.g. "listen"

    def __str__(self) -> str:
        return f"{format_hostport(self.host, self.port)} ({self.kind.upper()})"


def bind_listener(listener: Listener, path: str, *, reuse_port: bool = False) -> socket.socket:
    """Bind `listener`; failure is a ConfigError naming file, table, key and address:port."""
    bind = bind_udp if listener.kind == "udp" else bind_tcp
    try:
        return bind(listener.host, listener.port, reuse_port=reuse_port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            problem = "already in use (another process listens there)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            problem = "not an address of this host"
        elif exc.errno == errno.EACCES:
            problem = "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"
        else:
            problem = exc.strerror or str(exc)
        raise ConfigError(path, listener.table, listener.key,
                          f"the {listener.table} cannot listen on {listener}: {problem}") from None


def bind_all(listeners: list[Listener], path: str, *, reuse_port: bool = False) -> list[socket.socket]:
    """Every listener bound, in order; on the first failure the ones already bound are closed again."""
    bound: list[socket.socket] = []
    try:
        for listener in listeners:
            bound.append(bind_listener(listener, path, reuse_port=reuse_port))
    except ConfigError:
        for sock in bound:
            sock.close()
        raise
    return bound


def check_local_address(path: str, table: str, key: str, host: str) -> None:
    """ConfigError unless `host` is an address of this host (a UDP socket can bind it)."""
    try:
        bind_udp(host, 0).close()
    except OSError as exc:
        why = "it is not an address of this host" if exc.errno == errno.EADDRNOTAVAIL else exc.strerror
        raise ConfigError(path, table, key, f"cannot bind {host}: {why}") from None
