"""`makeService(config, reactor)`: the proxy's listeners, health checks, reload and SIGTERM drain.

Everything the proxy needs is built here and passed in (reactor included) so tests and the benchmark can inject
their own. `plan(config, overrides, reactor)` is what the twistd plugins use: it binds the listeners at start (a
port in use is one ConfigError line) and gives the appliance layer either this service (`workers = 1`) or the
proxy's worker group (`revproxy.workers`) for the shared supervisor, which holds the sockets and replaces a dead
worker. SIGHUP reaches `RevproxyService.reload` through `appliance.signals`.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger

from appliance import certs, lean_dispatch
from appliance.limits import raise_open_files_limit
from appliance.publisher import StatsPublisher
from appliance.sockets import Listener, bind_all, bind_tcp
from appliance.startup import ServicePlan
from appliance.tls_transport import TLSFactory
from revproxy import config as configmod
from revproxy import guards, ldap_guard, node_tls, stats
from revproxy.acme_service import AcmeService
from revproxy.balancer import Balancer, Node
from revproxy.client import ProxyFactory
from revproxy.config import ConfigError, ProxyConfig
from revproxy.context import ProxyContext
from revproxy.redirect import RedirectFactory

log = Logger(namespace="revproxy")


def resolve_nodes(config: ProxyConfig) -> tuple[list[Node], dict[str, object]]:
    """Nodes with their addresses resolved once (no per-request DNS) and one TLS creator each."""
    nodes: list[Node] = []
    creators: dict[str, object] = {}
    for spec in config.nodes:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in spec.host else socket.AF_INET, spec.host)
            address, server_name = spec.host, None
        except OSError:
            try:
                address = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)[0][4][0]
            except OSError as e:
                raise configmod.error(config.path, "nodes", f"cannot resolve {spec.host!r}: {e}") from None
            server_name = spec.host
        nodes.append(Node(spec.name, address, spec.port, server_name, spec.weight))
        creators[spec.name] = node_tls.client_creator(address, server_name, config.verify_nodes, config.ca_file)
    return nodes, creators


def certificate_path(config: ProxyConfig) -> str:
    if config.acme is not None and os.path.exists(config.acme.bundle_path):
        return config.acme.bundle_path  # obtained over ACME (until then: the configured or self-signed one)
    if config.certificate:
        return config.certificate
    try:
        return certs.ensure_self_signed(config.self_signed, config.hostname)
    except OSError as e:
        raise configmod.error(config.path, "self_signed", f"cannot write {config.self_signed}: {e.strerror}") from None


def server_tls(config: ProxyConfig, current: certs.ServerTLS | None = None) -> certs.ServerTLS:
    """A ServerTLS for the configured bundle, or `current` switched to it; a bad bundle is a ConfigError and
    `current` stays as it was."""
    path = certificate_path(config)
    try:
        if current is None:
            return certs.ServerTLS(path)
        current.reload(path)
        return current
    except certs.BundleError as e:
        raise configmod.error(config.path, "certificate", str(e)) from None


def adopt(reactor: Any, sock: socket.socket, factory: Any) -> Any:
    """A listening port over a bound, listening socket (the reactor keeps its own duplicate descriptor)."""
    try:
        return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        sock.close()


def listeners(config: ProxyConfig) -> list[Listener]:
    """https, then http if on."""
    found = [Listener("tcp", config.https.host, config.https.port, configmod.TABLE, "https")]
    if config.http is not None:
        found.append(Listener("tcp", config.http.host, config.http.port, configmod.TABLE, "http"))
    return found


def raise_nofile() -> None:
    """Each /events stream holds two sockets: raise the open-files limit towards the hard limit."""
    log.info("open-files limit {limit}", limit=raise_open_files_limit()[0])


class _Probe(Protocol):
    """Active health check: GET `health_check` on one node; healthy on a 2xx/3xx status line."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buf = b""
        self.verdict: bool | None = None

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n" in self.buf and self.verdict is None:
            parts = self.buf.split(b" ", 2)
            self.verdict = len(parts) > 1 and parts[1][:1] in (b"2", b"3")
            self.transport.loseConnection()


class _ProbeFactory(ClientFactory):
    noisy = False
    def __init__(self, service: RevproxyService, node: Node, path: str) -> None:
        self.service, self.node = service, node
        host = (node.server_name or node.host).encode()
        self.request = b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path.encode(), host)
        self.probe: _Probe | None = None

    def buildProtocol(self, addr: Any) -> _Probe:
        self.probe = _Probe(self.request)
        self.probe.connectionLost = self.done  # type: ignore[method-assign]
        return self.probe

    def done(self, reason: Any = None) -> None:
        self.service.health_result(self.node, bool(self.probe and self.probe.verdict))

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.service.health_result(self.node, False)


class RevproxyService(MultiService):
    def __init__(self, config: ProxyConfig, reactor: Any, overrides: dict[str, Any] | None = None,
                 worker_index: int = 0, sockets: list[socket.socket] | None = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.overrides = overrides or {}
        self.worker_index = worker_index
        # Bound listening sockets (https, then http) from plan() or the supervisor; None: bind them at start.
        self.sockets = sockets
        nodes, creators = resolve_nodes(config)
        self.tls = server_tls(config)
        balancer = Balancer(nodes, balance=config.balance, fail_timeout=config.fail_timeout, clock=reactor.seconds)
        self.ctx = ProxyContext(config, balancer, reactor, creators)
        guards.install(self.ctx)  # the PIN guard (off unless [revproxy.pin_guard] enabled)
        ldap_guard.install(self.ctx)  # LDAP authentication (off unless [revproxy.ldap] is set)
        self.ports: list[Any] = []
        self.health: TimerService | None = None
        self._set_health(config)
        # Its figures for the appliance's management listener (appliance.stats), read from plain counters.
        StatsPublisher("revproxy", worker_index, lambda: stats.service_snapshot(self), reactor).setServiceParent(self)
        self.acme = AcmeService(self, worker_index, reactor)  # idle unless [revproxy] acme is set
        self.acme.setServiceParent(self)

    @property
    def config(self) -> ProxyConfig:
        return self.ctx.config

    def _set_health(self, config: ProxyConfig) -> None:
        if self.health is not None:
            self.health.disownServiceParent()
            self.health = None
        if config.health_check:
            self.health = TimerService(config.health_interval, self.check_health)
            self.health.clock = self.reactor
            self.health.setServiceParent(self)

    def privilegedStartService(self) -> None:
        cfg = self.config
        sockets, self.sockets = self.sockets, None
        if sockets is None:
            sockets = [bind_tcp(lst.host, lst.port) for lst in listeners(cfg)]
        https: Any = TLSFactory(self.tls, ProxyFactory(self.ctx))
        if self.ctx.turn_handoff is not None:  # turn_on_https, composed in by the appliance (appliance.turn_on_https)
            from revproxy.demux import DemuxFactory

            https = DemuxFactory(https, self.ctx.turn_handoff, self.reactor)
        elif cfg.turn_on_https:
            log.warn("turn_on_https: the relay does not run in this process (twistd rpturn runs both): HTTPS only")
        self.ports.append(adopt(self.reactor, sockets[0], https))
        if cfg.http is not None:
            self.ports.append(adopt(self.reactor, sockets[1], RedirectFactory(self.ctx)))
        super().privilegedStartService()

    def startService(self) -> None:
        if not self.ports:
            self.privilegedStartService()
        super().startService()
        cfg = self.config
        raise_nofile()
        lean_dispatch.install(self.reactor)  # two reads per proxied request: the per-event log context is costly
        log.info("revproxy listening on https {https}{http}, nodes {nodes}, balance {balance}, worker {index}",
                 https=str(cfg.https), http=f" and http {cfg.http}" if cfg.http else "",
                 nodes=", ".join(n.name for n in cfg.nodes), balance=cfg.balance, index=self.worker_index)

    # -- reload (SIGHUP) -------------------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the config and certificate; in-flight requests and open streams keep going untouched."""
        old = self.config
        try:
            new = configmod.load(old.path, self.overrides)
            nodes, creators = resolve_nodes(new)
            server_tls(new, self.tls)
        except ConfigError as e:
            log.error("reload refused, the running configuration stays: {error}", error=str(e))
            return
        changed = [key for key in ("https", "http", "workers") if getattr(new, key) != getattr(old, key)]
        if changed:
            log.warn("{keys} changed in {path}: that needs a restart; running on with the old values",
                     keys=", ".join(changed), path=new.path)
        self.ctx.apply(new, nodes, creators)
        if (new.health_check, new.health_interval) != (old.health_check, old.health_interval):
            self._set_health(new)
        log.info("reloaded {path}: nodes {nodes}", path=new.path, nodes=", ".join(n.name for n in new.nodes))

    # -- health ----------------------------------------------------------------------------------------------
    def check_health(self) -> None:
        cfg = self.config
        for node in list(self.ctx.balancer.nodes):
            factory = _ProbeFactory(self, node, cfg.health_check)
            wrapped = TLSFactory(self.ctx.creators[node.key], factory)
            self.reactor.connectTCP(node.host, node.port, wrapped, timeout=cfg.connect_timeout)

    def health_result(self, node: Node, healthy: bool) -> None:
        if node.healthy != healthy:
            log.warn("health check: node {node} is {state}", node=node.key, state="up" if healthy else "down")
        self.ctx.balancer.set_health(node, healthy)

    # -- drain (SIGTERM) -------------------------------------------------------------------------------------
    def stopService(self) -> defer.Deferred[None]:
        """Stop accepting, let requests finish for drain_timeout, then close whatever is left."""
        ctx, cfg = self.ctx, self.config
        ctx.draining = True
        stopped = [defer.maybeDeferred(p.stopListening) for p in self.ports]
        self.ports = []
        for conn in list(ctx.connections):
            if conn.forwarder is None:
                conn.transport.loseConnection()
        ctx.upstreams.close_idle()
        log.info("draining: {active} requests in flight, up to {t}s", active=ctx.active, t=cfg.drain_timeout)
        done: defer.Deferred[None] = defer.Deferred()
        deadline = self.reactor.seconds() + cfg.drain_timeout

        def poll() -> None:
            if ctx.active == 0 or self.reactor.seconds() >= deadline:
                for conn in list(ctx.connections):
                    conn.transport.abortConnection()
                for up in list(ctx.upstreams.all):
                    up.transport.abortConnection()
                log.info("drained ({active} requests cut)", active=ctx.active)
                done.callback(None)
            else:
                self.reactor.callLater(0.05, poll)

        poll()
        return defer.gatherResults([*stopped, done, defer.maybeDeferred(super().stopService)]).addCallback(
            lambda _: None)


def makeService(config: ProxyConfig, reactor: Any = None, overrides: dict[str, Any] | None = None,
                worker_index: int = 0) -> RevproxyService:
    """The proxy as a twistd service; `reactor` injectable for tests and benchmarks."""
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    return RevproxyService(config, reactor, overrides, worker_index)


def check_host(config: ProxyConfig) -> None:
    """What the start needs from this host besides the ports, as one ConfigError: node names resolve, the
    certificate reads (or the self-signed one can be written)."""
    resolve_nodes(config)
    server_tls(config)


def plan(config: ProxyConfig, overrides: dict[str, Any] | None, reactor: Any) -> ServicePlan:
    """The proxy's part of a process, checked and bound: a ConfigError is a reason not to start."""
    if config.workers > 1:
        check_host(config)
        from revproxy.workers import worker_group

        return ServicePlan("revproxy", group=worker_group(config, overrides or {}))
    service = makeService(config, reactor, overrides)  # resolves the nodes and reads the certificate
    service.sockets = bind_all(listeners(config), config.path)
    return ServicePlan("revproxy", service=service, reload=service.reload)
