"""One worker process under `appliance.supervisor`: `python -m appliance.worker`, spec on stdin.

The supervisor hands over its bound listening sockets as descriptors 3, 4, ... (in the order of the spec's
`listeners`) and a JSON spec on stdin naming the service's entry module. That module's
`worker_service(spec, sockets, reactor) -> (service, reload)` builds the service; this module does what every
worker needs: die with the supervisor, log to stdout (the supervisor re-logs each line with the worker's name),
reload on SIGHUP and stop on SIGTERM through `appliance.signals`, like the twistd process does.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import sys

from appliance.config import ConfigError
from appliance.sockets import family_of


def _die_with_parent(parent: int) -> None:
    """Linux: SIGTERM when the supervisor dies without stopping us (e.g. SIGKILL), so no worker is orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before prctl took effect
        sys.exit(0)


def inherited_sockets(listeners: list[list]) -> list[socket.socket]:
    """Socket objects over descriptors 3, 4, ... as the supervisor passed them."""
    return [socket.socket(family_of(host), socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM,
                          fileno=fd)
            for fd, (kind, host, _port) in enumerate(listeners, start=3)]


def main() -> None:
    spec = json.loads(sys.stdin.read())
    _die_with_parent(spec["supervisor"])
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from appliance.signals import Signals

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout, timeFormat="")], redirectStandardIO=False)
    entry = importlib.import_module(spec["entry"])
    try:
        service, reload = entry.worker_service(spec, inherited_sockets(spec["listeners"]), reactor)
    except ConfigError as exc:  # the file changed since the supervisor read it
        print(f"cannot start: {exc}", flush=True)
        sys.exit(1)
    signals = Signals(reactor)
    signals.on_reload(spec["service"], reload)
    reactor.callWhenRunning(signals.install)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
