#!/usr/bin/env python3
"""A/B of two trees of our proxy under wrk: the proxy of an older checkout against this one, alternating.

    .venv/bin/python benchmarks/revproxy_ab.py --base DIR [--rounds 3] [--duration 3] [--connections 100]
        [--path /api/...] [--workers 1] [--instructions N]

`DIR` is another checkout of the project (e.g. `git archive <commit> | tar -x -C DIR`); its proxy runs with
`PYTHONPATH=DIR` (its packages first, this tree's venv for the rest). Both proxies front the same nginx nodes
(benchmarks/revproxy_bench_env.py), with the file access log as in revproxy_vs_nginx, and `wrk` loads them A B A B
so the shared machine's drift hits both alike. Per round: rps and proxy CPU µs per request (user + system of the
proxy's process tree); the medians and the B/A ratios at the end. Short runs on a busy machine are noisy: the
per-round figures are printed so the spread can be judged.

`--instructions N` measures what other load on the machine cannot move: each tree's proxy runs under valgrind's
callgrind (`valgrind` must be installed; it is not a project dependency), gets 30 warm-up requests on one keep-alive
TLS connection, then N more on it with the counters zeroed before and dumped after; the figure is the proxy's
user-space instructions per request (Python, OpenSSL, libc; no kernel, no TLS handshake). One connection, so each
read is a turn of the reactor loop of its own (under wrk's 100 connections a turn serves several). Repeat runs of
the same tree agree within about 1 %.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
from pathlib import Path

import revproxy_bench_env as env
from revproxy_bench_env import NginxNodes, OurProxy

from appliance.limits import raise_open_files_limit


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the older tree (A)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=3, help="seconds per wrk run (default 3)")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--path", default=env.SMALL_PATH)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--instructions", type=int, default=0, metavar="N",
                   help="instead of wrk: user-space instructions per request under callgrind, N requests each")
    a = p.parse_args(argv)
    nofile, _ = raise_open_files_limit()
    where = env.make_workdir()
    started: list[env.Server] = []
    try:
        nodes = NginxNodes(where, 2, nofile)
        started.append(nodes)
        _, _, bundle = env.make_certificate(where, "front", ("localhost", "127.0.0.1"))
        if a.instructions:
            base = instructions_per_request(where, "A", os.path.abspath(a.base), bundle, nodes, a.path, a.instructions)
            ours = instructions_per_request(where, "B", None, bundle, nodes, a.path, a.instructions)
            print(f"A {a.base}: {base:,.0f} instructions/request")
            print(f"B this tree: {ours:,.0f} instructions/request")
            print(f"B/A: instructions per request {ours / base:.3f}")
            return 0
        before = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.path.abspath(a.base)
        try:
            old = OurProxy(where, "A", a.workers, bundle, nodes.nodes)
        finally:
            if before is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = before
        started.append(old)
        new = OurProxy(where, "B", a.workers, bundle, nodes.nodes)
        started.append(new)
        for s in (old, new):
            env.check_content(s)
            env.wrk(where, s, a.path, a.connections, 1)  # warm up
        runs: dict[str, list[env.WrkResult]] = {"A": [], "B": []}
        for i in range(a.rounds):
            for key, s in (("A", old), ("B", new)):
                r = env.wrk(where, s, a.path, a.connections, a.duration, nodes=nodes)
                if r.requests == 0 or r.errors > 0.001 * r.requests:
                    raise env.BenchError(f"{s.name}: {r.requests} requests, {r.errors} errors")
                runs[key].append(r)
                print(f"round {i + 1} {key}: {r.rps:8.0f} rps  {r.cpu_us_per_request:6.1f} us CPU/request  "
                      f"(others' CPU {r.other_cpu_seconds:.1f} s)", flush=True)
        med = {k: (statistics.median(r.rps for r in v), statistics.median(r.cpu_us_per_request for r in v))
               for k, v in runs.items()}
        print(f"A {a.base}: {med['A'][0]:.0f} rps, {med['A'][1]:.1f} us/request")
        print(f"B this tree: {med['B'][0]:.0f} rps, {med['B'][1]:.1f} us/request")
        print(f"B/A: rps {med['B'][0] / med['A'][0]:.3f}, CPU per request {med['B'][1] / med['A'][1]:.3f}")
        return 0
    except env.BenchError as e:
        print(f"revproxy_ab: {e}", file=sys.stderr)
        return 1
    finally:
        for s in reversed(started):
            s.stop()


def instructions_per_request(where: Path, tag: str, tree: str | None, bundle: Path, nodes: NginxNodes, path: str,
                             n: int) -> float:
    """One tree's proxy (`tree` first on PYTHONPATH; None: this one) under callgrind: user-space instructions per
    request over `n` requests on one warm keep-alive connection (see the module doc)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise env.BenchError("--instructions needs valgrind (apt-get install valgrind)")
    d = where / f"callgrind-{tag}"
    d.mkdir()
    port = env.free_port()
    table = {"https": f"127.0.0.1:{port}", "http": "", "certificate": str(bundle), "hostname": "localhost",
             "nodes": [node.address for node in nodes.nodes], "workers": 1, "access_log": str(d / "access.log")}
    (d / "rpturn.toml").write_text("[revproxy]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    environ = dict(os.environ)
    if tree is not None:
        environ["PYTHONPATH"] = tree
    out = d / "callgrind.out"
    with open(d / "twistd.log", "wb") as log:
        proc = subprocess.Popen([valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", env.PYTHON, env.TWISTD,
                                 "-n", "--pidfile=", "revproxy", "--config", str(d / "rpturn.toml")], cwd=d,
                                env=environ, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        env.wait_port("127.0.0.1", port, proc, timeout=300)
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # ours, made a second ago
        request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n".encode()
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=120)) as tls:
            for _ in range(30):
                _exchange(tls, request)
            subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
            for _ in range(n):
                _exchange(tls, request)
            subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
        dumps = [f for f in glob.glob(f"{out}.*") if not f.endswith(".lock")]
        if not dumps:
            raise env.BenchError(f"ours {tag}: callgrind wrote no dump")
        with open(max(dumps, key=os.path.getmtime)) as f:
            total = next((int(line.split()[1]) for line in f if line.startswith(("totals:", "summary:"))), None)
        if total is None:
            raise env.BenchError(f"ours {tag}: no totals in the callgrind dump")
        return total / n
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exchange(tls: ssl.SSLSocket, request: bytes) -> None:
    """One request and its whole response (Content-Length framed) on a blocking TLS socket."""
    tls.sendall(request)
    data = b""
    while True:
        chunk = tls.recv(65536)
        if not chunk:
            raise env.BenchError("the proxy closed the connection")
        data += chunk
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            length = re.search(rb"(?im)^content-length: *(\d+)", data[:end])
            if length is None:
                raise env.BenchError(f"no Content-Length in {data[:end]!r}")
            if len(data) >= end + 4 + int(length.group(1)):
                return


if __name__ == "__main__":
    sys.exit(main())
