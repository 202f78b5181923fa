"""The `[management]` listener: GET /metrics (Prometheus), GET /status (JSON), GET / (the HTML status page).

Runs in the appliance's main (twistd) process. Figures come from every process of both services through
`appliance.stats`: snapshots of the services running in this process are read fresh, the workers' from the spool
directory this service creates and announces to them in `RPTURN_STATS_DIR` — set when this service is made, i.e.
before the supervisor spawns any worker, which inherits the environment.

Access: a client outside `allow` (loopback only by default) gets 403 and one rate-limited log line. The socket is
bound when the service is made, so a port in use is the one-line start-up error `FILE: [management] listen: ...`.
A scrape with 2 + 2 workers costs about 5 ms of this process's CPU (four small files read and summed, measured on a
busy 2-core machine); /status about 2.5 ms.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.web import resource, server

from appliance import stats
from appliance.config import ConfigError, format_hostport
from appliance.management_config import TABLE, ManagementConfig, load_management_config
from appliance.metrics import CONTENT_TYPE, render
from appliance.sockets import Listener, bind_listener, family_of
from appliance.status import build_status
from appliance.status_page import render_page

log = Logger()

REFUSAL_LOG_INTERVAL = 10.0  # at most one line about refused clients per interval: anyone can cause them


class Figures:
    """Gathers and sums the snapshots; the one place that knows where they are."""

    def __init__(self, directory: str, started: float | None = None) -> None:
        self.directory = directory
        self.started = started if started is not None else time.time()

    def gather(self) -> tuple[dict[str, stats.ServiceFigures], list[dict]]:
        snapshots = stats.local_snapshots()
        if self.directory:
            snapshots += stats.read_spool(self.directory, skip_pid=os.getpid())
        figures = stats.aggregate(snapshots)
        return figures, self.processes(figures)

    @staticmethod
    def processes(figures: dict[str, stats.ServiceFigures]) -> list[dict]:
        """Memory and open files of this process and of every live worker, named by what runs in it."""
        roles: dict[int, list[str]] = {os.getpid(): ["main"]}
        for service, f in sorted(figures.items()):
            for worker, pid in sorted(f.pids):
                roles.setdefault(pid, []).append(f"{service}-{worker}")
        out = []
        for pid, names in roles.items():
            reading = stats.process_figures(pid)
            if reading is not None:
                out.append({"process": "+".join(names), "pid": pid, "rss_bytes": reading[0],
                            "open_fds": reading[1]})
        return out

    def metrics(self) -> bytes:
        figures, processes = self.gather()
        return render(figures, processes, self.started)

    def status(self) -> dict[str, Any]:
        figures, processes = self.gather()
        return build_status(figures, processes, self.started, time.time())


class ManagementResource(resource.Resource):
    isLeaf = True

    def __init__(self, config: ManagementConfig, figures: Figures, clock=time.monotonic) -> None:
        super().__init__()
        self.config = config
        self.figures = figures
        self.clock = clock
        self._refused = 0
        self._last_refusal_log = float("-inf")

    def render(self, request: server.Request) -> bytes:
        host = request.getClientAddress().host
        if not self.config.allows(host):
            self._log_refusal(host)
            return self._reply(request, 403, "text/plain; charset=utf-8", b"forbidden: not in [management] allow\n")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return self._reply(request, 405, "text/plain; charset=utf-8", b"method not allowed\n")
        path = request.path
        if path == b"/metrics":
            return self._reply(request, 200, CONTENT_TYPE, self.figures.metrics())
        if path == b"/status":
            body = json.dumps(self.figures.status(), indent=1).encode() + b"\n"
            return self._reply(request, 200, "application/json", body)
        if path in (b"/", b"/index.html"):
            page = render_page(self.figures.status(), time.time()).encode()
            return self._reply(request, 200, "text/html; charset=utf-8", page)
        return self._reply(request, 404, "text/plain; charset=utf-8", b"not found (try /, /status or /metrics)\n")

    @staticmethod
    def _reply(request: server.Request, code: int, content_type: str, body: bytes) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return body

    def _log_refusal(self, host: str) -> None:
        self._refused += 1
        now = self.clock()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
            log.warn("management listener refused {count} request(s), latest from {source}: not in [management] "
                     "allow", count=self._refused, source=host, event="management_refused")
            self._refused = 0
            self._last_refusal_log = now


class _QuietSite(server.Site):
    def log(self, request: server.Request) -> None:
        pass  # scrapes every few seconds would drown the log: errors and refusals are logged instead


class ManagementService(Service):
    """The listener. Made (and its socket bound) in the plugin's makeService; serves from startService."""

    def __init__(self, config: ManagementConfig, reactor, directory: str | None = None) -> None:
        self.config = config
        self.reactor = reactor
        assert config.listen is not None
        host, port = config.listen
        self.socket = bind_listener(Listener("tcp", host, port, TABLE, "listen"), config.source)
        self.owns_directory = directory is None
        if directory is None:
            directory = tempfile.mkdtemp(prefix="rpturn-stats-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        self.directory = directory
        os.environ[stats.ENV_DIR] = directory  # inherited by every worker spawned from now on
        self.figures = Figures(directory)
        self.resource = ManagementResource(config, self.figures)
        self.port = None
        if self.owns_directory:
            # Removed after every service stopped (the workers write their last figures while the supervisor stops
            # them); atexit covers a start-up error that ends the process before the reactor ever ran (twistd ends
            # a SIGTERM-stopped process by re-raising the signal, which skips atexit: hence both).
            reactor.addSystemEventTrigger("after", "shutdown", shutil.rmtree, directory, ignore_errors=True)
            atexit.register(shutil.rmtree, directory, ignore_errors=True)

    def startService(self) -> None:
        super().startService()
        site = _QuietSite(self.resource)
        host, _ = self.config.listen
        self.port = self.reactor.adoptStreamPort(self.socket.fileno(), family_of(host), site)
        self.socket.close()  # the reactor holds its own duplicate
        address = self.port.getHost()
        log.info("management listener on http://{where}/ (/metrics, /status)",
                 where=format_hostport(address.host, address.port))

    def stopService(self):
        super().stopService()
        return self.port.stopListening() if self.port is not None else None

    def reload(self) -> None:
        """SIGHUP: a new `allow` applies to the next request; a new `listen` needs a restart."""
        try:
            new = load_management_config(self.config.source)
        except ConfigError as exc:
            log.error("reload refused, the management listener keeps its configuration: {error}", error=str(exc))
            return
        if new.listen != self.config.listen:
            log.warn("[management] listen changed in {path}: that needs a restart; still listening on the old "
                     "address", path=self.config.source)
            new = ManagementConfig(listen=self.config.listen, allow=new.allow, source=new.source)
        self.config = self.resource.config = new


def management_service(path: str, reactor) -> ManagementService | None:
    """The listener the config file asks for, or None when `[management] listen = ""`. ConfigError when bad."""
    config = load_management_config(path)
    if config.listen is None:
        return None
    return ManagementService(config, reactor)
