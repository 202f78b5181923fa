"""`workers = N`: the proxy's worker group under the appliance's supervisor (`appliance.supervisor`).

N proxy processes share the https and http ports with SO_REUSEPORT; the supervisor binds the sockets, keeps them
across worker restarts and replaces a dead worker. Each worker reads the config file itself (path and command-line
overrides are in its spec), so a SIGHUP the supervisor passes on reloads nodes and certificate in every worker, and
drains on SIGTERM like the single-process proxy.
"""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

from appliance.config import parse_hostport
from appliance.supervisor import WorkerGroup
from revproxy import config as configmod
from revproxy import service
from revproxy.config import Listen, ProxyConfig

# Imported by a spare worker before it is given a slot (`appliance.worker`), so that taking one costs no imports.
PRELOAD = ("revproxy.demux",)

# Keys a reload does not change (the supervisor's sockets depend on them).
RESTART_ONLY = ("https", "http", "workers")
# Beyond drain_timeout, what a worker may take to close what is left and exit.
STOP_MARGIN = 5.0


def worker_group(config: ProxyConfig, overrides: dict[str, Any]) -> WorkerGroup:
    started = {key: getattr(config, key) for key in RESTART_ONLY}
    spec = {"path": config.path, "overrides": overrides,
            "started": {key: str(value) if isinstance(value, Listen) else value for key, value in started.items()}}
    return WorkerGroup("revproxy", config.workers, "revproxy.workers", config.path, service.listeners(config),
                       spec, stop_timeout=config.drain_timeout + STOP_MARGIN)


def worker_service(spec: dict[str, Any], sockets: list[socket.socket], reactor: Any):
    """In a worker process (`appliance.worker`): the proxy on the supervisor's sockets, and its reload."""
    own = spec["spec"]
    # The file as it is now (a worker started after a reload must not run the old settings), except what only a
    # restart changes: the supervisor's sockets were bound for the listeners it started with.
    started = {key: (Listen(*parse_hostport(value)) if isinstance(value, str) and value else value)
               for key, value in own["started"].items()}
    cfg = dataclasses.replace(configmod.load(own["path"], own["overrides"]), **started)
    svc = service.makeService(cfg, reactor, own["overrides"], worker_index=spec["worker"])
    svc.sockets = sockets
    return svc, svc.reload
