"""`workers = N`: the relay's worker group under the appliance's supervisor (`appliance.supervisor`).

N relay processes share the listen ports with SO_REUSEPORT. The kernel hashes each client's 5-tuple to one
worker's socket, so an allocation and all its packets stay in one process; each worker binds its own relay
sockets, in its own slice of the port range (`relay.service.worker_port_range`). The supervisor holds the listen
sockets across worker restarts (see there why), so a restart only touches the dead worker's own clients.

What must agree across workers is decided here, once, and handed to every worker in its spec: the nonce secret
(a nonce issued by one worker verifies in any other) and the shared quota table (`relay.quota`), a file created
when the supervisor starts and removed when it stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import tempfile
from typing import Any

from appliance.config import format_hostport
from appliance.supervisor import WorkerGroup
from relay.config import ConfigError, RelayConfig, load_relay_config, relay_config_from_table
from relay.quota import SharedQuota
from relay.service import RESTART_ONLY, listeners, makeService, split_sockets

# Imported by a spare worker before it is given a slot (`appliance.worker`), so that taking one costs no imports.
PRELOAD = ("relay.tls",)


def config_table(config: RelayConfig) -> dict[str, Any]:
    """The validated config as a `[relay]` table again (JSON-able), for the workers to validate once more."""
    table = {k: v for k, v in dataclasses.asdict(config).items() if v is not None and k != "source"}
    table["listen"] = [format_hostport(h, p) for h, p in config.listen]
    table["tls_listen"] = [format_hostport(h, p) for h, p in config.tls_listen]
    table["auth_secrets"] = list(config.auth_secrets)
    table["turn_clients"] = list(config.turn_clients)
    table["allowed_peers"] = list(config.allowed_peers)
    table["denied_peers"] = list(config.denied_peers)
    table["users"] = dict(config.users)
    return table


def worker_group(config: RelayConfig, overrides: dict) -> WorkerGroup:
    """The relay's workers: one UDP and one TCP listener per `listen` entry each, secret and quota shared."""
    secret = bytes.fromhex(config.nonce_secret) if config.nonce_secret else os.urandom(32)
    spec: dict[str, Any] = {"table": config_table(config), "source": config.source, "overrides": overrides,
                            "secret": secret.hex(), "quota": ""}

    def create_quota() -> None:
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, spec["quota"] = tempfile.mkstemp(prefix="rpturn-quota-", dir=shm)
        os.close(fd)
        SharedQuota.create(spec["quota"], config.workers)

    def remove_quota() -> None:
        if spec["quota"]:
            with contextlib.suppress(OSError):
                os.unlink(spec["quota"])

    return WorkerGroup("relay", config.workers, "relay.workers", config.source or "<config>", listeners(config),
                       spec, on_start=create_quota, on_stop=remove_quota)


def current_config(started: RelayConfig, overrides: dict) -> RelayConfig:
    """The config file as it is now (a worker started after a reload must not run the old settings), with what
    only a restart changes kept as the supervisor started; the supervisor's copy if the file no longer loads."""
    if not started.source or not os.path.exists(started.source):
        return started
    try:
        now = load_relay_config(started.source, overrides)
    except ConfigError as exc:
        print(f"the config file does not load ({exc}); starting with the one the supervisor started with", flush=True)
        return started
    return dataclasses.replace(now, **{key: getattr(started, key) for key in RESTART_ONLY})


def worker_service(spec: dict[str, Any], sockets: list[socket.socket], reactor: Any):
    """In a worker process (`appliance.worker`): the relay on the supervisor's sockets, and its reload."""
    own = spec["spec"]
    config = current_config(relay_config_from_table(own["table"], source=own["source"] or "<supervisor>"),
                            own["overrides"])
    quota = SharedQuota(own["quota"], spec["worker"], spec["workers"])
    pairs, tls = split_sockets(config, sockets)
    service = makeService(config, reactor, nonce_secret=bytes.fromhex(own["secret"]), inherited=pairs,
                          quota=quota, overrides=own["overrides"], worker=(spec["worker"], spec["workers"]),
                          inherited_tls=tls)
    return service, service.relay.reload
