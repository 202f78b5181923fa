"""The servers the relay benchmark compares, started the same way: coturn's turnserver and our `twistd relay`.

Both listen on 127.0.0.1 with long-term credentials (one user), relay on 127.0.0.1 within the same port range,
allow loopback peers, and run without DTLS; given `tls_bundle`, both also listen for TURN over TLS on a port of
their own (`tls_port`) with that certificate. coturn's thread count is left at its default and reported.
Each server is one process tree whose root pid the benchmark measures.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from procstat import sample

from tests.support.coturn import Coturn
from tests.support.net import free_port
from tests.support.relay_process import RelayProcess

USERNAME, PASSWORD, REALM = "bench", "bench-secret", "bench.test"


@dataclass
class Server:
    """A running server under test."""

    name: str  # "coturn", "ours-w1", "ours-w2"
    host: str
    port: int
    pid: int
    description: str
    tls_port: int = 0  # TURN over TLS, 0: none

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def address_for(self, transport: str) -> str:
        return f"{self.host}:{self.tls_port}" if transport == "tls" else self.address


def coturn_version() -> str:
    turnserver = shutil.which("turnserver") or "turnserver"
    result = subprocess.run([turnserver, "--version"], capture_output=True, text=True, timeout=10)
    return (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) else "?"


def _coturn_threads(log: str, pid: int) -> str:
    """What coturn says about its threads, and how many the process has."""
    said = re.findall(r"Total (?:General|UDP|auth|General relay) servers?: *\d+|relay threads?[^\n]*\d+", log,
                      flags=re.IGNORECASE)
    return f"{sample(pid).threads} threads in the process" + (f" ({'; '.join(dict.fromkeys(said))})" if said else "")


@contextlib.contextmanager
def running_coturn(min_port: int, max_port: int, tls_bundle: str | None = None) -> Iterator[Server]:
    server = Coturn(username=USERNAME, password=PASSWORD, realm=REALM, min_port=min_port, max_port=max_port,
                    tls_bundle=tls_bundle)
    server.start()
    try:
        assert server.process is not None
        yield Server("coturn", server.host, server.port, server.process.pid,
                     f"coturn {coturn_version()}, default threads: {_coturn_threads(server.log(), server.process.pid)}",
                     server.tls_port)
    finally:
        server.stop()


@contextlib.contextmanager
def running_ours(workers: int, min_port: int, max_port: int, tls_bundle: str | None = None) -> Iterator[Server]:
    with tempfile.TemporaryDirectory(prefix="rpturn-bench-") as directory:
        tls_port = free_port() if tls_bundle else 0
        tls = {"tls_listen": [f"127.0.0.1:{tls_port}"], "certificate": tls_bundle} if tls_bundle else {}
        relay = RelayProcess(
            Path(directory), min_port=min_port, max_port=max_port, workers=workers, realm=REALM,
            users={USERNAME: PASSWORD}, **tls,
        )  # fmt: skip
        relay.start()
        try:
            assert relay.process is not None
            yield Server(f"ours-w{workers}", relay.host, relay.port, relay.process.pid,
                         f"rpturn twistd relay, workers = {workers}", tls_port)
        finally:
            relay.stop()
