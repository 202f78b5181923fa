"""`workers = N`: N relay processes sharing the listen ports with SO_REUSEPORT, under one supervisor.

The kernel hashes each client's 5-tuple to one worker's socket, so an allocation and all its packets stay in one
process; each worker binds its own relay sockets. The supervisor binds the listen sockets (one UDP and one TCP per
worker and listen address) and keeps them open for the workers' whole life: the kernel maps a 5-tuple to a position
in the port's SO_REUSEPORT group, so if a dying worker's socket left the group and its replacement's joined, the
survivors' clients would be shuffled onto other workers and lose their allocations. With the sockets held here,
a restart changes nothing for anyone but the dead worker's own clients. What must agree across workers is passed
down at start: the nonce secret (a nonce issued by one worker verifies in any other) and the shared quota table
(`relay.quota`).

The supervisor is the twistd process. It starts the workers (`python -m relay.workers`), hands each its
configuration on stdin, re-logs their log lines with the worker's number, forwards SIGHUP to them, restarts one
that dies (logged, with a back-off), and on SIGTERM stops them all before exiting.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger

from relay.config import RelayConfig, relay_config_from_table

log = Logger()

RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
STOP_TIMEOUT = 10.0
STABLE_AFTER = 60.0


def config_to_json(config: RelayConfig, overrides: dict) -> str:
    from dataclasses import asdict

    table = {k: v for k, v in asdict(config).items() if v is not None and k != "source"}
    table["listen"] = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in config.listen]
    table["allowed_peers"] = list(config.allowed_peers)
    table["denied_peers"] = list(config.denied_peers)
    table["users"] = dict(config.users)
    return json.dumps({"table": table, "source": config.source, "overrides": overrides})


class _WorkerProtocol(protocol.ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int, payload: bytes) -> None:
        self.supervisor = supervisor
        self.index = index
        self.payload = payload
        self.partial = b""
        self.ended = defer.Deferred()
        self.started = 0.0

    def connectionMade(self) -> None:
        self.transport.write(self.payload)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        # One log event per read, not per line: formatting an event costs tens of microseconds, and a burst of
        # allocations arrives as many lines in one read. Continuation lines keep the worker prefix.
        text, newline, self.partial = (self.partial + data).rpartition(b"\n")
        if not newline:
            self.partial = text + self.partial
            return
        prefix = f"worker {self.index}: "
        lines = [prefix + line for line in text.decode(errors="replace").split("\n") if line.strip()]
        if lines:
            log.info("{lines}", lines="\n".join(lines), worker=self.index)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.supervisor.worker_ended(self.index, reason.value)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """Runs `config.workers` relay worker processes and keeps them running."""

    def __init__(self, config: RelayConfig, reactor, overrides: dict | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.overrides = overrides or {}
        self.secret = bytes.fromhex(config.nonce_secret) if config.nonce_secret else os.urandom(32)
        self.workers: dict[int, _WorkerProtocol] = {}
        self.restarts: dict[int, int] = {}
        self.quota_path = ""
        self.stopping = False
        self.sockets: list[list] = []  # per worker: [udp, tcp] per listen entry

    def startService(self) -> None:
        super().startService()
        from relay.quota import SharedQuota
        from relay.service import raise_open_files_limit

        raise_open_files_limit()  # inherited by the workers
        fd, self.quota_path = tempfile.mkstemp(prefix="rpturn-quota-", dir="/dev/shm" if os.path.isdir(
            "/dev/shm") else None)
        os.close(fd)
        SharedQuota.create(self.quota_path, self.config.workers)
        from relay.server import open_tcp_listener, open_udp_socket

        for _index in range(self.config.workers):
            self.sockets.append([
                (open_udp_socket(host, port, reuse_port=True), open_tcp_listener(host, port, reuse_port=True))
                for host, port in self.config.listen
            ])
        for index in range(self.config.workers):
            self.spawn(index)
        self.reactor.callWhenRunning(self._install_sighup)
        log.info("relay supervisor started {count} workers sharing {listen} (SO_REUSEPORT)",
                 count=self.config.workers, listen=self.config.listen)

    def _install_sighup(self) -> None:
        signal.signal(signal.SIGHUP, lambda signum, frame: self.reactor.callFromThread(self.forward, signal.SIGHUP))

    def spawn(self, index: int) -> None:
        # The worker's listen sockets become its descriptors 3, 4, 5, ... (UDP, TCP per listen entry).
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for pair in self.sockets[index]:
            for sock in pair:
                child_fds[len(child_fds)] = sock.fileno()
        payload = json.dumps({
            "config": json.loads(config_to_json(self.config, self.overrides)),
            "secret": self.secret.hex(),
            "quota": self.quota_path,
            "worker": index,
            "workers": self.config.workers,
        }).encode()
        worker = _WorkerProtocol(self, index, payload)
        worker.started = self.reactor.seconds()
        self.workers[index] = worker
        self.reactor.spawnProcess(worker, sys.executable, [sys.executable, "-m", "relay.workers"],
                                  env=os.environ.copy(), childFDs=child_fds)

    def worker_ended(self, index: int, reason) -> None:
        if self.stopping:
            return
        if self.reactor.seconds() - self.workers[index].started > STABLE_AFTER:
            self.restarts[index] = 0  # it had been running fine: no back-off for this one
        count = self.restarts.get(index, 0)
        delay = min(RESTART_DELAY * 2**count, MAX_RESTART_DELAY)
        self.restarts[index] = count + 1
        log.error("relay worker {worker} ended ({reason}); restarting it in {delay:.0f} s",
                  worker=index, reason=reason, delay=delay)
        self.reactor.callLater(delay, self._respawn, index)

    def _respawn(self, index: int) -> None:
        if not self.stopping:
            self.spawn(index)

    def forward(self, signum: int) -> None:
        for worker in self.workers.values():
            if worker.transport is not None and worker.transport.pid:
                worker.transport.signalProcess(signum)
        log.info("forwarded signal {signal} to {count} workers", signal=signum, count=len(self.workers))

    def pids(self) -> list[int]:
        return [w.transport.pid for w in self.workers.values() if w.transport is not None and w.transport.pid]

    def stopService(self):
        super().stopService()
        self.stopping = True
        ended = [w.ended for w in self.workers.values() if not w.ended.called]
        self.forward(signal.SIGTERM)

        def kill_stragglers() -> None:
            for worker in self.workers.values():
                if not worker.ended.called and worker.transport is not None and worker.transport.pid:
                    worker.transport.signalProcess("KILL")

        timer = self.reactor.callLater(STOP_TIMEOUT, kill_stragglers)

        def done(_):
            if timer.active():
                timer.cancel()
            if self.quota_path and os.path.exists(self.quota_path):
                os.unlink(self.quota_path)
            for pairs in self.sockets:
                for udp, tcp in pairs:
                    udp.close()
                    tcp.close()
            log.info("relay workers stopped")

        return defer.DeferredList(ended).addCallback(done)


def run_worker() -> None:
    """Entry point of one worker process: configuration on stdin, log lines on stdout."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from relay.quota import SharedQuota
    from relay.service import makeService

    _die_with_parent()
    spec = json.loads(sys.stdin.read())
    config = relay_config_from_table(spec["config"]["table"], source=spec["config"]["source"] or "<supervisor>")
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout, timeFormat="")],
                                     redirectStandardIO=False)
    quota = SharedQuota(spec["quota"], spec["worker"], spec["workers"])
    inherited = []
    fd = 3
    for host, _port in config.listen:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        inherited.append((socket.socket(family, socket.SOCK_DGRAM, fileno=fd),
                          socket.socket(family, socket.SOCK_STREAM, fileno=fd + 1)))
        fd += 2
    service = makeService(config, reactor, nonce_secret=bytes.fromhex(spec["secret"]), inherited=inherited,
                          quota=quota, overrides=spec["config"]["overrides"], worker=(spec["worker"], spec["workers"]))
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


def _die_with_parent() -> None:
    """Linux: get SIGTERM if the supervisor dies without stopping us (e.g. SIGKILL), so no worker is orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    run_worker()
