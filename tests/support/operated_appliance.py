"""The real appliance as the operator commands see it: `twistd -n --pidfile=PID --logfile=LOG rpturn --config FILE`
on free loopback ports (relay, HTTPS, HTTP, management), with the pid file `rpturn cert` signals. (The supervisor and
reload tests use `tests.support.appliance_process`, which runs without a pid file.)"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import tomlkit

from tests.support.net import free_port
from tests.support.revproxy_process import TWISTD, wait_for_port


def loopback_config(where: Path, **revproxy: Any) -> tuple[Path, dict[str, Any]]:
    """An appliance config on free loopback ports; `revproxy` adds or replaces `[revproxy]` keys."""
    tables: dict[str, Any] = {
        "relay": {"listen": [f"127.0.0.1:{free_port()}"], "realm": "rpturn.test", "min_port": 45000,
                  "max_port": 45100, "users": {"u": "password1"}},
        "revproxy": {"https": f"127.0.0.1:{free_port()}", "http": f"127.0.0.1:{free_port()}",
                     "hostname": "localhost", "self_signed": str(where / "selfsigned.pem"),
                     "nodes": [f"127.0.0.1:{free_port()}"], **revproxy},
        "management": {"listen": f"127.0.0.1:{free_port()}"},
    }
    path = where / "rpturn.toml"
    path.write_text(tomlkit.dumps(tables))
    return path, tables


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


class OperatedAppliance:
    """Started in `where`; `stop()` sends SIGTERM to the process it started (and only that one)."""

    def __init__(self, where: Path, config: Path, https_port: int, *, timeout: float = 20.0) -> None:
        self.pidfile = where / "rpturn.pid"
        self.log_path = where / "rpturn.log"
        self.proc = subprocess.Popen([TWISTD, "-n", f"--pidfile={self.pidfile}", f"--logfile={self.log_path}",
                                      "rpturn", "--config", str(config)], cwd=str(where),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", https_port, timeout, self.proc)
        deadline = time.monotonic() + timeout
        while not self.pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
