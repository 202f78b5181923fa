"""makeService(config) -> the relay as a Twisted service: listeners, the expiry sweep, reload.

Builds the pure core (`TurnServer` with its credential store, nonce issuer, peer policy and port pool) and the
Twisted shell around it. Everything is passed in, so tests can hand over their own reactor.

`plan(config, overrides, reactor)` is what the twistd plugins use: it checks at start what only this host can tell
(the listen ports are free, `relay_ip` is one of our addresses, the userdb reads) as one-line ConfigErrors, and
gives the appliance layer either this service with its listeners already bound (`workers = 1`) or the relay's
worker group (`relay.workers`). SIGHUP reaches `RelayService.reload` through `appliance.signals`.
"""

from __future__ import annotations

import dataclasses
import os
import socket

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.logger import Logger

from appliance import lean_dispatch
from appliance.certs import BundleError
from appliance.limits import raise_open_files_limit as raise_limit
from appliance.publisher import StatsPublisher
from appliance.sockets import Listener, bind_all, check_local_address
from appliance.startup import ServicePlan
from relay.allocation import TurnSettings
from relay.auth import CredentialStore, NonceIssuer, UserDbError
from relay.config import TABLE, ConfigError, RelayConfig, load_relay_config
from relay.dispatch import TurnServer
from relay.policy import PeerPolicy
from relay.ports import PortPool
from relay.quota import LocalQuota, Quota
from relay.restauth import SecretsFileError, SharedSecrets
from relay.restricted import TurnClients
from relay.shell import DatagramSocket, listen_tcp, listen_udp, log_event, relay_opener
from relay.stats import service_snapshot

log = Logger()

WILDCARDS = ("0.0.0.0", "::")


def primary_address() -> str | None:
    """The address this host would use towards the internet.

    A connected UDP socket only asks the kernel for a route: no packet is sent. 192.0.2.1 is TEST-NET-1.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        return probe.getsockname()[0]


def advertised_relay_ip(config: RelayConfig) -> str:
    """The address relay sockets are reachable on, before any external_ip NAT mapping."""
    if config.relay_ip and config.relay_ip not in WILDCARDS:
        return config.relay_ip
    for host, _port in config.listen:
        if host not in WILDCARDS and ":" not in host:
            return host
    found = primary_address()
    if found is None:
        log.warn("no relay_ip set and no route to find one: advertising 127.0.0.1; set relay_ip")
        return "127.0.0.1"
    return found


def raise_open_files_limit() -> int:
    """Each allocation holds a socket: raise RLIMIT_NOFILE to the hard limit and say what we got."""
    soft, _hard = raise_limit()
    log.info("open-files limit {limit} (each allocation holds one socket)", limit=soft)
    return soft


def worker_port_range(min_port: int, max_port: int, worker: int, workers: int) -> tuple[int, int]:
    """This worker's contiguous share of the relay port range.

    Workers bind their own relay sockets; sharing one range, each would keep trying ports another worker holds
    (failed binds, and 508s once the range fills). Contiguous slices keep even/odd pairs for EVEN-PORT together.
    """
    size = (max_port - min_port + 1) // workers
    low = min_port + worker * size
    high = max_port if worker == workers - 1 else low + size - 1
    return low, high


# Keys a reload does not change (the supervisor's sockets and each worker's port slice depend on them).
RESTART_ONLY = ("listen", "tls_listen", "min_port", "max_port", "relay_ip", "workers")

# The config keys the TURN core takes as they are: every field the two dataclasses share by name (a limit added to
# both is carried without an edit here). relay_ip is the address chosen at start, not the configured one.
SETTINGS_FROM_CONFIG = tuple(sorted({f.name for f in dataclasses.fields(TurnSettings)}
                                    & {f.name for f in dataclasses.fields(RelayConfig)} - {"relay_ip"}))


def turn_settings(config: RelayConfig, relay_ip: str) -> TurnSettings:
    return TurnSettings(relay_ip=relay_ip, **{name: getattr(config, name) for name in SETTINGS_FROM_CONFIG})


def peer_policy(config: RelayConfig, relay_ip: str) -> PeerPolicy:
    own = {host for host, _port in config.listen} | {relay_ip}
    own |= {ip for ip in (config.relay_ip, config.external_ip) if ip}
    return PeerPolicy(allowed=config.allowed_peers, denied=config.denied_peers, own_addresses=sorted(own))


class RelayService(Service):
    """Owns the core and its listening ports; reloads on SIGHUP; deletes every allocation on stop."""

    def __init__(self, config: RelayConfig, reactor, nonce_secret: bytes | None = None,
                 inherited: list | None = None, quota: Quota | None = None, overrides: dict | None = None,
                 worker: tuple[int, int] = (0, 1), inherited_tls: list | None = None) -> None:
        self.config = config
        # One TCP socket per tls_listen entry, bound by the supervisor; None: bind them here.
        self.inherited_tls = inherited_tls
        self.tls = relay_tls(config)
        self.reactor = reactor
        # [(udp socket, tcp socket)] per listen entry, bound by the worker supervisor; None: bind them here.
        self.inherited = inherited
        self.overrides = overrides or {}
        self.relay_ip = advertised_relay_ip(config)
        bind_ip = config.relay_ip or "0.0.0.0"
        if nonce_secret is None:
            nonce_secret = bytes.fromhex(config.nonce_secret) if config.nonce_secret else os.urandom(32)
        self.core = TurnServer(
            turn_settings(config, self.relay_ip),
            credentials=CredentialStore(config.realm, config.users, config.userdb),
            nonces=NonceIssuer(nonce_secret, lifetime=config.nonce_lifetime),
            policy=peer_policy(config, self.relay_ip),
            ports=PortPool(*worker_port_range(config.min_port, config.max_port, *worker)),
            open_relay=relay_opener(reactor, bind_ip),
            clock=reactor.seconds,
            quota=quota or LocalQuota(),
            emit=log_event,
            secrets=SharedSecrets(config.auth_secrets, config.auth_secrets_file),
            turn_clients=TurnClients(config.turn_clients, enabled=config.turn),
        )
        self.ports: list = []

    def startService(self) -> None:
        super().startService()
        raise_open_files_limit()
        # Every UDP socket is read through one event (relay.datagram.Multiplexer): without the per-event log context
        # a wake-up costs twelve Python calls fewer (44 -> 32 with one datagram), and with workers = 2 each worker
        # wakes more often for the same traffic.
        lean_dispatch.install(self.reactor)
        for i, (host, port) in enumerate(self.config.listen):
            udp_sock, tcp_sock = self.inherited[i] if self.inherited else (None, None)
            udp = listen_udp(self.reactor, self.core, host, port, udp_sock)
            tcp = listen_tcp(self.reactor, self.core, host, port, tcp_sock)
            self.ports += [udp, tcp]
            log.info("relay listening on {host}:{port} (UDP and TCP)", host=host, port=port)
        for i, (host, port) in enumerate(self.config.tls_listen):
            from relay.tls import listen_tls

            sock = self.inherited_tls[i] if self.inherited_tls else None
            self.ports.append(listen_tls(self.reactor, self.core, host, port, self.tls, sock))
            log.info("relay listening on {host}:{port} (TLS, certificate {certificate})", host=host, port=port,
                     certificate=self.tls.path)
        if not self.config.turn:
            log.info("TURN disabled (turn = false): STUN Binding for anyone, no TURN request answered")
        elif self.config.turn_clients:
            log.info("restricted mode: TURN only from {clients}; STUN Binding for anyone",
                     clients=", ".join(self.config.turn_clients))
        log.info(
            "relay ready: realm {realm}, relay address {relay_ip} (advertised {advertised}), ports {low}-{high}",
            realm=self.config.realm, relay_ip=self.relay_ip, advertised=self.config.external_ip or self.relay_ip,
            low=self.core.ports.min_port, high=self.core.ports.max_port,
        )

    def stopService(self):
        super().stopService()
        self.core.close()
        ports, self.ports = self.ports, []
        for port in ports:
            if isinstance(port, DatagramSocket):
                port.close()
            else:
                port.stopListening()

    def reload(self) -> None:
        """SIGHUP: re-read the config file and the userdb; live allocations are kept."""
        source = self.config.source
        try:
            new = load_relay_config(source, self.overrides) if source and os.path.exists(source) else self.config
            credentials = CredentialStore(new.realm, new.users, new.userdb)
            secrets = SharedSecrets(new.auth_secrets, new.auth_secrets_file)
            if self.tls is not None:
                self.tls.reload(new.certificate or self.tls.path)
        except (ConfigError, UserDbError, SecretsFileError, BundleError, OSError) as exc:
            log.error("reload failed, keeping the running configuration: {error}", error=exc)
            return
        changed = [key for key in RESTART_ONLY if getattr(new, key) != getattr(self.config, key)]
        if changed:
            log.warn("{keys} changed in {source}: that needs a restart; running on with the old values",
                     keys=", ".join(changed), source=source)
        self.core.reconfigure(
            settings=turn_settings(new, self.relay_ip),
            credentials=credentials,
            policy=peer_policy(new, self.relay_ip),
            secrets=secrets,
            turn_clients=TurnClients(new.turn_clients, enabled=new.turn),
        )
        self.config = dataclasses.replace(new, **{key: getattr(self.config, key) for key in RESTART_ONLY})
        log.info("configuration reloaded from {source}: {users} inline users, userdb {userdb}",
                 source=source, users=len(new.users), userdb=new.userdb)


def makeService(config: RelayConfig, reactor=None, *, nonce_secret: bytes | None = None, inherited: list | None = None,
                quota: Quota | None = None, overrides: dict | None = None,
                worker: tuple[int, int] = (0, 1), inherited_tls: list | None = None) -> MultiService:
    """One relay process. `inherited` sockets, `quota`, `nonce_secret` and `worker` (index, count) come from the
    worker supervisor."""
    if reactor is None:
        from twisted.internet import reactor  # the global reactor only when none is given
    top = MultiService()
    relay = RelayService(config, reactor, nonce_secret, inherited=inherited, quota=quota, overrides=overrides,
                         worker=worker, inherited_tls=inherited_tls)
    relay.setServiceParent(top)
    sweep = TimerService(1.0, relay.core.expire)
    sweep.clock = reactor
    sweep.setServiceParent(top)
    stats = TimerService(60.0, log_stats, relay.core)
    stats.clock = reactor
    stats.setServiceParent(top)
    # Its figures for the appliance's management listener (appliance.stats), read from the core's plain counters.
    StatsPublisher("relay", worker[0], lambda: service_snapshot(relay), reactor).setServiceParent(top)
    top.relay = relay  # type: ignore[attr-defined]
    return top


def log_stats(core: TurnServer) -> None:
    log.info("relay stats: {allocations} allocations, {counters}",
             allocations=len(core.allocations), counters=dict(core.stats))


def listeners(config: RelayConfig) -> list[Listener]:
    """A UDP and a TCP listener per `listen` entry, in that order, then a TCP one per `tls_listen` entry."""
    plain = [Listener(kind, host, port, TABLE, "listen") for host, port in config.listen for kind in ("udp", "tcp")]
    return plain + [Listener("tcp", host, port, TABLE, "tls_listen") for host, port in config.tls_listen]


def split_sockets(config: RelayConfig, sockets: list) -> tuple[list, list]:
    """Bound sockets in `listeners` order -> ([(udp, tcp)] per listen entry, [tcp] per tls_listen entry)."""
    plain = 2 * len(config.listen)
    return list(zip(sockets[0:plain:2], sockets[1:plain:2], strict=True)), list(sockets[plain:])


def relay_tls(config: RelayConfig):
    """The TLS side of `tls_listen` (None without it); a missing or bad certificate is one ConfigError."""
    if not config.tls_listen:
        return None
    from relay.tls import RelayTLS

    source = config.source or "<config>"
    if not config.certificate:
        raise ConfigError(source, TABLE, "certificate",
                          "tls_listen needs a certificate bundle (under twistd rpturn the proxy's is the default)")
    try:
        return RelayTLS(config.certificate)
    except BundleError as exc:
        raise ConfigError(source, TABLE, "certificate", str(exc)) from None


def check_host(config: RelayConfig) -> None:
    """What only this host can tell, as one ConfigError: `relay_ip` is ours, the userdb reads and parses."""
    source = config.source or "<config>"
    if config.relay_ip and config.relay_ip not in WILDCARDS:
        check_local_address(source, TABLE, "relay_ip", config.relay_ip)
    try:
        CredentialStore(config.realm, config.users, config.userdb)
    except UserDbError as exc:
        raise ConfigError(source, TABLE, "userdb", str(exc)) from None
    except ValueError as exc:
        raise ConfigError(source, TABLE, "users", str(exc)) from None
    relay_tls(config)


def plan(config: RelayConfig, overrides: dict | None, reactor) -> ServicePlan:
    """The relay's part of a process, checked and bound: a ConfigError is a reason not to start."""
    check_host(config)
    if config.workers > 1:
        from relay.workers import worker_group

        return ServicePlan("relay", group=worker_group(config, overrides or {}))
    bound = bind_all(listeners(config), config.source or "<config>")
    pairs, tls = split_sockets(config, bound)
    service = makeService(config, reactor, inherited=pairs, overrides=overrides, inherited_tls=tls)
    return ServicePlan("relay", service=service, reload=service.relay.reload)
