"""The real `twistd rpturn` (relay and reverse proxy in one process tree) for integration tests: the one launcher
for the supervisor, reload, management and operator-command tests.

The config is written from tables on free loopback ports (relay, HTTPS, management, and HTTP when asked for);
`pidfile=True` runs it with the pid file the operator commands (`rpturn cert`, SIGHUP by pid) read."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.net import free_port, wait_for_port
from tests.support.processes import (
    ROOT,
    run_until_exit,
    stop_process,
    twistd_command,
    twistd_exit,
    write_tables,
)
from tests.support.relay_process import udp_binding


def self_signed_site(where: Path) -> dict[str, Any]:
    """[revproxy] keys for a site on a self-signed certificate for localhost, its one node a free port where
    nothing listens (for the tests that need the appliance, not a node)."""
    return {"hostname": "localhost", "self_signed": str(where / "selfsigned.pem"),
            "nodes": [f"127.0.0.1:{free_port()}"]}


STARTED = re.compile(r"(relay|revproxy) worker (\d+) started \(pid (\d+)")


class ApplianceProcess:
    """`twistd -n --logfile <tmp> rpturn --config <tmp>/rpturn.toml`, the config written from dicts.

    `relay`, `revproxy` and `management` add or replace keys of the defaults below; `users` is [relay.users];
    `http=True` gives the proxy an HTTP listener on a free port (`http_port`)."""

    def __init__(self, tmp_path: Path, relay: dict[str, Any] | None = None, revproxy: dict[str, Any] | None = None,
                 users: dict[str, str] | None = None, env: dict[str, str] | None = None,
                 management: dict[str, Any] | None = None, *, http: bool = False, pidfile: bool = False) -> None:
        self.tmp_path = tmp_path
        self.env = {**os.environ, **(env or {})}
        self.config_path = tmp_path / "rpturn.toml"
        self.log_path = tmp_path / "rpturn.log"
        self.pidfile = tmp_path / "rpturn.pid" if pidfile else None
        self.relay_port, self.https_port, self.management_port = free_port(), free_port(), free_port()
        self.http_port = free_port() if http else None
        self.relay_table = {"listen": [f"127.0.0.1:{self.relay_port}"], "realm": "rpturn.test", "min_port": 45100,
                            "max_port": 45499, "relay_ip": "127.0.0.1", "allowed_peers": ["127.0.0.0/8"],
                            **(relay or {})}
        self.proxy_table = {"https": f"127.0.0.1:{self.https_port}",
                            "http": f"127.0.0.1:{self.http_port}" if http else "", "fail_timeout": 1,
                            **(revproxy or {})}
        self.users = dict(users if users is not None else {"alice": "secret"})
        # Its own management port: the default 127.0.0.1:9641 would collide with any other appliance running here.
        self.management_table = {"listen": f"127.0.0.1:{self.management_port}", **(management or {})}
        self.write()
        self.process: subprocess.Popen | None = None

    def write(self) -> None:
        """(Re)write the config file from `relay_table`, `users`, `proxy_table` and `management_table`."""
        write_tables(self.config_path, {"relay": self.relay_table, "relay.users": self.users,
                                        "revproxy": self.proxy_table, "management": self.management_table})

    def start(self, timeout: float = 30.0) -> ApplianceProcess:
        """Start it and wait until the relay answers a Binding, the HTTPS port accepts and the pid file is there."""
        self.process = subprocess.Popen(
            twistd_command("rpturn", self.config_path, pidfile=self.pidfile, logfile=self.log_path),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while udp_binding("127.0.0.1", self.relay_port, timeout=0.2) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                if self.process.poll() is None:
                    # Still running but not answering: stop it first, or reading its output would wait for ever.
                    self.process.kill()
                    self.process.wait()
                output = self.process.stdout.read().decode(errors="replace")
                raise RuntimeError(f"rpturn did not start (exit {self.process.returncode}): {output}\n{self.log()}")
        wait_for_port("127.0.0.1", self.https_port, 15, self.process)
        while self.pidfile is not None and not self.pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def run_until_exit(self, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run it expecting it to end on its own (a start-up error); its output as text."""
        return run_until_exit("rpturn", self.config_path, timeout=timeout, cwd=self.tmp_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, predicate, timeout: float = 10.0) -> bool:
        """Wait until `predicate(log text)` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.log()):
                return True
            time.sleep(0.02)
        return False

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP and wait for one more "reloaded " line in the log."""
        before = self.log().count("reloaded ")
        self.signal(signal.SIGHUP)
        assert self.wait_log(lambda text: text.count("reloaded ") > before, timeout), self.log()[-2000:]

    def workers(self) -> dict[tuple[str, int], int]:
        """(service, index) -> pid of the latest worker started in that slot, from the supervisor's log."""
        return {(m[1], int(m[2])): int(m[3]) for m in STARTED.finditer(self.log())}

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM and wait; 0 for a clean shutdown (see `tests.support.processes.twistd_exit`)."""
        if self.process is None:
            return 0
        stop_process(self.process, timeout, raise_on_timeout=True)
        return twistd_exit(self.process, self.log())
