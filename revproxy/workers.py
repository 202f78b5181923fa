"""A worker process for `workers = N`: the same proxy on the same ports (SO_REUSEPORT), started by worker 0.

`python -m revproxy.workers <config path> <overrides json> <index>`. It logs to stdout like its parent, drains
on SIGTERM, reloads on SIGHUP, and exits when its parent goes away.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from twisted.internet.task import LoopingCall
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from revproxy import config as configmod
from revproxy import service
from revproxy.config import ConfigError

log = Logger(namespace="revproxy")


def main(argv: list[str] | None = None) -> int:
    path, overrides_json, index = (argv or sys.argv[1:])[:3]
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    overrides = json.loads(overrides_json)
    try:
        cfg = configmod.load(path, overrides)
        svc = service.makeService(cfg, reactor, overrides, worker_index=int(index))
    except ConfigError as e:
        print(f"revproxy worker {index}: {e}", file=sys.stderr)
        return 1
    parent = os.getppid()

    def orphaned() -> None:
        if os.getppid() != parent:
            reactor.stop()

    reactor.callWhenRunning(svc.privilegedStartService)
    reactor.callWhenRunning(svc.startService)
    reactor.callWhenRunning(
        lambda: signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(svc.reload)))
    reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
    LoopingCall(orphaned).start(1.0, now=False)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
