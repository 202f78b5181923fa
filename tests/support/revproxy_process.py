"""Shared helpers for the revproxy tests: a throwaway PKI, Conferencing-Node stand-ins, the real twistd proxy.

Node stand-ins are small twisted.web HTTPS sites in one subprocess (`python tests/revproxy_support.py nodes
<spec.json>`), each on its own 127.0.0.x address with its own self-signed certificate; a line on stdin stops or
starts one (`stop a` / `start a`), and every node answers `/stats` with what it saw.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.net import free_port, wait_for_port
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
        self.proc = subprocess.Popen([PYTHON, __file__, "nodes", str(spec_file)], stdin=subprocess.PIPE,
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


def pattern(n: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


def _serve_nodes(spec_file: str) -> None:  # runs in the node subprocess
    from twisted.internet import reactor
    from twisted.internet import ssl as tssl
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.stdio import StandardIO
    from twisted.protocols.basic import LineReceiver
    from twisted.web import resource, server

    WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    class Node(resource.Resource):
        isLeaf = True

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name
            self.stats = {"node": name, "requests": 0, "events_open": 0, "events_gone": 0, "connections": 0}

        def render(self, request: Any) -> Any:
            self.stats["requests"] += 1
            path = request.path
            args = {k.decode(): v[0].decode() for k, v in request.args.items()}
            if path == b"/stats":
                return self.json(request, self.stats)
            if path == b"/echo":
                body = request.content.read()
                request.setHeader(b"content-type", b"application/octet-stream")
                request.setHeader(b"x-sha256", hashlib.sha256(body).hexdigest().encode())
                return body
            if path == b"/big":
                n = int(args.get("n", "0"))
                request.setHeader(b"content-length", b"%d" % n)
                data = pattern(n)
                for i in range(0, n, 65536):
                    request.write(data[i: i + 65536])
                request.finish()
                return server.NOT_DONE_YET
            if path.endswith(b"/request_token") and request.method == b"POST":  # a conference with PIN 1234
                if request.getHeader(b"pin") != b"1234":
                    request.setResponseCode(403)
                    return self.json(request, {"status": "success", "result": "Invalid PIN"})
                return self.json(request, {"status": "success", "result": {"token": "t-" + self.name}})
            if path.startswith(b"/status/"):
                request.setResponseCode(int(path.rsplit(b"/", 1)[1]))
                return self.name.encode()
            if path == b"/slow":
                reactor.callLater(float(args.get("delay", "1")), self.finish_json, request)
                return server.NOT_DONE_YET
            if path.endswith(b"/events"):
                return self.events(request, int(args.get("count", "1000")), float(args.get("interval", "0.2")))
            request.setHeader(b"x-node", self.name.encode())
            request.setHeader(b"connection", b"x-hop")
            request.setHeader(b"x-hop", b"must not reach the client")
            return self.json(request, self.whoami(request))

        def whoami(self, request: Any) -> dict[str, Any]:
            headers: dict[str, list[str]] = {}
            for k, vs in request.requestHeaders.getAllRawHeaders():
                headers.setdefault(k.decode().lower(), []).extend(v.decode() for v in vs)
            return {"node": self.name, "method": request.method.decode(), "uri": request.uri.decode(),
                    "headers": headers, "body": len(request.content.read())}

        def finish_json(self, request: Any) -> None:
            if not request.finished and not request._disconnected:
                request.write(json.dumps({"node": self.name}).encode())
                request.finish()

        def json(self, request: Any, obj: Any) -> bytes:
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(obj).encode()

        def events(self, request: Any, count: int, interval: float) -> Any:
            request.setHeader(b"content-type", b"text/event-stream")
            request.setHeader(b"cache-control", b"no-cache")
            self.stats["events_open"] += 1
            state = {"n": 0, "call": None}

            def tick() -> None:
                request.write(b"event: tick\ndata: %d %f\n\n" % (state["n"], time.time()))
                state["n"] += 1
                if state["n"] >= count:
                    self.stats["events_open"] -= 1
                    request.finish()
                else:
                    state["call"] = reactor.callLater(interval, tick)

            def gone(_: Any) -> None:
                if state["call"] is not None and state["call"].active():
                    state["call"].cancel()
                    self.stats["events_open"] -= 1
                    self.stats["events_gone"] += 1

            request.notifyFinish().addErrback(gone)
            tick()
            return server.NOT_DONE_YET

    class Peek(Protocol):
        """A /ws upgrade is answered here as a raw WebSocket echo; anything else goes to twisted.web."""

        def __init__(self, factory: Any) -> None:
            self.factory = factory
            self.inner: Any = None
            self.ws = False
            self.buf = b""

        def connectionMade(self) -> None:
            self.factory.conns.add(self)
            self.factory.node.stats["connections"] += 1

        def dataReceived(self, data: bytes) -> None:
            if self.inner is not None:
                return self.inner.dataReceived(data)
            self.buf += data
            if not self.ws and not self.buf.startswith(b"GET /ws"):
                self.inner = self.factory.site.buildProtocol(None)
                self.inner.makeConnection(self.transport)
                data, self.buf = self.buf, b""
                return self.inner.dataReceived(data)
            if not self.ws:
                if b"\r\n\r\n" not in self.buf:
                    return
                head, self.buf = self.buf.split(b"\r\n\r\n", 1)
                key = next(ln.split(b":", 1)[1].strip() for ln in head.split(b"\r\n")
                       if ln.lower().startswith(b"sec-websocket-key:"))
                accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
                self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                self.ws = True
            self.frames()

        def frames(self) -> None:
            while len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                n, pos = b1 & 0x7F, 2
                if n == 126:
                    n, pos = int.from_bytes(self.buf[2:4], "big"), 4
                elif n == 127:
                    n, pos = int.from_bytes(self.buf[2:10], "big"), 10
                if len(self.buf) < pos + 4 + n:
                    return
                mask, payload = self.buf[pos: pos + 4], self.buf[pos + 4: pos + 4 + n]
                self.buf = self.buf[pos + 4 + n:]
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
                opcode = b0 & 0x0F
                length = (bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big") if n < 65536
                          else bytes([127]) + n.to_bytes(8, "big"))
                self.transport.write(bytes([0x80 | opcode]) + length + payload)
                if opcode == 8:
                    self.transport.loseConnection()
                    return

        def connectionLost(self, reason: Any = None) -> None:
            self.factory.conns.discard(self)
            if self.inner is not None:
                self.inner.connectionLost(reason)

    class NodeFactory(Factory):
        def __init__(self, node: Node) -> None:
            self.node = node
            self.site = server.Site(node)
            self.site.displayTracebacks = False
            self.conns: set[Peek] = set()

        def buildProtocol(self, addr: Any) -> Peek:
            return Peek(self)

    specs = json.loads(Path(spec_file).read_text())
    factories: dict[str, Any] = {}
    ports: dict[str, Any] = {}
    contexts: dict[str, Any] = {}

    def start(name: str) -> None:
        s = next(x for x in specs if x["name"] == name)
        if name not in factories:
            factories[name] = NodeFactory(Node(name))
            pem = Path(s["cert"]).read_bytes() + Path(s["key"]).read_bytes()
            contexts[name] = tssl.PrivateCertificate.loadPEM(pem).options()
        ports[name] = reactor.listenSSL(s["port"], factories[name], contexts[name], interface=s["host"])

    def stop(name: str) -> None:
        ports.pop(name).stopListening()
        for p in list(factories[name].conns):
            p.transport.abortConnection()

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            verb, name = line.decode().split()
            (start if verb == "start" else stop)(name)
            self.transport.write(f"ok {verb} {name}\n".encode())

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    for s in specs:
        start(s["name"])
    StandardIO(Control())
    reactor.run()


if __name__ == "__main__" and sys.argv[1:2] == ["nodes"]:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    _serve_nodes(sys.argv[2])
