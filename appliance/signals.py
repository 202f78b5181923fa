"""One signal path for the whole process: SIGHUP reloads every service in it, SIGTERM stops them all.

Each service registers a reload callable (`Signals.on_reload`); the worker supervisor registers one that passes
SIGHUP on to every worker. SIGHUP is installed once (`Signals.install`, when the reactor runs: the reactor leaves it
at its default, which kills the process) and runs the reloads in the reactor thread, in registration order; one
that raises is logged and does not stop the others. systemd hears RELOADING=1 before and READY=1 after.

SIGTERM and SIGINT stay the reactor's own: it stops, and its "before shutdown" trigger runs the services'
stopService (the proxy drains, the supervisor stops the workers and waits for them). `Signals.install` only adds
STOPPING=1 for systemd to that path. A worker process uses the same class for its own services.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from appliance import sdnotify

log = Logger()


class Signals:
    """The process's SIGHUP dispatcher."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.reloads: list[tuple[str, Callable[[], object]]] = []
        self.installed = False

    def on_reload(self, name: str, reload: Callable[[], object]) -> None:
        """Call `reload()` on every SIGHUP; `name` is for the log."""
        self.reloads.append((name, reload))

    def install(self) -> None:
        """Take over SIGHUP; call from the reactor thread once it runs (twistd: callWhenRunning)."""
        if self.installed:
            return
        try:
            signal.signal(signal.SIGHUP, self._on_sighup)
        except ValueError:  # not the main thread (in-process tests): nobody can send us signals anyway
            return
        self.installed = True
        self.reactor.addSystemEventTrigger("before", "shutdown", sdnotify.notify, sdnotify.STOPPING)

    def _on_sighup(self, signum: int, frame: object) -> None:
        self.reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """Run every registered reload (what SIGHUP does)."""
        sdnotify.reloading()
        for name, reload in self.reloads:
            try:
                reload()
            except Exception:
                log.failure("reloading the {name} failed; it keeps running as it was", name=name)
        sdnotify.notify(sdnotify.READY)
