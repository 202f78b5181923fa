"""TURN on the HTTPS port (`[revproxy] turn_on_https`): the relay's TURN stream protocol composed into the proxy.

The proxy's HTTPS listener looks at each connection's first bytes (revproxy.demux) and hands a STUN/TURN one — in
the clear, or inside the TLS the proxy terminated — to a `TurnHandoff`. The proxy never imports the relay; this
module, which assembles the appliance, gives it one: `RelayHandoff` builds the relay's own TCP control-connection
protocol (relay.shell / relay.tls) on a relay core, so TURN on 443 is the same TURN as on 3478 and 5349: the same
handlers, credentials (users, userdb, shared secrets), restricted mode, peer policy, per-source limits and log lines,
with transport "tcp" or "tls" in the 5-tuple and the figures.

Process model, and why. A TURN-over-TLS connection can only be recognised after the TLS handshake, in the process
that terminated it, and TLS state cannot be handed to another process; passing the socket to a relay worker (fd
passing) would only work for TURN in the clear. So the relay's core runs *in the process that runs the proxy*:

- Both services in one process (`workers = 1` for both, the default): the handoff uses the relay service's own
  core. Nothing is duplicated: one allocation table, one port range, one quota, one set of figures.
- The proxy in worker processes (`[revproxy] workers > 1`), or the relay in workers and the proxy alone in the main
  process: each process serving the HTTPS port gets a relay core of its own (`HttpsRelay`: the relay service's core,
  built from the same `[relay]` table, never listening itself), with its expiry sweep, its SIGHUP reload (users,
  userdb, secrets, peer policy, restricted mode) and its figures published as a relay process of its own (index
  `FIGURES_INDEX + proxy worker`), so `/metrics` and `/status` count its allocations by transport. What it does not
  share with the relay's processes: nonces (none need to be: a TCP/TLS control connection stays in the process that
  accepted it, which both issues and checks its nonces), the quota table (`user_quota`/`total_quota` are counted per
  process for TURN on 443) and the port range (its relay sockets come from the whole range; a port another process
  holds fails to bind and the next one is tried, as in any one process).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService

from appliance.startup import ServicePlan

# Imported by a spare proxy worker before it is given a slot (appliance.worker), so taking one costs no imports.
PRELOAD = ("revproxy.workers", "revproxy.demux", "relay.service", "relay.tls", "relay.stats")

# Figures of the relay core in the process serving the HTTPS port are published as this relay "worker" index (plus
# the proxy worker's index), apart from the relay's own workers.
FIGURES_INDEX = 100


class RelayHandoff:
    """revproxy.demux.TurnHandoff over a relay core: a TURN control connection for a stream the proxy accepted."""

    def __init__(self, core: Any, clock: Any, local: tuple[str, int]) -> None:
        from relay.tls import TurnStreamFactory

        self.factories = {name: TurnStreamFactory(core, local, clock, name) for name in ("tcp", "tls")}

    def build(self, transport_name: str, addr: Any) -> Any:
        """The relay's protocol for this stream, or None when its connection limits refuse it."""
        return self.factories[transport_name].buildProtocol(addr)


class HttpsRelay(MultiService):
    """A relay core for the HTTPS port in a process where the relay service does not run: built like the relay
    service's (relay.service.RelayService, which is never started here, so it binds nothing), swept every second,
    reloaded on SIGHUP, its figures published, its allocations deleted when the process stops."""

    def __init__(self, source: str, reactor: Any, worker: int = 0) -> None:
        super().__init__()
        from appliance.publisher import StatsPublisher
        from relay.config import load_relay_config
        from relay.service import RelayService
        from relay.stats import service_snapshot

        # Not this process's to serve: the relay's own listeners (tls_listen's certificate is the relay's affair).
        config = dataclasses.replace(load_relay_config(source), tls_listen=(), certificate=None)
        self.relay = RelayService(config, reactor)
        self.core = self.relay.core
        sweep = TimerService(1.0, self.core.expire)
        sweep.clock = reactor
        sweep.setServiceParent(self)
        StatsPublisher("relay", FIGURES_INDEX + worker, lambda: service_snapshot(self.relay),
                       reactor).setServiceParent(self)

    def reload(self) -> None:
        self.relay.reload()

    def stopService(self) -> Any:
        result = super().stopService()
        self.core.close()
        return result


def compose(relay_plan: ServicePlan, proxy_plan: ServicePlan, proxy_config: Any, source: str) -> None:
    """Give the proxy's HTTPS listener the relay's TURN, in whichever processes serve the HTTPS port."""
    if proxy_plan.group is not None:
        # Proxy workers: each builds the proxy, then its own relay core (worker_service below).
        proxy_plan.group.entry = __name__
        proxy_plan.group.spec["relay_source"] = source
        return
    proxy = proxy_plan.service
    if relay_plan.service is None:
        proxy_plan.reload = _serve_own_core(proxy, HttpsRelay(source, proxy.reactor),  # type: ignore[union-attr]
                                            proxy_plan.reload)
        return
    https = proxy_config.https
    core = relay_plan.service.relay.core  # type: ignore[attr-defined]
    proxy.ctx.turn_handoff = RelayHandoff(core, proxy.reactor, (https.host, https.port))  # type: ignore[union-attr]


def worker_service(spec: dict[str, Any], sockets: list, reactor: Any) -> tuple[Any, Any]:
    """In a proxy worker process (appliance.worker) with turn_on_https: the proxy, with a relay core composed in."""
    from revproxy.workers import worker_service as proxy_worker_service

    service, reload_proxy = proxy_worker_service(spec, sockets, reactor)
    return service, _serve_own_core(service, HttpsRelay(spec["spec"]["relay_source"], reactor, spec["worker"]),
                                    reload_proxy)


def _serve_own_core(proxy: Any, own: HttpsRelay, reload_proxy: Callable[[], object] | None) -> Callable[[], None]:
    """`own` runs under the proxy's service and takes its TURN connections; the reload for both (SIGHUP)."""
    own.setServiceParent(proxy)
    https = proxy.config.https
    proxy.ctx.turn_handoff = RelayHandoff(own.core, own.relay.reactor, (https.host, https.port))

    def reload_both() -> None:
        if reload_proxy is not None:
            reload_proxy()
        own.reload()

    return reload_both
