"""`makeService(config, reactor)`: the proxy's listeners, health checks, SIGHUP reload and SIGTERM drain.

Everything the proxy needs is built here and passed in (reactor included) so tests and the benchmark can inject
their own. With `workers = N` this process is worker 0 and starts N-1 more (`revproxy.workers`), all listening
on the same ports with SO_REUSEPORT; SIGHUP and SIGTERM are forwarded to them.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import sys
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, ProcessProtocol, Protocol
from twisted.logger import Logger

from revproxy import config as configmod
from revproxy import tls
from revproxy.balancer import Balancer, Node
from revproxy.client import ProxyFactory
from revproxy.config import ConfigError, Listen, ProxyConfig
from revproxy.context import ProxyContext
from revproxy.redirect import RedirectFactory
from revproxy.tls_transport import TLSFactory

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
                raise ConfigError(config.path, "nodes", f"cannot resolve {spec.host!r}: {e}") from None
            server_name = spec.host
        nodes.append(Node(spec.name, address, spec.port, server_name, spec.weight))
        creators[spec.name] = tls.client_creator(address, server_name, config.verify_nodes, config.ca_file)
    return nodes, creators


def certificate_path(config: ProxyConfig) -> str:
    if config.certificate:
        return config.certificate
    try:
        return tls.ensure_self_signed(config.self_signed, config.hostname)
    except OSError as e:
        raise ConfigError(config.path, "self_signed", f"cannot write {config.self_signed}: {e.strerror}") from None


def listen(reactor: Any, where: Listen, factory: Any, reuse_port: bool) -> Any:
    """A listening TCP port, with SO_REUSEPORT when several workers share it."""
    family = socket.AF_INET6 if ":" in where.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((where.host, where.port))
        sock.listen(4096)
        sock.setblocking(False)
        return reactor.adoptStreamPort(sock.fileno(), family, factory)
    finally:
        sock.close()


def raise_nofile() -> None:
    """Each /events stream holds two sockets: raise the open-files limit towards the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    log.info("open-files limit {limit}", limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0])


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


class _Worker(ProcessProtocol):
    def __init__(self, service: RevproxyService, index: int) -> None:
        self.service, self.index = service, index
        self.ended: defer.Deferred[None] = defer.Deferred()

    def processEnded(self, reason: Any) -> None:
        log.info("worker {index} exited ({reason})", index=self.index, reason=reason.getErrorMessage())
        self.service.workers.discard(self)
        self.ended.callback(None)


class RevproxyService(MultiService):
    def __init__(self, config: ProxyConfig, reactor: Any, overrides: dict[str, Any] | None = None,
                 worker_index: int = 0) -> None:
        super().__init__()
        self.reactor = reactor
        self.overrides = overrides or {}
        self.worker_index = worker_index
        nodes, creators = resolve_nodes(config)
        self.tls = tls.ServerTLS(certificate_path(config), config.path)
        balancer = Balancer(nodes, balance=config.balance, fail_timeout=config.fail_timeout, clock=reactor.seconds)
        self.ctx = ProxyContext(config, balancer, reactor, creators)
        self.ports: list[Any] = []
        self.workers: set[_Worker] = set()
        self.health: TimerService | None = None
        self._set_health(config)

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
        reuse = cfg.workers > 1
        factory = TLSFactory(self.tls, ProxyFactory(self.ctx))
        self.ports.append(listen(self.reactor, cfg.https, factory, reuse))
        if cfg.http is not None:
            self.ports.append(listen(self.reactor, cfg.http, RedirectFactory(self.ctx), reuse))
        super().privilegedStartService()

    def startService(self) -> None:
        if not self.ports:
            self.privilegedStartService()
        super().startService()
        cfg = self.config
        raise_nofile()
        if self.worker_index == 0:
            with contextlib.suppress(ValueError):  # not the main thread (tests): no signals
                signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
            for i in range(1, cfg.workers):
                self.spawn_worker(i)
        log.info("revproxy listening on https {https}{http}, nodes {nodes}, balance {balance}, worker {index}",
                 https=str(cfg.https), http=f" and http {cfg.http}" if cfg.http else "",
                 nodes=", ".join(n.name for n in cfg.nodes), balance=cfg.balance, index=self.worker_index)

    def spawn_worker(self, index: int) -> None:
        w = _Worker(self, index)
        args = [sys.executable, "-m", "revproxy.workers", self.config.path, json.dumps(self.overrides), str(index)]
        self.reactor.spawnProcess(w, sys.executable, args, env=os.environ.copy(), childFDs={0: 0, 1: 1, 2: 2})
        self.workers.add(w)

    def signal_workers(self, name: str) -> None:
        for w in list(self.workers):
            with contextlib.suppress(Exception):
                w.transport.signalProcess(name)

    # -- reload (SIGHUP) -------------------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the config and certificate; in-flight requests and open streams keep going untouched."""
        old = self.config
        try:
            new = configmod.load(old.path, self.overrides)
            nodes, creators = resolve_nodes(new)
            self.tls.reload(certificate_path(new), new.path)
        except ConfigError as e:
            log.error("reload refused, the running configuration stays: {error}", error=str(e))
            return
        if (new.https, new.http, new.workers) != (old.https, old.http, old.workers):
            log.warn("listener addresses and workers change only on restart")
        self.ctx.apply(new, nodes, creators)
        if (new.health_check, new.health_interval) != (old.health_check, old.health_interval):
            self._set_health(new)
        log.info("reloaded {path}: nodes {nodes}", path=new.path, nodes=", ".join(n.name for n in new.nodes))
        self.signal_workers("HUP")

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
        self.signal_workers("TERM")
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
            if (ctx.active == 0 and not self.workers) or self.reactor.seconds() >= deadline:
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
