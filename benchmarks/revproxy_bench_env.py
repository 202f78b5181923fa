"""The benchmark's moving parts: throwaway certificates, nginx instances (the nodes and the reference proxy), our
proxy under `twistd`, `wrk` runs, and CPU/RSS of a process tree from /proc.

Everything lives in one temporary directory and listens on loopback only. The "nodes" are one nginx serving a small
JSON document and a 64 KiB file over TLS on 127.0.0.2-4 (a C server, so they are never the bottleneck); the
reference proxy is a second nginx configured as the appliance's would be.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import procstat

from tests.support.net import free_port, wait_for_port
from tests.support.processes import PYTHON, ROOT, TWISTD  # noqa: F401 (the scripts import them from here)
from tests.support.revproxy_process import subject_alt_names

NODE_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
SMALL_PATH = "/api/client/v2/conferences/bench/status"
BIG_PATH = "/static/64k.bin"
EVENTS_PATH = "/api/client/v2/conferences/bench/events"
SMALL_BODY = (b'{"status": "success", "result": {"service_type": "conference", "participant_count": 7, '
              b'"locked": false, "guests_can_present": true}}')
BIG_BODY = bytes(range(256)) * 256  # 64 KiB
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """Something the benchmark needs could not be started or measured."""


# -- ports and certificates ---------------------------------------------------------------------------------------
def wait_port(host: str, port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    """tests.support.net.wait_for_port, its failure a BenchError."""
    try:
        wait_for_port(host, port, timeout, proc)
    except (RuntimeError, TimeoutError) as e:
        raise BenchError(f"{proc.args[0] if proc is not None else 'server'}: {e}") from None


def make_certificate(where: Path, name: str, hosts: tuple[str, ...]) -> tuple[Path, Path, Path]:
    """A self-signed ECDSA P-256 certificate: (certificate file, key file, bundle = certificate + key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(subject_alt_names(hosts), critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    paths = where / f"{name}.crt", where / f"{name}.key", where / f"{name}.pem"
    paths[0].write_bytes(cert_pem)
    paths[1].write_bytes(key_pem)
    paths[2].write_bytes(cert_pem + key_pem)
    return paths


def make_workdir() -> Path:
    """A fresh temporary directory that nginx's unprivileged workers can read (static files, temp paths)."""
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="revproxy-bench-"))
    d.chmod(0o755)
    return d


# -- process trees ------------------------------------------------------------------------------------------------
def tree_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds user + system, RSS bytes) summed over `pid`'s process tree; zeros once it has exited."""
    try:
        usage = procstat.sample(pid)
    except procstat.ProcessGone:
        return 0.0, 0
    return usage.cpu_seconds, usage.rss_bytes


class Server:
    """A started server process (nginx master or twistd) with its log file; `stop()` ends its whole tree."""

    name = "server"

    def __init__(self, args: list[str], log_path: Path, cwd: Path, host: str, port: int) -> None:
        self.log_path = log_path
        self.log_file = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(args, cwd=str(cwd), stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.host, self.port = host, port
        try:
            wait_port(host, port, self.proc)
        except BenchError as e:
            self.stop()
            raise BenchError(f"{self.name}: {e}\n{self.log_tail()}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def usage(self) -> tuple[float, int]:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}\n{self.log_tail()}")
        return tree_usage(self.proc.pid)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nginx: fast shutdown; ours: drain
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for pid in reversed(procstat.tree(self.proc.pid)):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                self.proc.wait()
        self.log_file.close()


# -- nginx --------------------------------------------------------------------------------------------------------
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
_NGINX_COMMON = """\
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; multi_accept on; }}
http {{
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{body}
}}
"""


def _nginx(prefix: Path, workers: int, body: str, nofile: int) -> Path:
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(_NGINX_COMMON.format(prefix=prefix, workers=workers, body=body, nofile=nofile,
                                         connections=max(1024, nofile - 100)))
    return conf


def nginx_args(prefix: Path, conf: Path) -> list[str]:
    return [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]


@dataclass
class Node:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class NginxNodes(Server):
    """The three Conferencing Node stand-ins: one nginx, a server block per node address, each with its own
    self-signed certificate, answering the small JSON everywhere and the 64 KiB file under /static/."""

    name = "nodes (nginx)"

    def __init__(self, where: Path, workers: int, nofile: int) -> None:
        prefix = where / "nodes"
        (prefix / "static").mkdir(parents=True, exist_ok=True)
        (prefix / "static" / "64k.bin").write_bytes(BIG_BODY)
        (prefix / "small.json").write_bytes(SMALL_BODY)
        self.nodes = [Node(h, free_port(h)) for h in NODE_HOSTS]
        blocks = []
        for i, n in enumerate(self.nodes):
            crt, key, _ = make_certificate(where, f"node{i}", (n.host,))
            blocks.append(f"""\
    server {{
        listen {n.address} ssl reuseport backlog=4096;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:NODE{i}:10m;
        access_log off;
        root {prefix};
        location /static/ {{ }}
        location / {{ default_type application/json; try_files /small.json =404; }}
    }}""")
        conf = _nginx(prefix, workers, "\n".join(blocks), nofile)
        super().__init__(nginx_args(prefix, conf), prefix / "stdout.log", prefix, self.nodes[0].host,
                         self.nodes[0].port)
        for n in self.nodes[1:]:
            wait_port(n.host, n.port, self.proc)


class NginxProxy(Server):
    """The reference: nginx as the appliance would run it — round-robin upstream with keep-alive, TLS 1.2/1.3,
    proxy_ssl to the nodes, the forwarded headers, an access log, no buffering for /events."""

    def __init__(self, where: Path, tag: str, workers: int, bundle: Path, nodes: list[Node], nofile: int,
                 access_log: bool = True) -> None:
        self.name = f"nginx {tag}"
        prefix = where / f"nginx-{tag}"
        prefix.mkdir(parents=True, exist_ok=True)
        port = free_port()
        servers = "\n".join(f"        server {n.address} max_fails=1 fail_timeout=10s;" for n in nodes)
        proxy = """\
            proxy_pass https://nodes;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_ssl_protocols TLSv1.2 TLSv1.3;
            proxy_ssl_session_reuse on;
            proxy_connect_timeout 3s;
            proxy_next_upstream error timeout http_502 http_503 http_504;"""
        body = f"""\
    upstream nodes {{
{servers}
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 30s;
    }}
    server {{
        listen 127.0.0.1:{port} ssl reuseport backlog=4096;
        ssl_certificate {bundle};
        ssl_certificate_key {bundle};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
        ssl_session_cache shared:FRONT:10m;
        client_max_body_size 15m;
        access_log {f"{prefix}/access.log" if access_log else "off"};
        location ~ /events$ {{
{proxy}
            proxy_buffering off;
            proxy_read_timeout 1h;
        }}
        location / {{
{proxy}
            proxy_read_timeout 60s;
        }}
    }}"""
        conf = _nginx(prefix, workers, body, nofile)
        super().__init__(nginx_args(prefix, conf), prefix / "stdout.log", prefix, "127.0.0.1", port)


class OurProxy(Server):
    """`twistd -n --pidfile= revproxy --config <file>` with a [revproxy] table for the same nodes.

    `appliance`: the whole appliance instead (`twistd rpturn`, an idle relay beside the proxy, no management
    listener); `turn_on_https`: with TURN on the HTTPS port too (first-bytes demultiplexing on every connection)."""

    def __init__(self, where: Path, tag: str, workers: int, bundle: Path, nodes: list[Node],
                 access_log: bool = True, appliance: bool = False, turn_on_https: bool = False) -> None:
        self.name = f"ours {tag}"
        d = where / f"ours-{tag}"
        d.mkdir(parents=True, exist_ok=True)
        port = free_port()
        table = {"https": f"127.0.0.1:{port}", "http": "", "certificate": str(bundle), "hostname": "localhost",
                 "nodes": [n.address for n in nodes], "workers": workers,
                 # like nginx's: a file of its own (buffered), not through twistd's log
                 "access_log": str(d / "access.log") if access_log else False}
        conf = d / "rpturn.toml"
        text = "[revproxy]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
        plugin = "revproxy"
        if appliance or turn_on_https:
            plugin = "rpturn"
            text += f"turn_on_https = {json.dumps(turn_on_https)}\n"
            relay = {"listen": [f"127.0.0.1:{free_port()}"], "realm": "bench.test", "min_port": 46000,
                     "max_port": 46999, "relay_ip": "127.0.0.1", "users": {"bench": "bench-secret"}}
            text += "[relay]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in relay.items() if k != "users")
            text += '[relay.users]\nbench = "bench-secret"\n[management]\nlisten = ""\n'
        conf.write_text(text)
        super().__init__([TWISTD, "-n", "--pidfile=", plugin, "--config", str(conf)], d / "twistd.log", d,
                         "127.0.0.1", port)
        if workers > 1:  # worker 0 listens first; wait until every worker has said it listens
            deadline = time.monotonic() + 20
            while self.log_tail(1 << 20).count("revproxy listening") < workers:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise BenchError(f"{self.name}: not all {workers} workers started\n{self.log_tail()}")
                time.sleep(0.1)


def fetch(port: int, path: str, host: str = "127.0.0.1") -> bytes:
    """One HTTPS GET through a proxy (certificate not verified: it is ours, made a second ago)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import http.client

    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise BenchError(f"GET {path} on {host}:{port} answered {r.status}")
        return body
    finally:
        conn.close()


def check_content(server: Server) -> None:
    """Both payloads arrive intact through `server` (and through each node, round-robin)."""
    for _ in range(3):
        if fetch(server.port, SMALL_PATH, server.host) != SMALL_BODY:
            raise BenchError(f"{server.name}: the small JSON arrived altered")
        if fetch(server.port, BIG_PATH, server.host) != BIG_BODY:
            raise BenchError(f"{server.name}: the 64 KiB file arrived altered")


# -- wrk ----------------------------------------------------------------------------------------------------------
WRK = shutil.which("wrk") or "/usr/bin/wrk"
_WRK_DONE = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n', summary.requests,
    summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


@dataclass
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_seconds: float  # the measured proxy's process tree during the run
    nodes_cpu_seconds: float  # the upstream nodes' during the run
    wrk_cpu_seconds: float
    machine_busy_seconds: float  # all cores, every process on the machine

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1e6 if self.requests else float("inf")

    @property
    def other_cpu_seconds(self) -> float:
        """Busy time of processes outside the benchmark (others' work on a shared machine): noise."""
        return max(0.0, self.machine_busy_seconds - self.cpu_seconds - self.nodes_cpu_seconds - self.wrk_cpu_seconds)


def wrk(where: Path, server: Server, path: str, connections: int, duration: int, close: bool = False,
        threads: int = 2, nodes: Server | None = None) -> WrkResult:
    """One wrk run against `server`; CPU of the server's tree, the nodes, wrk and the machine read around it."""
    import resource

    script = where / "wrk-done.lua"
    if not script.exists():
        script.write_text(_WRK_DONE)
    args = [WRK, "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{duration}s",
            "--timeout", "10s", "--latency", "-s", str(script)]
    if close:
        args += ["-H", "Connection: close"]
    args.append(f"https://{server.host}:{server.port}{path}")
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, (cpu0, _), (ncpu0, _) = machine_busy_seconds(), server.usage(), nodes.usage() if nodes else (0.0, 0)
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60)
    busy1, (cpu1, _), (ncpu1, _) = machine_busy_seconds(), server.usage(), nodes.usage() if nodes else (0.0, 0)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise BenchError(f"wrk failed against {server.name} ({' '.join(args)}):\n{out.stdout}\n{out.stderr}")
    r = json.loads(line[len("WRKJSON "):])
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    wrk_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    return WrkResult(r["requests"], r["duration_us"] / 1e6, errors, r["p50_us"] / 1000, r["p99_us"] / 1000,
                     cpu1 - cpu0, ncpu1 - ncpu0, wrk_cpu, busy1 - busy0)
