"""`StatsPublisher`: the Twisted service that hands one service process's snapshot to the management listener.

Added by each service's makeService. It registers the snapshot callable in this process (a management listener in
the same process reads it fresh at each scrape) and, when `RPTURN_STATS_DIR` is set (the appliance's management
listener sets it before the workers are spawned), writes the snapshot to that directory every second and once
more when the service stops. The snapshot callable reads the core's plain counters: nothing is done per packet.

A snapshot walks the live allocations (their own packet counts), about 1.5-3 µs each on a busy 2-core machine:
when that gets long, the next one waits longer, so publishing never takes more than MAX_SHARE of the CPU
(10 000 allocations: ~30 ms, so every 1.5 s instead of every second).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from twisted.application.service import Service
from twisted.logger import Logger

from appliance import stats

log = Logger()

MAX_SHARE = 0.02  # of one core, for taking and writing snapshots


class StatsPublisher(Service):
    def __init__(self, service: str, worker: int, snapshot: Callable[[], stats.Snapshot], reactor,
                 directory: str | None = None) -> None:
        self.service = service
        self.worker = worker
        self.snapshot = snapshot
        self.reactor = reactor
        self.directory = directory if directory is not None else os.environ.get(stats.ENV_DIR, "")
        self._timer = None
        self._failed = False

    def startService(self) -> None:
        super().startService()
        stats.register_local(self.service, self.worker, self.snapshot)
        if self.directory:
            self._tick()

    def stopService(self):
        super().stopService()
        stats.unregister_local(self.service, self.worker)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
            self.publish()  # the last counts before this process goes
        self._timer = None

    def _tick(self) -> None:
        began = time.perf_counter()
        self.publish()
        cost = time.perf_counter() - began
        self._timer = self.reactor.callLater(max(stats.INTERVAL, cost / MAX_SHARE), self._tick)

    def publish(self) -> None:
        try:
            body = self.snapshot()
        except Exception:  # a bug in the figures must never stop the service they describe
            if not self._failed:
                log.failure("taking the {service} figures failed", service=self.service)
            self._failed = True
            return
        body["time"] = time.time()
        try:
            stats.write_snapshot(self.directory, stats.envelope(self.service, self.worker, os.getpid(), body))
        except OSError as exc:
            if not self._failed:  # once, not every second
                log.warn("cannot write figures to {directory}: {error}", directory=self.directory, error=exc)
            self._failed = True
        else:
            self._failed = False
