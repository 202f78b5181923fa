"""Debian's `pebble` (a small ACME server for tests) on loopback: its directory over HTTPS with a certificate from the
test PKI (the client verifies it against the test root), and its HTTP-01 validation pointed at our port-80 listener
(`httpPort`). Identifiers are `localhost`, which Go resolves from /etc/hosts: no DNS query leaves the machine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support.net import free_port, wait_for_port
from tests.support.processes import stop_process
from tests.support.revproxy_process import Pki


class Pebble:
    def __init__(self, where: Path, pki: Pki, http_port: int) -> None:
        cert, key = pki.issue(("localhost", "127.0.0.1"))
        self.cert = pki.write("pebble-cert.pem", cert, pki.intermediate_pem)
        self.key = pki.write("pebble-key.pem", key)
        self.port = free_port()
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{free_port()}",
            "certificate": str(self.cert), "privateKey": str(self.key),
            "httpPort": http_port, "tlsPort": free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}
        self.config = where / "pebble.json"
        self.config.write_text(json.dumps(config))
        self.log_path = where / "pebble.log"
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        self.proc = subprocess.Popen(["pebble", "-config", str(self.config)], cwd=str(where), env=env,
                                     stdout=self.log_file, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", self.port, 15, self.proc)

    @property
    def directory(self) -> str:
        return f"https://localhost:{self.port}/dir"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self.log_file.close()
