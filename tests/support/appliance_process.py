"""The real `twistd rpturn` (relay and reverse proxy in one process tree) for integration tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.support.net import free_port
from tests.support.relay_process import ROOT, TWISTD, toml_value, udp_binding
from tests.support.revproxy_process import wait_for_port

STARTED = re.compile(r"(relay|revproxy) worker (\d+) started \(pid (\d+)")


class ApplianceProcess:
    """`twistd -n --pidfile= --logfile <tmp> rpturn --config <tmp>.toml`, config written from dicts."""

    def __init__(self, tmp_path: Path, relay: dict, revproxy: dict, users: dict[str, str],
                 env: dict[str, str] | None = None, management: dict | None = None) -> None:
        self.tmp_path = tmp_path
        self.env = {**os.environ, **(env or {})}
        self.config_path = tmp_path / "rpturn.toml"
        self.log_path = tmp_path / "rpturn.log"
        self.relay_port, self.https_port, self.management_port = free_port(), free_port(), free_port()
        self.relay_table = {"listen": [f"127.0.0.1:{self.relay_port}"], "realm": "rpturn.test", "min_port": 45100,
                            "max_port": 45499, "relay_ip": "127.0.0.1", "allowed_peers": ["127.0.0.0/8"], **relay}
        self.proxy_table = {"https": f"127.0.0.1:{self.https_port}", "http": "", "fail_timeout": 1, **revproxy}
        self.users = dict(users)
        # Its own management port: the default 127.0.0.1:9641 would collide with any other appliance running here.
        self.management_table = {"listen": f"127.0.0.1:{self.management_port}", **(management or {})}
        self.write()
        self.process: subprocess.Popen | None = None

    def write(self) -> None:
        """(Re)write the config file from `relay_table`, `proxy_table` and `users`."""
        lines = ["[relay]"] + [f"{k} = {toml_value(v)}" for k, v in self.relay_table.items()]
        lines += ["", "[relay.users]"] + [f"{toml_value(u)} = {toml_value(p)}" for u, p in self.users.items()]
        lines += ["", "[revproxy]"] + [f"{k} = {toml_value(v)}" for k, v in self.proxy_table.items()]
        lines += ["", "[management]"] + [f"{k} = {toml_value(v)}" for k, v in self.management_table.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> ApplianceProcess:
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile", str(self.log_path), "rpturn", "--config", str(self.config_path)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + 30
        while udp_binding("127.0.0.1", self.relay_port, timeout=0.2) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                if self.process.poll() is None:
                    # Still running but not answering: stop it first, or reading its output would wait for ever.
                    self.process.kill()
                    self.process.wait()
                output = self.process.stdout.read().decode(errors="replace")
                raise RuntimeError(f"rpturn did not start (exit {self.process.returncode}): {output}\n{self.log()}")
        wait_for_port("127.0.0.1", self.https_port, 15, self.process)
        return self

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

    def workers(self) -> dict[tuple[str, int], int]:
        """(service, index) -> pid of the latest worker started in that slot, from the supervisor's log."""
        return {(m[1], int(m[2])): int(m[3]) for m in STARTED.finditer(self.log())}

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM and wait; 0 for a clean shutdown (twistd re-raises the SIGTERM after "Server Shut Down.")."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        code = self.process.returncode
        return 0 if code == -signal.SIGTERM and "Server Shut Down." in self.log() else code
