"""Start coturn's `turnserver` on loopback for tests and the benchmark, configured like our relay.

Long-term credentials, one user, no TLS/DTLS, listening and relaying on 127.0.0.1 only, loopback peers allowed
(coturn denies them by default), a random free listening port and a random relay port range. `start()` returns
once the server answers a Binding request; `stop()` kills it (SIGTERM, then SIGKILL).

    with running_coturn() as server:
        server.host, server.port, server.username, server.password, server.realm

`tls_bundle` (a PEM file with the certificate and its unencrypted key, as the proxy's bundle) adds a TURN-over-TLS
listener on `server.tls_port` (coturn's --cert/--pkey; DTLS stays off). `auth_secret` switches to the TURN REST API
(`--use-auth-secret --static-auth-secret`): time-limited credentials made with that secret, instead of the user.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.net import free_port
from tests.support.processes import stop_process
from tests.support.relay_process import udp_binding

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"


class CoturnError(RuntimeError):
    """turnserver could not be started, or did not answer in time."""




class Coturn:
    """One turnserver process on 127.0.0.1."""

    def __init__(
        self,
        *,
        username: str = "u",
        password: str = "p",
        realm: str = "r",
        relay_ports: int = 200,
        min_port: int | None = None,
        max_port: int | None = None,
        extra_args: tuple[str, ...] = (),
        tls_bundle: str | os.PathLike[str] | None = None,
        auth_secret: str | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.username = username
        self.password = password
        self.realm = realm
        self.relay_ports = relay_ports
        self.extra_args = extra_args
        self.tls_bundle = os.fspath(tls_bundle) if tls_bundle is not None else None
        self.tls_port = 0
        self.auth_secret = auth_secret
        self.fixed_range = (min_port, max_port) if min_port is not None and max_port is not None else None
        self.min_port = self.max_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        assert self._dir is not None
        if self.tls_bundle is not None:
            tls = ["--tls-listening-port", str(self.tls_port), "--cert", self.tls_bundle, "--pkey", self.tls_bundle,
                   "--no-dtls"]
        else:
            tls = ["--no-tls", "--no-dtls"]
        if self.auth_secret is not None:
            auth = ["--use-auth-secret", "--static-auth-secret", self.auth_secret]
        else:
            auth = ["--lt-cred-mech", "--user", f"{self.username}:{self.password}"]
        return [
            TURNSERVER, "-n",  # no configuration file: everything is on this command line
            "--listening-ip", self.host, "--listening-port", str(self.port),
            "--relay-ip", self.host, "--min-port", str(self.min_port), "--max-port", str(self.max_port),
            *tls, *auth,
            "--realm", self.realm, f"--allowed-peer-ip={self.host}", "--allow-loopback-peers", "--no-cli",
            "--log-file", "stdout", "--pidfile", os.path.join(self._dir.name, "turnserver.pid"),
            "--db", os.path.join(self._dir.name, "turndb"),
            *self.extra_args,
        ]

    def start(self, timeout: float = 10.0) -> Coturn:
        self._dir = tempfile.TemporaryDirectory(prefix="rpturn-coturn-")
        self.port = free_port()
        if self.tls_bundle is not None:
            # coturn also opens the "alternative" ports listening-port+1 and tls-listening-port+1.
            self.tls_port = free_port()
        # Unless given: a random window below Linux's ephemeral range (32768-60999), where test clients' ports
        # land; coturn skips a relay port in use, so an overlap costs nothing but a retry.
        if self.fixed_range is not None:
            self.min_port, self.max_port = self.fixed_range
        else:
            self.min_port = random.randrange(20000, max(20001, 32000 - self.relay_ports))
            self.max_port = self.min_port + self.relay_ports - 1
        self.log_path = Path(self._dir.name) / "turnserver.log"
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log_text = self.log()
                self.stop()
                raise CoturnError(f"turnserver exited with {self.process.returncode}:\n{log_text[-2000:]}")
            if udp_binding(self.host, self.port, 0.5) is not None:
                return self
            time.sleep(0.05)
        log_text = self.log()
        self.stop()
        raise CoturnError(f"turnserver did not answer a Binding within {timeout} s:\n{log_text[-2000:]}")

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process, 5)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


@contextlib.contextmanager
def running_coturn(**kwargs: object) -> Iterator[Coturn]:
    server = Coturn(**kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def turnutils_peer(host: str = "127.0.0.1") -> Iterator[int]:
    """coturn's turnutils_peer, a UDP echo peer on `host`; its port. Stopped (by its Popen) at the end."""
    port = free_port(host)
    peer = subprocess.Popen(["turnutils_peer", "-L", host, "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # it prints nothing when ready; it binds at once
    try:
        yield port
    finally:
        stop_process(peer, 5)


def turn_peer_fixture() -> Any:
    """A module-scoped pytest fixture giving the port of a `turnutils_peer` on 127.0.0.1."""
    import pytest

    @pytest.fixture(scope="module")
    def turn_peer() -> Iterator[int]:
        with turnutils_peer() as port:
            yield port

    return turn_peer


def turnutils_uclient(port: int, peer_port: int, *flags: str, clients: int = 3, messages: int = 50,
                      size: int = 120) -> dict[str, Any]:
    """coturn's turnutils_uclient through the TURN server on 127.0.0.1:`port` to the echo peer on `peer_port`
    (credentials and transport in `flags`); its summary: sent, received, lost, rtt_ms and rtt_max_ms (None when it
    printed no round trips), errors (the error responses it printed) and the output."""
    command = ["turnutils_uclient", *flags, "-p", str(port), "-e", "127.0.0.1", "-r", str(peer_port),
               "-m", str(clients), "-n", str(messages), "-l", str(size), "-z", "5", "127.0.0.1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    totals = re.findall(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
    lost = re.search(r"Total lost packets (\d+)", output)
    assert totals and lost, output[-2000:]
    rtt = re.search(r"Average round trip delay ([\d.]+) ms; min = (\d+) ms, max = (\d+) ms", output)
    sent, received = map(int, totals[-1])
    return {"sent": sent, "received": received, "lost": int(lost.group(1)),
            "rtt_ms": float(rtt.group(1)) if rtt else None, "rtt_max_ms": int(rtt.group(3)) if rtt else None,
            "errors": re.findall(r"error \d+ \([^)]*\)", output), "output": output}
