"""Shared helpers for the revproxy tests: a throwaway PKI, Conferencing-Node stand-ins, the real twistd proxy.

Node stand-ins are small twisted.web HTTPS sites in one subprocess (tests/support/node_server.py), each on its own
127.0.0.x address with its own self-signed certificate; a line on stdin stops or starts one (`stop a` / `start a`),
and every node answers `/stats` with what it saw.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import node_server
from tests.support.net import free_port, wait_for_port
from tests.support.node_server import pattern  # noqa: F401 (re-exported)
from tests.support.processes import (  # noqa: F401 (re-exported)
    PYTHON,
    ROOT,
    TWISTD,
    VENV_BIN,
    run_until_exit,
    stop_process,
    toml_value,
    twistd_command,
    write_tables,
)


def _pki_imports() -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    return x509, hashes, serialization, ec, NameOID


def _cert(subject: str, key: Any, issuer: Any = None, issuer_key: Any = None, ca: bool = False,
          names: tuple[str, ...] = (), valid: tuple[datetime.timedelta, datetime.timedelta] | None = None) -> Any:
    """`valid`: (not before, not after) relative to now; default one hour ago to 90 days ahead."""
    x509, hashes, _, _, NameOID = _pki_imports()
    now = datetime.datetime.now(datetime.UTC)
    before, after = valid or (datetime.timedelta(hours=-1), datetime.timedelta(days=90))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now + before).not_valid_after(now + after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
    if names:
        b = b.add_extension(subject_alt_names(names), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def subject_alt_names(names: Any) -> Any:
    """A SubjectAlternativeName extension: an IP address entry for each address, a DNS name for the rest."""
    from cryptography import x509

    sans: list[Any] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(sans)


def _pem_cert(c: Any) -> bytes:
    _, _, serialization, _, _ = _pki_imports()
    return c.public_bytes(serialization.Encoding.PEM)


def _pem_key(k: Any, password: bytes | None = None) -> bytes:
    _, _, serialization, _, _ = _pki_imports()
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


@dataclass
class Pki:
    """root CA -> intermediate CA -> server certificate for localhost / 127.0.0.1, as files in `where`."""

    where: Path
    root: Path = field(init=False)
    bundle: Path = field(init=False)  # leaf, key, intermediate: the order the proxy wants
    leaf_pem: bytes = b""
    key_pem: bytes = b""
    intermediate_pem: bytes = b""
    other_key_pem: bytes = b""
    encrypted_key_pem: bytes = b""

    def __post_init__(self) -> None:
        _, _, _, ec, _ = _pki_imports()
        root_key, inter_key, leaf_key, other = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
        ten_years = (datetime.timedelta(hours=-1), datetime.timedelta(days=3650))
        root = _cert("rpturn test root", root_key, ca=True, valid=ten_years)
        inter = _cert("rpturn test intermediate", inter_key, root, root_key, ca=True, valid=ten_years)
        self._issuers = {"root": (root, root_key), "intermediate": (inter, inter_key)}
        leaf = _cert("localhost", leaf_key, inter, inter_key, names=("localhost", "127.0.0.1"))
        self.leaf_pem, self.key_pem, self.intermediate_pem = _pem_cert(leaf), _pem_key(leaf_key), _pem_cert(inter)
        self.other_key_pem = _pem_key(other)
        self.encrypted_key_pem = _pem_key(leaf_key, b"secret")
        self.root = self.where / "root.pem"
        self.root.write_bytes(_pem_cert(root))
        self.bundle = self.write("bundle.pem", self.leaf_pem, self.key_pem, self.intermediate_pem)

    def issue(self, names: tuple[str, ...] = ("localhost",), by: str = "intermediate",
              valid: tuple[datetime.timedelta, datetime.timedelta] | None = None, rsa_bits: int = 0,
              ) -> tuple[bytes, bytes]:
        """(certificate PEM, unencrypted key PEM) of a new server certificate for `names`, issued by the
        "intermediate", the "root" or "self" (self-signed), valid as `valid` says (see `_cert`)."""
        _, _, _, ec, _ = _pki_imports()
        if rsa_bits:
            from cryptography.hazmat.primitives.asymmetric import rsa

            key = rsa.generate_private_key(65537, rsa_bits)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        issuer, issuer_key = self._issuers[by] if by != "self" else (None, None)
        subject = names[0] if names else "no names"
        return _pem_cert(_cert(subject, key, issuer, issuer_key, names=names, valid=valid)), _pem_key(key)

    def write(self, name: str, *parts: bytes) -> Path:
        p = self.where / name
        p.write_bytes(b"".join(parts))
        return p

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.root))
        return ctx


def self_signed_node_cert(where: Path, name: str, host: str) -> tuple[Path, Path]:
    _, _, _, ec, _ = _pki_imports()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(f"node {name}", key, names=(host,))
    c, k = where / f"node-{name}.crt", where / f"node-{name}.key"
    c.write_bytes(_pem_cert(cert))
    k.write_bytes(_pem_key(key))
    return c, k


# -- config and the real twistd process ---------------------------------------------------------------------------
def write_config(path: Path, table: dict[str, Any]) -> Path:
    return write_tables(path, {"revproxy": table})


class ProxyProcess:
    """`twistd -n --pidfile= revproxy --config <path>` as a subprocess, output kept in a log file."""

    def __init__(self, config_path: Path, https_port: int, extra_args: tuple[str, ...] = ()) -> None:
        self.config_path = config_path
        self.port = https_port
        self.log_path = config_path.with_suffix(".log")
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(twistd_command("revproxy", config_path, *extra_args),
                                     cwd=str(config_path.parent), stdout=self.log_file, stderr=subprocess.STDOUT)
        wait_for_port("127.0.0.1", https_port, 15, self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_log(self, text: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in the proxy's log:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> int:
        code = stop_process(self.proc, timeout)
        self.log_file.close()
        return code


def run_twistd(config_path: Path, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    return run_until_exit("revproxy", config_path, *args, timeout=timeout)


# -- clients ------------------------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(pki: Pki, port: int, method: str = "GET", path: str = "/whoami", body: bytes | None = None,
            headers: dict[str, str] | None = None, source: str | None = None, timeout: float = 10.0) -> Reply:
    conn = http.client.HTTPSConnection("localhost", port, context=pki.client_context(), timeout=timeout,
                                       source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Reply(r.status, r.headers, r.read())
    finally:
        conn.close()


def read_event(stream: Any) -> bytes:
    """Read an /events stream (a node stand-in's server-sent events) up to the end of the next `tick` event."""
    buf = b""
    while b"\n\n" not in buf.split(b"event: tick", 1)[-1]:
        data = stream.recv(4096)
        assert data, "the /events stream was closed"
        buf += data
    return buf


def raw_exchange(pki: Pki, port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes over TLS and read until the proxy closes (or `timeout`)."""
    ctx = pki.client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except (TimeoutError, ssl.SSLError, ConnectionResetError):
            pass
        return out


# -- Conferencing Node stand-ins ----------------------------------------------------------------------------------
@dataclass
class NodeSpec:
    name: str
    host: str
    port: int
    cert: str
    key: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class Nodes:
    """Several node stand-ins in one subprocess, each stoppable and restartable."""

    def __init__(self, where: Path, names: tuple[str, ...] = ("a", "b", "c")) -> None:
        self.specs: dict[str, NodeSpec] = {}
        for i, name in enumerate(names):
            host = f"127.0.0.{i + 2}"
            cert, key = self_signed_node_cert(where, name, host)
            self.specs[name] = NodeSpec(name, host, free_port(host), str(cert), str(key))
        spec_file = where / "nodes.json"
        spec_file.write_text(json.dumps([s.__dict__ for s in self.specs.values()]))
        self.proc = subprocess.Popen([PYTHON, node_server.__file__, str(spec_file)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        for s in self.specs.values():
            wait_for_port(s.host, s.port, 15, self.proc)

    def addresses(self, *names: str) -> list[str]:
        return [self.specs[n].address for n in (names or self.specs)]

    def _command(self, line: str) -> None:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok " + line

    def stop(self, name: str) -> None:
        self._command(f"stop {name}")

    def start(self, name: str) -> None:
        self._command(f"start {name}")

    def stats(self, name: str) -> dict[str, Any]:
        s = self.specs[name]
        ctx = ssl.create_default_context(cafile=s.cert)
        conn = http.client.HTTPSConnection(s.host, s.port, context=ctx, timeout=5)
        try:
            conn.request("GET", "/stats")
            return json.loads(conn.getresponse().read())
        finally:
            conn.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def lab_fixture(name: str) -> Any:
    """A module-scoped pytest fixture giving (Pki, Nodes): a throwaway PKI and three node stand-ins that the test
    module's proxies share; the nodes stop with the module."""
    import pytest

    @pytest.fixture(scope="module")
    def lab(tmp_path_factory: Any) -> Any:
        d = tmp_path_factory.mktemp(name)
        nodes = Nodes(d)
        yield Pki(d), nodes
        nodes.close()

    return lab
