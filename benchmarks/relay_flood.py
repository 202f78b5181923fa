"""The relay under an unauthenticated UDP flood from many loopback sources: what a legitimate client still gets.

    .venv/bin/python benchmarks/relay_flood.py [--sources 250] [--seconds 8] [--attempts 6]

Starts our `twistd relay` twice, once with the per-source limit off (`unauthenticated_rate = 0`, as before it
existed) and once with the defaults, floods each with Binding requests from `--sources` addresses 127.1.x.y (one
Python sender in its own process), and after the first second has a fresh client on 127.0.0.9 send `--attempts`
Bindings and unauthenticated Allocates (one try each, 1 s timeout). Prints the offered flood rate, the answers
the client got, the datagrams the kernel dropped at the listener and the relay's RSS before, at the end of and
after the flood. Loopback only; not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from appliance.limits import raise_open_files_limit
from tests.support.flood import Flood, legitimate_success
from tests.support.relay_process import RelayProcess


def listener_drops(port: int) -> int:
    """Datagrams the kernel dropped at the relay's UDP listener (its receive buffer was full): /proc/net/udp."""
    total = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            total += int(fields[-1])
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(label: str, sources: int, seconds: float, attempts: int, **relay_table) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        relay = RelayProcess(Path(tmp), **relay_table).start()
        try:
            rss_before = rss_mib(relay.process.pid)
            with Flood(relay.address, sources=sources, seconds=seconds) as flood:
                time.sleep(1.0)
                bindings, allocates = legitimate_success(relay.address, attempts, source="127.0.0.9")
            drops = listener_drops(relay.port)
            rss_during = rss_mib(relay.process.pid)
            time.sleep(2.0)
            rss_after = rss_mib(relay.process.pid)
            alive = relay.process.poll() is None
        finally:
            relay.stop()
    return {"config": label, "flood_pps": round(flood.rate), "bindings": f"{bindings}/{attempts}",
            "allocates": f"{allocates}/{attempts}", "kernel_drops": drops, "relay_alive": alive,
            "rss_mib": {"before": round(rss_before, 1), "end_of_flood": round(rss_during, 1),
                        "2s_after": round(rss_after, 1)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=250)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--attempts", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    raise_open_files_limit()  # a socket per flood source
    rows = [
        measure("no per-source limit (before)", args.sources, args.seconds, args.attempts, unauthenticated_rate=0),
        measure("defaults (after)", args.sources, args.seconds, args.attempts),
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"| relay | flood pps ({args.sources} sources) | Bindings answered | Allocates answered (401) "
          "| dropped by the kernel at the listener | relay RSS before / end of flood / 2 s after (MiB) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        rss = row["rss_mib"]
        print(f"| {row['config']} | {row['flood_pps']} | {row['bindings']} | {row['allocates']} "
              f"| {row['kernel_drops']} | {rss['before']} / {rss['end_of_flood']} / {rss['2s_after']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
