"""The servers the relay benchmark compares, started the same way: coturn's turnserver and our `twistd relay`.

Both listen on 127.0.0.1 with long-term credentials (one user), relay on 127.0.0.1 within the same port range,
allow loopback peers, and run without DTLS; given `tls_bundle`, both also listen for TURN over TLS on a port of
their own (`tls_port`) with that certificate. coturn's thread count is left at its default and reported.
Each server is one process tree whose root pid the benchmark measures.

Server names: one coturn per `turnserver` binary, named by its version ("coturn-4.6.1", `coturn_servers`); ours
by worker count, "ours-w1", "ours-w2", and with "-python" ("ours-w2-python") forced onto the pure-Python datagram
back-end (RPTURN_DATAGRAM_IO=python, relay/datagram.py) to measure what the batched one gains.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from procstat import sample

from tests.support.coturn import Coturn
from tests.support.net import free_port
from tests.support.relay_process import RelayProcess

USERNAME, PASSWORD, REALM = "bench", "bench-secret", "bench.test"


@dataclass
class Server:
    """A running server under test."""

    name: str  # "coturn-4.6.1", "ours-w1", "ours-w2", "ours-w2-python", ...
    host: str
    port: int
    pid: int
    description: str
    tls_port: int = 0  # TURN over TLS, 0: none
    # Ours, once stopped: each process's datagram counts as its relay.datagram multiplexer logged them ("worker 1:
    # 51234 datagrams read in 2012 reactor events (25.5 per event) and 2710 passes").
    datagram_io: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def address_for(self, transport: str) -> str:
        return f"{self.host}:{self.tls_port}" if transport == "tls" else self.address


DEBIAN_TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"


def coturn_version(turnserver: str = DEBIAN_TURNSERVER) -> str:
    """`turnserver --version`'s first line ("4.6.1"), "?" when it says nothing; OSError when it cannot run."""
    result = subprocess.run([turnserver, "--version"], capture_output=True, text=True, timeout=10)
    return (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) else "?"


def coturn_servers(binaries: list[str]) -> dict[str, str]:
    """{server name: binary} for these turnserver binaries, named by version ("coturn-4.17.1"); a version given
    twice gets "-2", "-3" ... A binary that is missing or does not run is a ValueError naming it."""
    names: dict[str, str] = {}
    for binary in binaries:
        try:
            version = coturn_version(binary)
        except (OSError, subprocess.SubprocessError) as error:
            raise ValueError(f"--coturn {binary}: cannot run it ({error})") from None
        name = base = f"coturn-{version.split()[0] if version.split() else '?'}"
        count = 1
        while name in names:
            count += 1
            name = f"{base}-{count}"
        names[name] = binary
    return names


def is_coturn(name: str) -> bool:
    return name.startswith("coturn")


def workers_of(name: str) -> int:
    """"ours-w2-python" -> 2."""
    return int(name.removeprefix("ours-w").split("-")[0])


class _Turnserver(Coturn):
    """tests.support.coturn's server, started from a chosen binary."""

    def __init__(self, binary: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.binary = binary

    def command(self) -> list[str]:
        return [self.binary, *super().command()[1:]]


def _coturn_threads(log: str, pid: int) -> str:
    """What coturn says about its threads, and how many the process has."""
    said = re.findall(r"Total (?:General|UDP|auth|General relay) servers?: *\d+|relay threads?[^\n]*\d+", log,
                      flags=re.IGNORECASE)
    return f"{sample(pid).threads} threads in the process" + (f" ({'; '.join(dict.fromkeys(said))})" if said else "")


@contextlib.contextmanager
def running_coturn(min_port: int, max_port: int, tls_bundle: str | None = None, *, name: str = "coturn",
                   binary: str = DEBIAN_TURNSERVER) -> Iterator[Server]:
    server = _Turnserver(binary, username=USERNAME, password=PASSWORD, realm=REALM, min_port=min_port,
                         max_port=max_port, tls_bundle=tls_bundle)
    server.start()
    try:
        assert server.process is not None
        yield Server(name, server.host, server.port, server.process.pid,
                     f"coturn {coturn_version(binary)} ({binary}), default threads: "
                     f"{_coturn_threads(server.log(), server.process.pid)}",
                     server.tls_port)
    finally:
        server.stop()


@contextlib.contextmanager
def running_ours(workers: int, min_port: int, max_port: int, tls_bundle: str | None = None, *,
                 datagram_io: str | None = None) -> Iterator[Server]:
    """`datagram_io` "python": the relay's pure-Python datagram back-end (the default is the batched one)."""
    saved = os.environ.get("RPTURN_DATAGRAM_IO")
    if datagram_io:
        os.environ["RPTURN_DATAGRAM_IO"] = datagram_io  # inherited by twistd and its workers
    with contextlib.ExitStack() as restore:
        restore.callback(_restore_env, "RPTURN_DATAGRAM_IO", saved)
        with _running_ours(workers, min_port, max_port, tls_bundle, datagram_io) as server:
            yield server


def _restore_env(key: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value


@contextlib.contextmanager
def _running_ours(workers: int, min_port: int, max_port: int, tls_bundle: str | None,
                  datagram_io: str | None) -> Iterator[Server]:
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
            suffix = f"-{datagram_io}" if datagram_io else ""
            server = Server(f"ours-w{workers}{suffix}", relay.host, relay.port, relay.process.pid,
                            f"rpturn twistd relay, workers = {workers}, datagram I/O "
                            f"{datagram_io or 'default (batched where built)'}", tls_port)
            yield server
        finally:
            relay.stop()
        server.datagram_io = datagram_counts(relay.log())


def datagram_counts(log: str) -> list[str]:
    """The multiplexers' closing lines in our relay's log, one per process ("worker N: ..." with workers)."""
    found = re.findall(r"^(?:.*?relay (worker \d+): )?.*?relay UDP sockets: (.+)$", log, flags=re.MULTILINE)
    return [f"{worker or 'process'}: {counts}" for worker, counts in found]
