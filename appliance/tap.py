"""`twistd rpturn`: the whole appliance — the relay and the reverse proxy — from one config file, in one process
tree.

Each service reads its own table (`[relay]`, `[revproxy]`) and makes its own plan (`relay.service.plan`,
`revproxy.service.plan`); `appliance.startup.build_process` puts them in one process with one SIGHUP dispatcher
(a reload reaches both services and every worker of both) and one supervisor for the worker groups. Any start-up
problem of either service is its one `FILE: [table] key: problem` line and exit status 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.python import usage


class ConfigOptions(usage.Options):
    """What every twistd plugin of ours takes (`rpturn`, `relay`, `revproxy`): --config, the appliance's TOML file.

    A plugin's own Options add their `longdesc` and `optParameters` (twistd gathers these over the base classes,
    so --config stays the first)."""

    synopsis = "[options]"
    optParameters = [["config", "c", "conf/rpturn.toml", "the appliance's TOML config file"]]


class Options(ConfigOptions):
    longdesc = "The rpturn appliance: STUN/TURN relay and HTTPS reverse proxy, both from the one --config file."


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from appliance.management import management_service
    from appliance.startup import build_process, exit_on_config_error
    from appliance.turn_on_https import compose as compose_turn_on_https
    from relay import service as relay_service
    from relay.config import load_relay_config
    from revproxy import config as revproxy_config
    from revproxy import service as revproxy_service

    path = options["config"]

    def make() -> Any:
        # Both tables validated before anything is bound, so a typo in either is reported first.
        relay_cfg = load_relay_config(path)
        proxy_cfg = revproxy_config.load(path)
        if relay_cfg.tls_listen and not relay_cfg.certificate:
            # TURN over TLS serves the proxy's certificate unless [relay] names its own.
            relay_cfg = dataclasses.replace(relay_cfg, certificate=revproxy_service.certificate_path(proxy_cfg))
        # [management]: made before the workers' plans, so every worker inherits where to publish its figures.
        management = management_service(path, reactor)
        relay_plan = relay_service.plan(relay_cfg, {}, reactor)
        proxy_plan = revproxy_service.plan(proxy_cfg, {}, reactor)
        if proxy_cfg.turn_on_https:
            compose_turn_on_https(relay_plan, proxy_plan, proxy_cfg, path)
        top = build_process([relay_plan, proxy_plan], reactor)
        if management is not None:
            management.setServiceParent(top)
            top.signals.on_reload("management", management.reload)
        return top

    return exit_on_config_error(make)
