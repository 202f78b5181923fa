"""TURN on the HTTPS port (`[revproxy] turn_on_https`): the relay's TURN stream protocol composed into the proxy.

The proxy's HTTPS listener looks at each connection's first bytes (revproxy.demux) and hands a STUN/TURN one — in
the clear, or inside the TLS the proxy terminated — to a `TurnHandoff`. The proxy never imports the relay; this
module, which assembles the appliance, gives it one: `RelayHandoff` builds the relay's own TCP control-connection
protocol (relay.shell / relay.tls) on the relay's core, so TURN on 443 is the same TURN as on 3478 and 5349 — the
same allocations table, credentials (users, userdb, shared secrets), nonce secret, restricted mode, quotas, port
range, per-source limits and figures (transport "tcp" or "tls").

Process model, and why. A TURN-over-TLS connection can only be recognised after the TLS handshake, in the process
that terminated it; TLS state cannot be handed to another process, so passing the socket to a relay worker (fd
passing) would only work for TURN in the clear. The relay's core is therefore composed *into the process that runs
the proxy*. With `workers = 1` for both services (the default) the appliance runs both in one process, and the
handoff uses the relay service's own core: nothing is duplicated, nothing is shared across processes.

With `workers > 1` the proxy runs in worker processes of its own. Serving TURN there would need a relay core per
proxy worker with its own slice of the relay port range, the shared quota table and the relay workers' nonce
secret; that is not built yet, so `turn_on_https` with workers is refused at start (one config line) rather than
half-working.
"""

from __future__ import annotations

from typing import Any

from appliance.config import ConfigError
from appliance.startup import ServicePlan


class RelayHandoff:
    """revproxy.demux.TurnHandoff over the relay's core: a TURN control connection for a stream the proxy accepted."""

    def __init__(self, core: Any, clock: Any, local: tuple[str, int]) -> None:
        from relay.tls import TurnStreamFactory

        self.factories = {name: TurnStreamFactory(core, local, clock, name) for name in ("tcp", "tls")}

    def build(self, transport_name: str, addr: Any) -> Any:
        """The relay's protocol for this stream, or None when its connection limits refuse it."""
        return self.factories[transport_name].buildProtocol(addr)


def compose(relay_plan: ServicePlan, proxy_plan: ServicePlan, proxy_config: Any) -> None:
    """Give the proxy's HTTPS listener the relay's TURN (both in this process), or refuse with one config line."""
    if relay_plan.service is None or proxy_plan.service is None:
        raise ConfigError(proxy_config.path, "revproxy", "turn_on_https",
                          "needs workers = 1 for both [relay] and [revproxy] (TURN on the HTTPS port is served in "
                          "the process that terminates TLS; not built for worker processes yet)")
    relay = relay_plan.service.relay  # type: ignore[attr-defined]
    proxy = proxy_plan.service
    https = proxy_config.https
    proxy.ctx.turn_handoff = RelayHandoff(relay.core, relay.reactor, (https.host, https.port))  # type: ignore[attr-defined]
