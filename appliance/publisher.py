"""`StatsPublisher`: the Twisted service that hands one service process's snapshot to the management listener.

Added by each service's makeService. It registers the snapshot callable in this process (a management listener in
the same process reads it fresh at each scrape) and, when `RPTURN_STATS_DIR` is set (the appliance's management
listener sets it before the workers are spawned), writes the snapshot to that directory every second and once
more when the service stops. The snapshot callable reads the core's plain counters: nothing is done per packet.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from appliance import stats

log = Logger()


class StatsPublisher(Service):
    def __init__(self, service: str, worker: int, snapshot: Callable[[], stats.Snapshot], reactor,
                 directory: str | None = None) -> None:
        self.service = service
        self.worker = worker
        self.snapshot = snapshot
        self.reactor = reactor
        self.directory = directory if directory is not None else os.environ.get(stats.ENV_DIR, "")
        self._loop: LoopingCall | None = None
        self._failed = False

    def startService(self) -> None:
        super().startService()
        stats.register_local(self.service, self.worker, self.snapshot)
        if self.directory:
            self._loop = LoopingCall(self.publish)
            self._loop.clock = self.reactor
            self._loop.start(stats.INTERVAL, now=True)

    def stopService(self):
        super().stopService()
        stats.unregister_local(self.service, self.worker)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
            self.publish()  # the last counts before this process goes

    def publish(self) -> None:
        body = self.snapshot()
        body["time"] = time.time()
        try:
            stats.write_snapshot(self.directory, stats.envelope(self.service, self.worker, os.getpid(), body))
        except OSError as exc:
            if not self._failed:  # once, not every second
                log.warn("cannot write figures to {directory}: {error}", directory=self.directory, error=exc)
            self._failed = True
        else:
            self._failed = False
