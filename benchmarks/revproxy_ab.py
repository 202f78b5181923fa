#!/usr/bin/env python3
"""A/B of two trees of our proxy under wrk: the proxy of an older checkout against this one, alternating.

    .venv/bin/python benchmarks/revproxy_ab.py --base DIR [--rounds 3] [--duration 3] [--connections 100]
        [--path /api/...] [--workers 1]

`DIR` is another checkout of the project (e.g. `git archive <commit> | tar -x -C DIR`); its proxy runs with
`PYTHONPATH=DIR` (its packages first, this tree's venv for the rest). Both proxies front the same nginx nodes
(benchmarks/revproxy_bench_env.py), with the file access log as in revproxy_vs_nginx, and `wrk` loads them A B A B
so the shared machine's drift hits both alike. Per round: rps and proxy CPU µs per request (user + system of the
proxy's process tree); the medians and the B/A ratios at the end. Short runs on a busy machine are noisy: the
per-round figures are printed so the spread can be judged.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

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
    a = p.parse_args(argv)
    nofile, _ = raise_open_files_limit()
    where = env.make_workdir()
    started: list[env.Server] = []
    try:
        nodes = NginxNodes(where, 2, nofile)
        started.append(nodes)
        _, _, bundle = env.make_certificate(where, "front", ("localhost", "127.0.0.1"))
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


if __name__ == "__main__":
    sys.exit(main())
