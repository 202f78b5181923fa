"""The relay under an unauthenticated UDP flood from many loopback sources: what a legitimate client still gets.

    .venv/bin/python benchmarks/relay_flood.py [--sources 250] [--seconds 8] [--attempts 6] [--costly]

Starts our `twistd relay` three times, one after the other in the same run: with the flood gate off
(`unauthenticated_rate = 0`), with the per-source buckets only (`unauthenticated_budget = 0`) and with the defaults
(per-source buckets and the global budget). Floods each with Binding requests from `--sources` addresses
127.1.x.y (one Python sender in its own process; `--costly`: 1,380-byte Bindings of 340 empty optional
attributes, a few hundred µs of parsing each, what an attacker would send), and after the first second has a fresh
client on 127.0.0.9 send `--attempts` Bindings and unauthenticated Allocates (one try each, 1 s timeout). Prints
the offered flood rate, the answers the client got, the datagrams the kernel dropped at the listener, the relay's
RSS before, at the end of and after the flood, and the machine's load average around each row (the figures depend
on what else runs: the flood's sender and the relay each want a core). Then, in this process, the CPU a dropped
datagram costs the UDP listener (µs, best of 5 runs of a loop through `TurnUDPListener.datagramReceived`), for a
source over its bucket and for one shed by the budget, next to an answered Binding. `--budget N` adds a row with
that `unauthenticated_budget`. `--fresh N`: no flood, but N fresh clients (127.3.x.y) each sending one
unauthenticated Allocate at once — a meeting's start — answered with the defaults and with the budget off (the
gate must not shed what the relay can afford). Loopback only; not part of the test run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import procstat

from appliance.limits import raise_open_files_limit
from relay import stun
from tests.support.flood import Flood, costly_binding, legitimate_success
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
    return procstat.rss_bytes(pid) / (1 << 20)


def measure(label: str, sources: int, seconds: float, attempts: int, request: bytes | None = None,
            **relay_table) -> dict:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        relay = RelayProcess(Path(tmp), **relay_table).start()
        try:
            rss_before = rss_mib(relay.process.pid)
            with Flood(relay.address, sources=sources, seconds=seconds, request=request) as flood:
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
                        "2s_after": round(rss_after, 1)},
            "load_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}}


def fresh_burst(clients: int, **relay_table) -> int:
    """How many of `clients` fresh sources' first Allocate, all sent at once, the relay answers (within 1 s)."""
    with tempfile.TemporaryDirectory() as tmp:
        relay = RelayProcess(Path(tmp), **relay_table).start()
        sockets = []
        try:
            for i in range(clients):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(sock)
                sock.bind((f"127.3.{i // 250}.{i % 250 + 1}", 0))
                sock.setblocking(False)
            for sock in sockets:
                request = stun.Message(stun.Method.ALLOCATE, stun.MessageClass.REQUEST, os.urandom(12),
                                       [(stun.Attr.REQUESTED_TRANSPORT, 17)])
                sock.sendto(stun.encode(request), relay.address)
            time.sleep(1.0)
            answered = 0
            for sock in sockets:
                with contextlib.suppress(BlockingIOError):
                    sock.recv(2048)
                    answered += 1
            return answered
        finally:
            for sock in sockets:
                sock.close()
            relay.stop()


def drop_cost(repeat: int = 200_000) -> dict:
    """CPU µs per datagram through the UDP listener (in process, fake clock, no sockets): a source over its bucket,
    a source shed by the budget, and an answered Binding for scale."""
    from relay.allocation import TurnSettings
    from relay.shell import TurnUDPListener
    from relay.stun import Message, MessageClass, Method, encode
    from tests.support.relay_fakes import REALM, SERVER, TurnHarness

    request = encode(Message(Method.BINDING, MessageClass.REQUEST, bytes(12), []))

    def per_datagram(harness: TurnHarness, source: tuple, count: int) -> float:
        listener = TurnUDPListener(harness.server, SERVER)
        receive = listener.datagramReceived
        for _ in range(100):
            receive(request, source)
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            for _ in range(count):
                receive(request, source)
            best = min(best, (time.process_time() - start) / count * 1e6)
        return round(best, 2)

    over_bucket = TurnHarness(settings=TurnSettings(realm=REALM, unauthenticated_budget=0))
    # The clock stands still: the budget is spent for good, and a bucket below half of a huge burst sheds every
    # datagram (each takes one of its 1e9 tokens).
    shed = TurnHarness(settings=TurnSettings(realm=REALM, unauthenticated_budget=1, unauthenticated_burst=1e12))
    shed.server.sources._budget_tokens = 0.0
    shed.server.sources._buckets["192.0.2.1"] = [1e9, shed.clock()]
    answered = TurnHarness(settings=TurnSettings(realm=REALM, unauthenticated_rate=0))
    return {"over_its_bucket_us": per_datagram(over_bucket, ("192.0.2.1", 5000), repeat),
            "shed_by_budget_us": per_datagram(shed, ("192.0.2.1", 5000), repeat),
            "answered_binding_us": per_datagram(answered, ("192.0.2.1", 5000), repeat // 20)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=250)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--attempts", type=int, default=6)
    parser.add_argument("--costly", action="store_true", help="flood with costly (1,380-byte) Bindings")
    parser.add_argument("--budget", type=int, action="append", default=[],
                        help="also measure with this unauthenticated_budget (repeatable)")
    parser.add_argument("--fresh", type=int, metavar="N",
                        help="no flood: N fresh clients' first requests at once, with the defaults and the budget off")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    raise_open_files_limit()  # a socket per flood source
    if args.fresh:
        with_defaults, budget_off = fresh_burst(args.fresh), fresh_burst(args.fresh, unauthenticated_budget=0)
        print(f"{args.fresh} fresh clients' first Allocate at once, no flood: answered {with_defaults} with the "
              f"defaults, {budget_off} with the budget off (load {os.getloadavg()[0]:.2f})")
        return 0
    request = costly_binding() if args.costly else None
    rows = [
        measure("gate off (unauthenticated_rate = 0)", args.sources, args.seconds, args.attempts, request,
                unauthenticated_rate=0),
        measure("per-source buckets only (unauthenticated_budget = 0)", args.sources, args.seconds, args.attempts,
                request, unauthenticated_budget=0),
        measure("per-source buckets + global budget (defaults)", args.sources, args.seconds, args.attempts, request),
        *(measure(f"per-source buckets + global budget {budget}", args.sources, args.seconds, args.attempts, request,
                  unauthenticated_budget=budget) for budget in args.budget),
    ]
    costs = drop_cost()
    if args.json:
        print(json.dumps({"rows": rows, "drop_cost": costs, "cpus": os.cpu_count()}, indent=2))
        return 0
    kind = "costly 1,380-byte Bindings" if args.costly else "Bindings"
    print(f"Flood: {kind} from {args.sources} sources for {args.seconds:g} s; legitimate client: "
          f"{args.attempts} Bindings and {args.attempts} unauthenticated Allocates, one try each, 1 s timeout. "
          f"Machine: {os.cpu_count()} CPUs; "
          "the load average (1 min) is given per row: above ~1 before a row, something else was running and the "
          "figures are not of record.")
    print()
    print(f"| relay | flood pps offered ({args.sources} sources) | Bindings answered | Allocates answered (401) "
          "| dropped by the kernel at the listener | relay RSS before / end of flood / 2 s after (MiB) "
          "| load before / after |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        rss, load = row["rss_mib"], row["load_1min"]
        print(f"| {row['config']} | {row['flood_pps']} | {row['bindings']} | {row['allocates']} "
              f"| {row['kernel_drops']} | {rss['before']} / {rss['end_of_flood']} / {rss['2s_after']} "
              f"| {load['before']} / {load['after']} |")
    print()
    print(f"CPU per datagram in the UDP listener (in process, best of 5): over its source's bucket "
          f"{costs['over_its_bucket_us']} µs, shed by the budget {costs['shed_by_budget_us']} µs, an answered "
          f"Binding {costs['answered_binding_us']} µs.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
