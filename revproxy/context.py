"""What every connection of one proxy process shares: the current config, the balancer, the node connections, the
open client connections and the request guards.

A reload replaces `config` (and the balancer's node list); exchanges in flight keep the config they began with.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from appliance.limits import open_files_limit
from appliance.memory import BurstWatch
from appliance.ratelimit import LogLimiter
from revproxy import access_log
from revproxy.balancer import Balancer, Node
from revproxy.config import ProxyConfig
from revproxy.connection_pool import NodeConnections
from revproxy.static import StaticFiles
from revproxy.stats import ProxyStats

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from revproxy.client import ClientConnection
    from revproxy.exchange import Exchange
    from revproxy.http1 import HTTPError

    # A request guard (PIN guard, LDAP authentication, ...) sees each exchange before it is routed and returns None
    # to let it through, an HTTPError to answer it, or a Deferred firing with either.
    Guard = Callable[[Exchange], "HTTPError | Deferred[HTTPError | None] | None"]


log = Logger(namespace="revproxy")


def source_key(ip: str) -> str:
    """What `max_connections_per_ip` counts by: the address, or for IPv6 its /64 (one subscriber's whole prefix)."""
    if ":" not in ip:
        return ip
    try:
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    except ValueError:
        return ip


def host_bytes(name: str) -> bytes:
    try:
        return name.encode("idna")
    except UnicodeError:  # a label over 63 characters, say: sent as it is
        return name.encode("ascii", "replace")


class ProxyContext:
    def __init__(self, config: ProxyConfig, balancer: Balancer, reactor: Any, creators: dict[str, object]) -> None:
        self.config = config
        self.balancer = balancer
        self.reactor = reactor
        self.creators = creators  # node key -> TLS client connection creator
        self.upstreams = NodeConnections(self)
        self.connections: set[ClientConnection] = set()
        self.guards: list[Guard] = []
        # Called with each finished exchange (the PIN guard counts the nodes' 403s to PIN requests).
        self.finished: list[Callable[[Exchange], None]] = []
        self.pin_guard: Any = None  # revproxy.guards.PinGuardHook, once installed
        self.ldap: Any = None  # revproxy.ldap_guard.LdapGuard, once installed
        # turn_on_https: the relay's TURN for connections whose first bytes are STUN (revproxy.demux.TurnHandoff),
        # given by the appliance when the relay runs in this process; None: HTTPS only.
        self.turn_handoff: Any = None
        self.active = 0
        self.stats = ProxyStats()  # plain counters, read by the management listener's snapshot
        self.draining = False
        self.webapp = StaticFiles(config.webapp_dir) if config.webapp_dir else None
        self.hostname = host_bytes(config.hostname)  # Host for HTTP/1.0 requests that send none
        self.access = access_log.sink(config.access_log, reactor)  # where access-log lines go, or None
        # Connection limits: client connections per source address and in all; `idle` holds the connections that
        # are not in an exchange (handshaking, between requests, a head arriving), the longest idle first: the
        # ones closed to make room when the global limit is reached.
        self.per_ip: dict[str, int] = {}
        self.idle: dict[ClientConnection, None] = {}
        self.open = 0
        self.limit: int | None = None  # max_connections in force, worked out once the open-files limit is raised
        self.limit_log = LogLimiter(rate=1.0, burst=10.0)
        self.client_log = LogLimiter(rate=10.0, burst=50.0)  # refused requests, slow heads: anyone can cause them
        self.bursts = BurstWatch(reactor.callLater)  # memory back to the system after a flood has gone

    def apply(self, config: ProxyConfig, nodes: list[Node], creators: dict[str, object]) -> None:
        self.config = config
        self.creators = creators
        self.balancer.fail_timeout, self.balancer.balance = config.fail_timeout, config.balance
        self.balancer.replace(nodes)
        self.webapp = StaticFiles(config.webapp_dir) if config.webapp_dir else None
        self.hostname = host_bytes(config.hostname)
        current = self.access if isinstance(self.access, access_log.AccessLogFile) else None
        self.access = access_log.sink(config.access_log, self.reactor, current)
        self.limit = None
        self.upstreams.close_idle(keep={n.key for n in nodes})

    # -- connection limits ---------------------------------------------------------------------------------------
    def connection_limit(self) -> int:
        """`max_connections`, or from the open-files limit: each client connection may hold a node connection too,
        and the idle node connections and the process itself need some."""
        if self.limit is None:
            cfg = self.config
            if cfg.max_connections:
                self.limit = cfg.max_connections
            else:
                soft = open_files_limit()
                reserve = min(64 + cfg.upstream_keepalive * max(1, len(cfg.nodes)), soft // 4)
                self.limit = max(16, (soft - reserve) // 2)
        return self.limit

    def admit(self, ip: str) -> bool:
        """Whether a new connection from `ip` may open; at the global limit the longest idle connection is closed
        to make room, and only when none is idle is the new one refused."""
        per_ip = self.config.max_connections_per_ip
        source = source_key(ip)
        if per_ip and self.per_ip.get(source, 0) >= per_ip:
            self._refused("{ip} refused: max_connections_per_ip ({limit}) reached", ip, per_ip)
            return False
        limit = self.connection_limit()
        if self.open >= limit:
            if not self.idle:
                self._refused("{ip} refused: max_connections ({limit}) reached, none idle", ip, limit)
                return False
            oldest = next(iter(self.idle))
            self._refused("max_connections ({limit}) reached: closing an idle connection from {ip}",
                          oldest.client_ip, limit)
            self.release(oldest)
            oldest.transport.abortConnection()
        self.open += 1
        self.per_ip[source] = self.per_ip.get(source, 0) + 1
        self.bursts.opened(self.open)
        return True

    def release(self, conn: ClientConnection) -> None:
        """A connection no longer counts (closed, or being closed to make room). Once per connection."""
        if not conn.counted:
            return
        conn.counted = False
        self.idle.pop(conn, None)
        self.open -= 1
        self.bursts.closed(self.open)
        source = source_key(conn.client_ip)
        left = self.per_ip[source] - 1
        if left:
            self.per_ip[source] = left
        else:
            del self.per_ip[source]

    def client_event(self, text: str, **fields: Any) -> None:
        """A line about something a client did (a refused request, a head too slow): rate-limited, since anyone can
        cause them."""
        self._limited(self.client_log, log.info, text, fields)

    def _refused(self, text: str, ip: str, limit: int) -> None:
        self._limited(self.limit_log, log.warn, text, {"ip": ip, "limit": limit})

    def _limited(self, limiter: LogLimiter, emit: Callable[..., None], text: str, fields: dict[str, Any]) -> None:
        """`text` through `emit` if `limiter` lets it; the next line that passes says how many were held back."""
        suppressed = limiter.allow(self.reactor.seconds())
        if suppressed is not None:
            emit(text + (" ({suppressed} more such lines held back)" if suppressed else ""), suppressed=suppressed,
                 **fields)
