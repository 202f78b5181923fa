"""`twistd rpturn`: the whole appliance — the relay and the reverse proxy — from one config file, in one process
tree.

Each service reads its own table (`[relay]`, `[revproxy]`) and makes its own plan (`relay.service.plan`,
`revproxy.service.plan`); `appliance.startup.build_process` puts them in one process with one SIGHUP dispatcher
(a reload reaches both services and every worker of both) and one supervisor for the worker groups. Any start-up
problem of either service is its one `FILE: [table] key: problem` line and exit status 1.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "The rpturn appliance: STUN/TURN relay and HTTPS reverse proxy, both from the one --config file."
    optParameters = [["config", "c", "conf/rpturn.toml", "the appliance's TOML config file"]]


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from appliance.management import management_service
    from appliance.startup import build_process, exit_on_config_error
    from relay import service as relay_service
    from relay.config import load_relay_config
    from revproxy import config as revproxy_config
    from revproxy import service as revproxy_service

    path = options["config"]

    def make() -> Any:
        # Both tables validated before anything is bound, so a typo in either is reported first.
        relay_cfg = load_relay_config(path)
        proxy_cfg = revproxy_config.load(path)
        # [management]: made before the workers' plans, so every worker inherits where to publish its figures.
        management = management_service(path, reactor)
        top = build_process([
            relay_service.plan(relay_cfg, {}, reactor),
            revproxy_service.plan(proxy_cfg, {}, reactor),
        ], reactor)
        if management is not None:
            management.setServiceParent(top)
            top.signals.on_reload("management", management.reload)
        return top

    return exit_on_config_error(make)
