"""One worker process under `appliance.supervisor`: `python -m appliance.worker ENTRY SUPERVISOR_PID`.

Everything slow happens first — dying with the supervisor arranged, Twisted, the service's entry module and its
`PRELOAD` modules imported — and only then is the spec read from stdin: a spare worker waits there, ready, until the
supervisor gives it a slot. The supervisor passes the listening sockets of every slot of the group as descriptors 3,
4, ...; the spec says which are this worker's (`fds`, in the order of `listeners`), the others are closed. The entry
module's `worker_service(spec, sockets, reactor) -> (service, reload)` builds the service; this module does what
every worker needs: log to stdout (the supervisor re-logs each line with the worker's name), reload on SIGHUP and
stop on SIGTERM through `appliance.signals`, like the twistd process does. Once its service has started (its
sockets are in the reactor) it prints `READY_LINE`: the supervisor tells systemd READY=1 only when every slot's
worker has said so, not while they are still importing.
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

READY_LINE = "worker ready: serving"


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


def inherited_sockets(spec: dict) -> list[socket.socket]:
    """This worker's sockets (descriptors `spec["fds"]`); every other inherited listening socket is closed."""
    own = spec["fds"]
    for fd in range(3, 3 + spec["workers"] * len(spec["listeners"])):
        if fd not in own:
            os.close(fd)
    return [socket.socket(family_of(host), socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM, fileno=fd)
            for fd, (kind, host, _port) in zip(own, spec["listeners"], strict=True)]


def main(argv: list[str]) -> None:
    entry_name, supervisor = argv
    # Until its own handler is installed a SIGHUP must not kill a worker that is still starting (its config is
    # read fresh anyway) or a spare.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _die_with_parent(int(supervisor))
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from appliance.signals import Signals

    entry = importlib.import_module(entry_name)
    for name in getattr(entry, "PRELOAD", ()):
        importlib.import_module(name)
    data = sys.stdin.read()  # a spare waits here until it is given a slot
    if not data.strip():  # stdin closed without a slot: the supervisor is stopping
        return
    spec = json.loads(data)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout, timeFormat="")], redirectStandardIO=False)
    try:
        service, reload = entry.worker_service(spec, inherited_sockets(spec), reactor)
    except ConfigError as exc:  # the file changed since the supervisor read it
        print(f"cannot start: {exc}", flush=True)
        sys.exit(1)
    signals = Signals(reactor)
    signals.on_reload(spec["service"], reload)
    reactor.callWhenRunning(signals.install)

    def start() -> None:
        service.startService()
        print(READY_LINE, flush=True)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
