"""Putting a process together: the services it runs in-process, the worker groups it supervises, one signal path.

Each twistd plugin (`relay`, `revproxy`, `rpturn`) asks its service(s) for a `ServicePlan` — either an in-process
service with its reload callable (`workers = 1`) or a `WorkerGroup` for the supervisor (`workers > 1`) — and
`build_process` turns the plans into the process's top service: one `Signals` (SIGHUP reloads every service, the
supervisor passes it to the workers), one `Supervisor` for every group, READY=1 to systemd once the process runs and
every worker serves.

Start-up errors: plans are made in the plugin's makeService, which binds every listener and checks what only the
running host can tell (a port in use, a `relay_ip` that is not ours, a userdb or certificate that cannot be read).
`exit_on_config_error` turns the ConfigError into twistd's own way of refusing to start, `SystemExit(message)`: the
one line `FILE: [table] key: problem` on stderr, exit status 1, no traceback and no usage text (a
`usage.UsageError` raised while parsing options would print the whole `--help` first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.application.service import IService, MultiService

from appliance import sdnotify
from appliance.config import ConfigError
from appliance.signals import Signals
from appliance.supervisor import Supervisor, WorkerGroup

T = TypeVar("T")


@dataclass
class ServicePlan:
    """One service's part of the process: `service` + `reload` in-process, or a `group` of workers."""

    name: str
    service: IService | None = None
    reload: Callable[[], object] | None = None
    group: WorkerGroup | None = None


def build_process(plans: list[ServicePlan], reactor: Any) -> MultiService:
    """The process's top service; `.signals` and `.supervisor` (or None) are attributes for tests and callers."""
    top = MultiService()
    signals = Signals(reactor)
    for plan in plans:
        if plan.service is not None:
            plan.service.setServiceParent(top)
        if plan.reload is not None:
            signals.on_reload(plan.name, plan.reload)
    groups = [plan.group for plan in plans if plan.group is not None]
    supervisor = Supervisor(groups, reactor) if groups else None
    if supervisor is not None:
        supervisor.setServiceParent(top)
        signals.on_reload("workers", supervisor.reload)
    # twistd starts the services before the reactor runs, and every listener was bound in makeService already; the
    # workers still have to say they serve.
    reactor.callWhenRunning(signals.install)
    if supervisor is None:
        reactor.callWhenRunning(sdnotify.notify, sdnotify.READY)
    else:
        supervisor.ready.addCallback(lambda _: sdnotify.notify(sdnotify.READY))
    top.signals = signals  # type: ignore[attr-defined]
    top.supervisor = supervisor  # type: ignore[attr-defined]
    return top


def exit_on_config_error(make: Callable[[], T]) -> T:
    """`make()`, or twistd's clean refusal to start: the ConfigError's one line on stderr, exit status 1."""
    try:
        return make()
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
