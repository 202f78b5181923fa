"""One worker supervisor for both services: `workers = N` processes per service sharing its ports.

The model (first the relay's, now the proxy's too): the supervisor, which is the twistd process, binds every
listening socket itself, one per worker and listener, all in the port's SO_REUSEPORT group, and keeps them open
for as long as it runs. A worker process (`appliance.worker`) gets the group's sockets as descriptors 3, 4, ...
and its spec (its slot, which descriptors are its own, the configuration and whatever must agree across workers)
as JSON on stdin. The kernel maps a client's
5-tuple (UDP) or connection (TCP) to a position in the group: if a dying worker's socket left the group and its
replacement's joined, the survivors' clients would be shuffled onto other workers (a relay allocation lost). With
the sockets held here a restart changes nothing for anyone but the dead worker's own clients, and connections that
arrive while a worker restarts wait in its socket's queue instead of being refused.

A worker that ends is logged and replaced after a back-off (RESTART_DELAY doubling up to MAX_RESTART_DELAY; reset
once a worker has run STABLE_AFTER seconds). Starting a Python worker costs about a second of imports (more on a
busy machine), so each group keeps one spare: a worker process that has imported everything and waits for its spec
on stdin. A dead worker's slot is given to the spare (it starts serving within milliseconds of the back-off) and a
new spare SPARE_DELAY later. Every worker process gets the descriptors of all of its group's slots and
keeps only its own, so a spare can take any slot. SIGHUP (`reload`, registered with `appliance.signals`) is passed
to every worker of every service; stopping the supervisor sends SIGTERM to all of them (the proxy's workers drain),
waits up to each group's `stop_timeout` and kills what is left. Workers also get SIGTERM from the kernel if the
supervisor itself dies (PR_SET_PDEATHSIG, set in `appliance.worker`). Their log lines are re-logged here with the
service and worker number ("relay worker 1: ...").

`ready` fires once every slot of every group has had a worker print `appliance.worker.READY_LINE` (its service
started): that, not the binding, is when the appliance tells systemd READY=1, so `systemctl start` returns when the
workers serve rather than while they are still importing (a second or more on a busy machine).

Binding happens in the constructor, i.e. in the plugin's makeService: a port in use is then a one-line start-up
error (`appliance.config.ConfigError`), not a traceback from a half-started reactor.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger

from appliance.sockets import Listener, bind_all
from appliance.worker import READY_LINE

log = Logger()

RESTART_DELAY = 0.1
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 60.0
# After a spare took a slot, wait this long before starting the next one: its imports would compete for the CPU
# with the new worker's start.
SPARE_DELAY = 2.0


@dataclass
class WorkerGroup:
    """The workers of one service."""

    name: str  # "relay", "revproxy": in log lines
    count: int
    entry: str  # module whose worker_service(spec, sockets, reactor) -> (service, reload) runs in each worker
    path: str  # the config file, for error lines
    listeners: list[Listener]  # bound once per worker, in this order
    spec: dict[str, Any] = field(default_factory=dict)  # JSON-able; each worker also gets its index and the count
    stop_timeout: float = 10.0  # after SIGTERM, before SIGKILL
    on_start: Callable[[], None] | None = None  # e.g. create shared state the workers open
    on_stop: Callable[[], None] | None = None


class _Worker(protocol.ProcessProtocol):
    """One worker process; `index` is None while it is its group's spare."""

    def __init__(self, supervisor: Supervisor, group: WorkerGroup, started: float) -> None:
        self.supervisor, self.group, self.started = supervisor, group, started
        self.index: int | None = None
        self.partial = b""
        self.ended: defer.Deferred[None] = defer.Deferred()

    @property
    def label(self) -> str:
        if self.index is None:
            return f"{self.group.name} spare"
        return f"{self.group.name} worker {self.index}"

    def activate(self, index: int, now: float) -> None:
        """Take slot `index`: the spec goes down stdin, and the process starts serving."""
        self.index, self.started = index, now
        self.transport.write(self.supervisor.payload(self.group, index))
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        # One log event per read, not per line: formatting an event costs tens of microseconds, and a burst of
        # allocations arrives as many lines in one read.
        text, newline, self.partial = (self.partial + data).rpartition(b"\n")
        if not newline:
            self.partial = text + self.partial
            return
        prefix = f"{self.label}: "
        raw = [line.strip() for line in text.decode(errors="replace").split("\n")]
        lines = [prefix + line for line in raw if line]
        if lines:
            log.info("{lines}", lines="\n".join(lines), service=self.group.name, worker=self.index)
        if self.index is not None and READY_LINE in raw:
            self.supervisor.worker_ready(self.group.name, self.index)

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.supervisor.worker_ended(self, reason.value)
        self.ended.callback(None)

    @property
    def pid(self) -> int | None:
        return self.transport.pid if self.transport is not None else None


class Supervisor(Service):
    """Runs every group's workers and keeps them running."""

    def __init__(self, groups: list[WorkerGroup], reactor: Any) -> None:
        self.groups = groups
        self.reactor = reactor
        self.stopping = False
        self.workers: dict[tuple[str, int], _Worker] = {}
        self.spares: dict[str, _Worker] = {}
        self.restarts: dict[tuple[str, int | None], int] = {}
        self.sockets: dict[tuple[str, int], list[socket.socket]] = {}
        self.ready: defer.Deferred[None] = defer.Deferred()  # every slot has served once
        self._waiting_for = {(group.name, index) for group in groups for index in range(group.count)}
        try:
            for group in groups:
                for index in range(group.count):
                    self.sockets[group.name, index] = bind_all(group.listeners, group.path, reuse_port=True)
        except Exception:
            self._close_sockets()
            raise

    def payload(self, group: WorkerGroup, index: int) -> bytes:
        per_slot = len(group.listeners)
        return json.dumps({
            "service": group.name, "worker": index, "workers": group.count,
            # Descriptors 3, 4, ... hold every slot's sockets, slot after slot: this worker's are these.
            "fds": [3 + index * per_slot + i for i in range(per_slot)],
            "listeners": [[lst.kind, lst.host, lst.port] for lst in group.listeners],
            "spec": group.spec,
        }).encode()

    def startService(self) -> None:
        super().startService()
        for group in self.groups:
            if group.on_start is not None:
                group.on_start()
            for index in range(group.count):
                self.spawn(group, index)
            self._spawn_spare(group)
            log.info("{service}: {count} workers sharing {listeners} (SO_REUSEPORT)", service=group.name,
                     count=group.count, listeners=", ".join(str(lst) for lst in group.listeners))

    def _start_process(self, group: WorkerGroup) -> _Worker:
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for index in range(group.count):
            for sock in self.sockets[group.name, index]:
                child_fds[len(child_fds)] = sock.fileno()
        # Only the supervisor speaks to systemd (NotifyAccess=main).
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        worker = _Worker(self, group, self.reactor.seconds())
        argv = [sys.executable, "-m", "appliance.worker", group.entry, str(os.getpid())]
        self.reactor.spawnProcess(worker, sys.executable, argv, env=env, childFDs=child_fds)
        return worker

    def spawn(self, group: WorkerGroup, index: int) -> None:
        """Put a worker in slot `index`: the group's spare if it has one ready, else a new process."""
        spare = self.spares.pop(group.name, None)
        worker = spare if spare is not None and not spare.ended.called else self._start_process(group)
        worker.activate(index, self.reactor.seconds())
        self.workers[group.name, index] = worker
        log.info("{label} started (pid {pid}{how})", label=worker.label, pid=worker.pid,
                 how=", the spare" if worker is spare else "")
        if spare is not None and not self.stopping:
            self.reactor.callLater(SPARE_DELAY, self._spawn_spare, group)

    def worker_ready(self, service: str, index: int) -> None:
        """Slot (service, index) has a worker serving; `ready` fires with the last slot's first."""
        self._waiting_for.discard((service, index))
        if not self._waiting_for and not self.ready.called:
            log.info("every worker is serving")
            self.ready.callback(None)

    def _spawn_spare(self, group: WorkerGroup) -> None:
        if not self.stopping and group.name not in self.spares:
            self.spares[group.name] = self._start_process(group)

    def worker_ended(self, worker: _Worker, reason: Any) -> None:
        if self.stopping:
            return
        # The back-off is kept per slot, and for the group's spare under index None.
        key = (worker.group.name, worker.index)
        if self.reactor.seconds() - worker.started > STABLE_AFTER:
            self.restarts[key] = 0  # it had been running fine: no back-off for this one
        count = self.restarts.get(key, 0)
        delay = min(RESTART_DELAY * 2**count, MAX_RESTART_DELAY)
        self.restarts[key] = count + 1
        if worker.index is None:  # the spare died before it was needed: start another, takes no slot
            if self.spares.get(worker.group.name) is worker:
                del self.spares[worker.group.name]
            log.error("{label} ended ({reason}); starting another in {delay:.2f} s", label=worker.label,
                      reason=reason, delay=delay)
            self.reactor.callLater(delay, self._spawn_spare, worker.group)
            return
        log.error("{label} ended ({reason}); starting a new one in {delay:.2f} s", label=worker.label,
                  reason=reason, delay=delay, service=worker.group.name, worker=worker.index)
        self.reactor.callLater(delay, self._respawn, worker.group, worker.index)

    def _respawn(self, group: WorkerGroup, index: int) -> None:
        if not self.stopping:
            self.spawn(group, index)

    def signal_all(self, signum: int, *, spares: bool = False) -> int:
        sent = 0
        for worker in [*self.workers.values(), *(self.spares.values() if spares else ())]:
            if not worker.ended.called and worker.pid:
                worker.transport.signalProcess(signum)
                sent += 1
        return sent

    def reload(self) -> None:
        """SIGHUP to every worker: each reloads its own configuration."""
        count = self.signal_all(signal.SIGHUP)
        log.info("reload passed on to {count} workers", count=count)

    def pids(self, service: str | None = None) -> list[int]:
        return [w.pid for (name, _), w in self.workers.items()
                if (service is None or name == service) and not w.ended.called and w.pid]

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.stopping = True
        ended = [w.ended for w in [*self.workers.values(), *self.spares.values()] if not w.ended.called]
        self.signal_all(signal.SIGTERM, spares=True)
        timers = []
        for group in self.groups:
            def kill(group: WorkerGroup = group) -> None:
                for worker in [*self.workers.values(), *self.spares.values()]:
                    if worker.group is group and not worker.ended.called and worker.pid:
                        log.warn("{label} did not stop in {t:.0f} s: killed", label=worker.label,
                                 t=group.stop_timeout)
                        worker.transport.signalProcess("KILL")
            timers.append(self.reactor.callLater(group.stop_timeout, kill))

        def done(_: object) -> None:
            for timer in timers:
                if timer.active():
                    timer.cancel()
            self._close_sockets()
            for group in self.groups:
                if group.on_stop is not None:
                    group.on_stop()
            log.info("workers stopped")

        return defer.DeferredList(ended).addCallback(done)

    def _close_sockets(self) -> None:
        for socks in self.sockets.values():
            for sock in socks:
                sock.close()
        self.sockets = {}
