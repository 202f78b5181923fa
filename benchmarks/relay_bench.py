"""The relay benchmark's measurements: scenarios, the echo peer, load runs through `rpturn-uclient`, /proc deltas.

`Bench.run` starts each server fresh per round (coturn, ours-w1, ours-w2, coturn, ...: A B A B, only one alive at
a time, all on the same relay port range), runs every scenario against it, then times 1000 allocations; after the
rounds each server is started once more to hold the idle allocations for the memory figure.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from procstat import ProcessGone, sample
from relay_report import summarize
from relay_servers import (
    PASSWORD,
    REALM,
    USERNAME,
    Server,
    coturn_version,
    is_coturn,
    running_coturn,
    running_ours,
    workers_of,
)

from tests.support.coturn import free_port
from tests.support.revproxy_process import Pki

UCLIENT = str(Path(sys.executable).with_name("rpturn-uclient"))
TURNUTILS_PEER = shutil.which("turnutils_peer") or "/usr/bin/turnutils_peer"

# One relay port range for every server (coturn, ours): below Linux's ephemeral ports (32768-60999), where the
# load client's own sockets live, and wide enough for the idle allocations plus the scenarios' leftovers.
MIN_PORT, MAX_PORT = 20000, 31999

# The load client and the echo peer run at a higher scheduling priority than the server under test (when the
# benchmark may raise it: root or CAP_SYS_NICE). On 2 cores all three share the CPUs; at equal priority the
# client got half a core when a workers = 2 relay was busy and could not offer the rate, so the search ended at
# the client's ceiling. With priority it offers what it is asked and the server gets the rest: max pps is where
# the server loses packets.
LOAD_NICE = -10

FIXED_RATE = 1000  # pps for the RTT figures ("a moderate rate")
LOSS_LIMIT = 0.1  # percent, for max pps
MIB = 1024 * 1024


class BenchError(RuntimeError):
    """Something the benchmark needs could not be started or did not answer; the message says what."""


@dataclass(frozen=True)
class Scenario:
    mode: str  # "channels" (ChannelData) or "indications" (Send/Data indications)
    allocations: int
    size: int  # payload bytes
    transport: str = "udp"  # client to server: "udp", or "tls" (TURN over TLS, the servers' TLS listeners)

    @property
    def name(self) -> str:
        return f"{self.mode}-{self.allocations}x{self.size}" + ("" if self.transport == "udp" else f"-{self.transport}")

    @property
    def title(self) -> str:
        kind = "ChannelData" if self.mode == "channels" else "Send/Data"
        over = "" if self.transport == "udp" else f" over {self.transport.upper()}"
        return f"{kind}{over}, {self.allocations} allocation{'s' if self.allocations > 1 else ''}, {self.size} B"


# TURN over TLS: ChannelData over TLS, 10 allocations, 100 B, against coturn with TLS.
TLS_SCENARIO = Scenario("channels", 10, 100, "tls")


def plan(*, quick: bool = False) -> list[Scenario]:
    """Every scenario the relay targets ask for; `quick` keeps one of each mode and the TLS one."""
    if quick:
        return [Scenario("channels", 1, 100), Scenario("indications", 10, 1000), TLS_SCENARIO]
    return [*(Scenario(mode, n, size)
              for mode, n, size in itertools.product(("channels", "indications"), (1, 10, 50), (100, 1000))),
            TLS_SCENARIO]


def select(spec: str, *, quick: bool = False) -> tuple[list[Scenario], bool]:
    """The scenarios `spec` names (comma-separated) and whether it asks for the allocation figures.

    Each entry is a scenario's name ("channels-10x100", "channels-10x100-tls"), or words: "ChannelData 10 alloc
    100 B" (ChannelData or channels, Send or indications; the first number is the allocations, the second the
    payload size; "TLS" for over TLS), or "allocations" (allocation rate and idle allocations). ValueError for an
    entry that names none of the planned scenarios.
    """
    known = {s.name: s for s in plan()} | {s.name: s for s in plan(quick=quick)}
    chosen: list[Scenario] = []
    allocations = False
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        words = entry.lower()
        if words in ("allocations", "allocation"):
            allocations = True
            continue
        scenario = known.get(entry)
        if scenario is None:
            numbers = re.findall(r"\d+", words)
            mode = "channels" if "channel" in words else "indications" if ("send" in words or "indication" in words) \
                else None
            if mode is not None and len(numbers) >= 2:
                transport = "tls" if "tls" in words else "udp"
                scenario = known.get(Scenario(mode, int(numbers[0]), int(numbers[1]), transport).name)
        if scenario is None:
            raise ValueError(f"--scenarios: {entry!r} is none of: {', '.join(known)}, allocations")
        if scenario not in chosen:
            chosen.append(scenario)
    return chosen, allocations


@dataclass(frozen=True)
class Timing:
    """How long each load run lasts; the full run must fit in ~10 minutes on 2 cores."""

    step_duration: float  # seconds per rate step of the max-pps search
    first_start_rate: int  # the first round's search starts here and doubles ...
    refine: int  # ... then bisects this many times; later rounds start from 0.6 x the first round's figure
    fixed_duration: float  # seconds at FIXED_RATE for the RTT figures
    allocation_count: int  # allocations timed for the allocation rate
    hold_seconds: float  # how long the idle allocations are held once made


FULL = Timing(step_duration=0.25, first_start_rate=4000, refine=2, fixed_duration=1.0, allocation_count=1000,
              hold_seconds=1.5)
QUICK = Timing(step_duration=0.2, first_start_rate=4000, refine=1, fixed_duration=0.5, allocation_count=50,
               hold_seconds=0.5)


def raise_priority() -> None:
    """In a load process before exec: nice LOAD_NICE if allowed; unprivileged it stays as it is."""
    with contextlib.suppress(OSError):
        os.nice(LOAD_NICE)


def priority_of(pid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, pid)
    except OSError:
        return None


class EchoPeer:
    """coturn's C echo peer (turnutils_peer) on 127.0.0.1; measured faster than rpturn-peer (see the README)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen([TURNUTILS_PEER, "-L", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=raise_priority)
        self.nice = priority_of(self.process.pid)
        time.sleep(0.2)
        if self.process.poll() is not None:
            raise BenchError(f"turnutils_peer exited with {self.process.returncode}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return sample(self.process.pid).cpu_seconds

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)


def uclient(server: Server, args: list[str], timeout: float, watch: Callable[[], None] = lambda: None,
            transport: str = "udp") -> dict:
    """Run rpturn-uclient against `server` with --json and return its result; BenchError when it fails.

    `watch` is called every 50 ms while the client runs (the benchmark samples the server's RSS with it).
    `transport` "tls": to the server's TLS listener, with --tls.
    """
    tls = ["--tls"] if transport == "tls" else []
    command = [UCLIENT, server.address_for(transport), *tls, "-u", USERNAME, "-w", PASSWORD, "--realm", REALM,
               "--json", "--quiet", *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                   preexec_fn=raise_priority)
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise BenchError(f"rpturn-uclient did not finish within {timeout:.0f} s: {' '.join(command)}")
            watch()
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [line for line in stdout.splitlines() if line.strip().startswith("{")]
    if not lines:
        raise BenchError(f"rpturn-uclient exited with {process.returncode} and no JSON result: "
                         f"{' '.join(command)}\n{stderr[-2000:]}")
    return json.loads(lines[-1])


class Bench:
    def __init__(self, *, servers: list[str], rounds: int, quick: bool, idle_allocations: int,
                 coturns: dict[str, str] | None = None, allocations: bool = True,
                 log: Callable[[str], None] = lambda line: print(line, flush=True)) -> None:
        """`servers`: the run's server names in order; `coturns` {coturn server name: turnserver binary} for the
        coturns among them (relay_servers.coturn_servers); `allocations`: also the allocation rate and idle
        allocations."""
        # The servers' TLS listeners (TLS scenario) serve a test certificate made here (TLS 1.2/1.3, ECDSA P-256).
        self._pki_dir = tempfile.TemporaryDirectory(prefix="rpturn-bench-pki-")
        self.bundle = str(Pki(Path(self._pki_dir.name)).bundle)
        self.servers = servers
        self.coturns = coturns or {}
        self.measure_allocations = allocations
        self.rounds = rounds
        self.timing = QUICK if quick else FULL
        self.idle_allocations = idle_allocations
        self.log = log
        self.missing: list[str] = []  # figures no round could measure: the benchmark exits non-zero
        self.round_failures: list[str] = []  # single rounds that failed; the medians use the others
        self.peer: EchoPeer | None = None
        self.peer_busiest = 0.0  # highest share of one core the echo peer used in any run
        self.client_busiest = 0.0
        self.descriptions: dict[str, str] = {}
        self.first_found: dict[tuple[str, str], float] = {}  # (server, scenario) -> first round's max pps
        self.last_wakeups = 0  # the server's wake-ups (voluntary context switches) over the last measured run
        self.datagram_io: dict[str, list[list[str]]] = {}  # ours: per server start, each process's datagram counts

    # --- servers ---

    @contextlib.contextmanager
    def server(self, name: str) -> Iterator[Server]:
        if is_coturn(name):
            context = running_coturn(MIN_PORT, MAX_PORT, tls_bundle=self.bundle, name=name,
                                     **({"binary": self.coturns[name]} if name in self.coturns else {}))
        else:
            context = running_ours(workers_of(name), MIN_PORT, MAX_PORT, tls_bundle=self.bundle,
                                   datagram_io="python" if name.endswith("-python") else None)
        try:
            with context as server:
                settle(server.pid, workers=0 if is_coturn(name) else workers_of(name))
                self.descriptions.setdefault(name, server.description)
                yield server
            for line in server.datagram_io:  # ours, stopped: datagrams per reactor event in each process
                self.log(f"{name} datagram I/O, {line}")
            if server.datagram_io:
                self.datagram_io.setdefault(name, []).append(server.datagram_io)
        except (RuntimeError, OSError) as error:
            if isinstance(error, BenchError):
                raise
            raise BenchError(f"{name}: {error}") from error

    # --- one measurement ---

    def _measured(self, server: Server, args: list[str], timeout: float,
                  transport: str = "udp") -> tuple[dict, float, int]:
        """A uclient run, the server's CPU seconds over it and its peak RSS (bytes) while it ran; the server's
        wake-ups over it in `last_wakeups`."""
        assert self.peer is not None
        try:
            before = sample(server.pid, wakeups=True)
        except ProcessGone:
            raise BenchError(f"{server.name} died") from None
        peak = [before.rss_bytes]

        def watch() -> None:
            with contextlib.suppress(ProcessGone, OSError):
                peak[0] = max(peak[0], sample(server.pid).rss_bytes)

        peer_before = self.peer.cpu()
        client_before = os.times()
        wall = time.monotonic()
        result = uclient(server, args, timeout, watch, transport)
        wall = time.monotonic() - wall
        client_after = os.times()
        try:
            after = sample(server.pid, wakeups=True)
        except ProcessGone:
            raise BenchError(f"{server.name} died during {' '.join(args)}") from None
        self.last_wakeups = after.wakeups - before.wakeups
        self.peer_busiest = max(self.peer_busiest, (self.peer.cpu() - peer_before) / wall)
        client_cpu = (client_after.children_user + client_after.children_system
                      - client_before.children_user - client_before.children_system)
        self.client_busiest = max(self.client_busiest, client_cpu / wall)
        return result, after.cpu_seconds - before.cpu_seconds, max(peak[0], after.rss_bytes)

    def search_arguments(self, server: Server, scenario: Scenario, *, cold: bool = False) -> list[str]:
        """The first round searches from a low rate doubling; later rounds start near what the first one found."""
        t = self.timing
        found = self.first_found.get((server.name, scenario.name))
        if cold:
            start, factor = 1000, 2.0
        elif not found:
            start, factor = t.first_start_rate, 2.0
        else:
            start, factor = max(1000, int(found * 0.6)), 1.3
        return ["--max-pps", "--step-duration", str(t.step_duration), "--start-rate", str(start),
                "--step-factor", str(factor), "--refine", str(t.refine), "--retries", "1", "--max-time", "20"]

    def scenario(self, server: Server, scenario: Scenario) -> dict:
        assert self.peer is not None
        common = ["--clients", str(scenario.allocations), "--size", str(scenario.size),
                  "--channels" if scenario.mode == "channels" else "--indications", "--peer", self.peer.address]
        record: dict = {"server": server.name, "scenario": scenario.name}
        over = scenario.transport
        result, cpu, rss = self._measured(server, [*common, *self.search_arguments(server, scenario)], timeout=60,
                                          transport=over)
        if not max_pps_of(result):
            # Nothing held, usually a burst of loss from something else on the machine: search once more from low.
            self.round_failures.append(f"{server.name} {scenario.title}: max-pps search held nothing; searched again")
            result, cpu, rss = self._measured(
                server, [*common, *self.search_arguments(server, scenario, cold=True)], timeout=60, transport=over)
        record.update(max_pps=max_pps_of(result), client_limited=result.get("client_limited"),
                      max_pps_run=result, rss_mib=rss / MIB)
        if record["max_pps"]:
            self.first_found.setdefault((server.name, scenario.name), record["max_pps"])
        relayed = relayed_packets(result)
        record["cpu_us_per_packet"] = cpu / relayed * 1e6 if relayed else None
        record["packets_per_wakeup"] = relayed / self.last_wakeups if relayed and self.last_wakeups else None
        result, cpu, rss = self._measured(
            server, [*common, "--rate", str(FIXED_RATE), "--duration", str(self.timing.fixed_duration),
                     "--linger", "0.3"], timeout=30, transport=over)
        record.update(fixed_rate_run=result, rtt_p50_ms=rtt_of(result, "p50"), rtt_p99_ms=rtt_of(result, "p99"),
                      loss_at_fixed_rate=loss_of(result))
        relayed = relayed_packets(result)
        record["cpu_us_per_packet_at_1000pps"] = cpu / relayed * 1e6 if relayed else None
        record["rss_mib"] = max(record["rss_mib"], rss / MIB)
        for key in ("max_pps", "rtt_p50_ms", "rtt_p99_ms", "cpu_us_per_packet"):
            if not record[key]:
                record[key] = None
                errors = {**result.get("errors", {}), **record["max_pps_run"].get("errors", {})}
                self.round_failures.append(f"{server.name} {scenario.title}: no {key} this round (errors {errors})")
        return record

    def allocation_rate(self, server: Server) -> float | None:
        """Allocations per second over `allocation_count` allocations made at once.

        A few failures in a thousand do not void the figure (coturn answers 437 now and then when the client's new
        socket reuses the port of an earlier run's allocation it has not forgotten yet): they are recorded.
        """
        count = self.timing.allocation_count
        result, _cpu, _rss = self._measured(server, ["--clients", str(count), "--messages", "0"], timeout=120)
        made, seconds = allocations_of(result)
        if made < count:
            self.round_failures.append(f"{server.name} allocation rate: {made} of {count} allocations, errors "
                                       f"{result.get('errors')}")
        if made < 0.99 * count or not seconds:
            return None
        return made / seconds

    def idle_allocations_test(self, server: Server) -> dict:
        """Hold `idle_allocations` allocations without traffic; the server's peak RSS meanwhile, less its RSS before.

        Sampling (the /proc reads of the watch loop) is light next to the allocation work, and the peak is reached
        with every allocation held, before the client deletes them on exit.
        """
        count = self.idle_allocations
        before = sample(server.pid).rss_bytes
        result, _cpu, peak = self._measured(
            server, ["--clients", str(count), "--messages", "0", "--duration", str(self.timing.hold_seconds)],
            timeout=240)
        made, seconds = allocations_of(result)
        out = {"held": made, "errors": result.get("errors", {}), "rss_before_mib": before / MIB,
               "rss_after_mib": peak / MIB, "kib_per_allocation": (peak - before) / made / 1024 if made else None,
               "idle_rate_per_s": made / seconds if seconds else None, "run": result}
        if made != count:  # a figure all the same (per allocation held); the "held" target reports the shortfall
            self.round_failures.append(f"{server.name}: {made} of {count} idle allocations held, errors "
                                       f"{result.get('errors')}")
        if not made:
            self.missing.append(f"idle allocations for {server.name}: none held")
        return out

    # --- the whole run ---

    def run(self, scenarios: list[Scenario]) -> dict:
        self.peer = EchoPeer()
        per: dict[str, dict[str, list[dict]]] = {s.name: {name: [] for name in self.servers} for s in scenarios}
        rates: dict[str, list[float]] = {name: [] for name in self.servers}
        try:
            for round_number in range(1, self.rounds + 1):
                for name in self.servers:
                    start = time.monotonic()
                    with self.server(name) as server:
                        for scenario in scenarios:
                            record = self.scenario(server, scenario)
                            record["round"] = round_number
                            per[scenario.name][name].append(record)
                            self.log(f"round {round_number} {name:8} {scenario.title:40} "
                                     f"max {fmt(record['max_pps'], '{:,.0f}')} pps, "
                                     f"p50 {fmt(record['rtt_p50_ms'], '{:.3f}')} ms, "
                                     f"{fmt(record['cpu_us_per_packet'], '{:.1f}')} µs/pkt")
                        rate = self.allocation_rate(server) if self.measure_allocations else None
                        if rate is not None:
                            rates[name].append(rate)
                    self.log(f"round {round_number} {name}: {time.monotonic() - start:.0f} s, "
                             f"allocation rate {fmt(rate, '{:,.0f}')}/s")
            for scenario in scenarios:
                for name in self.servers:
                    for key in ("max_pps", "rtt_p50_ms", "rtt_p99_ms", "cpu_us_per_packet"):
                        if all(record[key] is None for record in per[scenario.name][name]):
                            self.missing.append(f"{key} for {name} in {scenario.title}")
            allocations: dict[str, dict] = {}
            if self.measure_allocations:
                self.missing += [f"allocation rate for {name}" for name in self.servers if not rates[name]]
            for name in self.servers if self.measure_allocations else ():
                with self.server(name) as server:
                    allocations[name] = self.idle_allocations_test(server)
                allocations[name]["rate_per_s"] = median(rates[name])
                allocations[name]["rate_rounds"] = rates[name]
                self.log(f"{name}: {allocations[name]['held']} idle allocations, "
                         f"{fmt(allocations[name]['kib_per_allocation'], '{:.2f}')} KiB each")
        finally:
            self.peer.stop()
        return {
            "servers": self.servers,
            "environment": self.environment(),
            "scenarios": [
                {"name": s.name, "title": s.title, "mode": s.mode, "transport": s.transport,
                 "allocations": s.allocations, "size": s.size,
                 "rounds": per[s.name], "median": {name: summarize(per[s.name][name]) for name in self.servers}}
                for s in scenarios
            ],
            "allocations": allocations,
            "missing": self.missing,
            "round_failures": self.round_failures,
            "datagram_io": self.datagram_io,
        }

    def environment(self) -> dict:
        notes = [f"{name}: {text}" for name, text in self.descriptions.items()]
        nice = self.peer.nice if self.peer is not None else None
        notes.append(f"load priority: client and echo peer at nice {nice} (servers at 0)" if nice == LOAD_NICE else
                     f"load priority: not raised (nice {nice}; needs root or CAP_SYS_NICE), so on a busy 2-core "
                     "machine max pps may be the client's ceiling (see 'client-limited')")
        notes.append(f"echo peer: turnutils_peer (C); busiest run used {self.peer_busiest:.0%} of one core")
        notes.append(f"load client: rpturn-uclient; busiest run used {self.client_busiest:.0%} of a core "
                     f"(all its processes)")
        notes.append(f"max pps: uclient --max-pps, {self.timing.step_duration} s per rate step, loss <= "
                     f"{LOSS_LIMIT} %, a failed step retried once; the offered rate of the best step held; "
                     "CPU per packet over that whole search, packets relayed both ways; packets per wake-up: "
                     "those packets over the voluntary context switches of every thread of the server's processes "
                     "in that search (how much work a server finds each time it wakes)")
        notes.append(f"RTT: {self.timing.fixed_duration} s at {FIXED_RATE} pps; relay ports {MIN_PORT}-{MAX_PORT}")
        notes.append("RSS is user-space memory of the whole process tree (workers and supervisor each count); "
                     "kernel socket buffers are in neither server's figure")
        return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                "coturn": {name: coturn_version(binary) for name, binary in self.coturns.items()} or coturn_version(),
                "descriptions": self.descriptions, "notes": notes,
                "peer_busiest_core_share": self.peer_busiest, "client_busiest_core_share": self.client_busiest,
                "timing": self.timing.__dict__}


def settle(pid: int, workers: int) -> None:
    """Wait (up to 5 s) until a multi-worker relay has all its workers, then let start-up work finish."""
    deadline = time.monotonic() + 5
    while workers > 1 and time.monotonic() < deadline and sample(pid).processes < workers + 1:
        time.sleep(0.05)
    time.sleep(0.3)


def median(values: list[float]) -> float | None:
    import statistics

    return statistics.median(values) if values else None


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else spec.format(value)


# --- reading rpturn-uclient's JSON (kept in one place: the tool's output format is its owner's) ---

def max_pps_of(result: dict) -> float | None:
    return result.get("max_pps")


def rtt_of(result: dict, which: str) -> float | None:
    return result.get("rtt_ms", {}).get(which)


def loss_of(result: dict) -> float | None:
    return result.get("loss_percent")


def relayed_packets(result: dict) -> int:
    """Datagrams the server relayed: client -> peer and peer -> client, both counted; over a whole --max-pps search
    (every step), where `sent` and `received` are only the best step's."""
    sent = result.get("search_sent", result.get("sent", 0))
    received = result.get("search_received", result.get("received", 0))
    return int(sent) + int(received)


def allocations_of(result: dict) -> tuple[int, float]:
    return int(result.get("allocations", 0)), float(result.get("allocation_seconds", 0.0))
