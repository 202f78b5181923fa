"""What every connection of one proxy process shares: the current config, the balancer, the node connections, the
open client connections and the request guards.

A reload replaces `config` (and the balancer's node list); exchanges in flight keep the config they began with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
        self.active = 0
        self.stats = ProxyStats()  # plain counters, read by the management listener's snapshot
        self.draining = False
        self.webapp = StaticFiles(config.webapp_dir) if config.webapp_dir else None

    def apply(self, config: ProxyConfig, nodes: list[Node], creators: dict[str, object]) -> None:
        self.config = config
        self.creators = creators
        self.balancer.fail_timeout, self.balancer.balance = config.fail_timeout, config.balance
        self.balancer.replace(nodes)
        self.webapp = StaticFiles(config.webapp_dir) if config.webapp_dir else None
        self.upstreams.close_idle(keep={n.key for n in nodes})
