"""Is the appliance running, and how to reach it: its pid file (for SIGHUP) and its management listener.

Two signs, either one counts (documented in the README's "Operating the appliance"):
- the pid file (`--pidfile`, default `$RPTURN_PIDFILE` or `/run/rpturn/rpturn.pid`; twistd writes it, and so does
  the systemd unit's `--pidfile`) names a live process whose command line mentions twistd;
- something accepts a TCP connection on the config's `[management] listen` address (default `127.0.0.1:9641`).
The pid file is what `reload` signals; the management listener alone only proves that something runs.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass

from appliance.config import parse_hostport

DEFAULT_PIDFILE = "/run/rpturn/rpturn.pid"
DEFAULT_MANAGEMENT = "127.0.0.1:9641"


def default_pidfile() -> str:
    return os.environ.get("RPTURN_PIDFILE") or DEFAULT_PIDFILE


def pid_from_file(pidfile: str) -> int | None:
    """The pid of a live twistd process named by `pidfile`, or None (no file, garbage, stale pid)."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    if pid <= 1:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return pid
    # A stale pid file whose pid was reused by an unrelated process must not count (nor be signalled).
    return pid if b"twistd" in cmdline or b"rpturn" in cmdline else None


def connect_address(listen: str) -> tuple[str, int] | None:
    """Where to connect to reach a listener configured as `listen` ("0.0.0.0:443" -> 127.0.0.1), None when off."""
    if not listen:
        return None
    try:
        host, port = parse_hostport(listen)
    except ValueError:
        return None
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port


def is_listening(address: tuple[str, int], timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Running:
    """What showed that the appliance runs (both None: it does not)."""

    pid: int | None
    management: tuple[str, int] | None

    def __bool__(self) -> bool:
        return self.pid is not None or self.management is not None

    def describe(self) -> str:
        signs = []
        if self.pid is not None:
            signs.append(f"pid {self.pid}")
        if self.management is not None:
            signs.append(f"management listener on {self.management[0]}:{self.management[1]}")
        return " and ".join(signs)


def detect(pidfile: str, management_listen: str | None) -> Running:
    mgmt = connect_address(DEFAULT_MANAGEMENT if management_listen is None else management_listen)
    return Running(pid_from_file(pidfile), mgmt if mgmt is not None and is_listening(mgmt) else None)


def reload(pid: int) -> None:
    """Ask the appliance to re-read its config and certificate (SIGHUP reaches every service and worker)."""
    os.kill(pid, signal.SIGHUP)
