"""rpturn-uclient: turnutils_uclient-style load through a TURN relay to an echo peer, with figures.

N clients each allocate, create a permission (`--indications`) or bind a channel (`--channels`, the default),
then send M messages of BYTES at an overall RATE to the echo peer through the relay and read the echoes.
Reports allocations made and their time, sent, received, loss, RTT p50/p99/max, achieved pps and errors by STUN
code; `--json` prints one JSON object instead. `--max-pps` steps the offered rate up until the loss exceeds
`--threshold` and reports the highest rate held (the offered rate of the best step at <= threshold loss; the
figures printed are that step's). `--processes` spreads the clients over processes.

Exit status: 0 when every allocation was made (and, with --max-pps, a rate was held), 1 otherwise, 2 on a usage
error.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.client import Credentials
from relay.harness.common import host_port, non_negative_float, peer_port, positive_int
from relay.harness.load import MIN_SIZE, Engine, LoadOptions, RunResult, SetupResult
from relay.restauth import make_credentials
from relay.stun import ERROR_REASONS

PROG = "rpturn-uclient"
DEFAULT_PEER = ("127.0.0.1", 3480)  # where rpturn-peer and turnutils_peer listen by default


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="Load a TURN relay with N clients echoing through a peer.")
    p.add_argument("server", type=host_port, metavar="HOST[:PORT]", help="TURN server (port 3478 by default)")
    p.add_argument("-u", "--user", required=True,
                   help="long-term credential user name (with --secret: the user part of the REST username)")
    secret = p.add_mutually_exclusive_group(required=True)
    secret.add_argument("-w", "--password", help="long-term credential password")
    secret.add_argument("--secret", help="TURN REST API shared secret: send the time-limited username "
                                         "'<expiry>:USER' and its password base64(HMAC-SHA1(SECRET, username))")
    p.add_argument("--ttl", type=positive_int, default=86400,
                   help="with --secret: seconds the credentials stay valid (default 86400)")
    p.add_argument("--realm", help="realm, used only if the server announces none")
    p.add_argument("--tcp", action="store_true", help="talk to the server over TCP (relaying stays UDP)")
    p.add_argument("--tls", action="store_true", help="talk to the server over TLS (TURN over TLS, port 5349 "
                                                      "by convention); the server's certificate is not checked "
                                                      "unless --ca is given")
    p.add_argument("--ca", metavar="FILE", help="with --tls: verify the server's certificate against this CA bundle")
    p.add_argument("--server-name", metavar="NAME", help="with --tls: SNI and the name --ca checks (default: HOST)")
    p.add_argument("--clients", type=positive_int, default=1, help="allocations, one client each (default 1)")
    p.add_argument("--messages", type=int, default=100,
                   help="messages per client (default 100); 0: allocate only (held for --duration if given)")
    p.add_argument("--size", type=int, default=100, help=f"payload bytes, at least {MIN_SIZE} (default 100)")
    p.add_argument("--rate", type=non_negative_float, default=1000.0,
                   help="packets per second offered by all clients together (default 1000; 0: as fast as possible)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--channels", dest="channels", action="store_true", default=True,
                      help="ChannelBind and send ChannelData (the default)")
    mode.add_argument("--indications", dest="channels", action="store_false",
                      help="CreatePermission and send Send indications")
    p.add_argument("--peer", type=peer_port, default=DEFAULT_PEER, metavar="ADDR:PORT",
                   help="UDP echo peer (default 127.0.0.1:3480)")
    p.add_argument("--duration", type=non_negative_float,
                   help="send for this many seconds instead of --messages (with --messages 0: hold this long)")
    p.add_argument("--linger", type=non_negative_float, default=1.0,
                   help="seconds to wait for the last echoes (default 1)")
    p.add_argument("--processes", default="1",
                   help="processes to spread the clients over: a number or 'auto' (one per core; default 1)")
    p.add_argument("--raw-echo", action="store_true",
                   help="measure the client alone: HOST:PORT is a plain UDP echo (rpturn-peer), no TURN set-up")
    p.add_argument("--json", action="store_true", help="print one JSON result instead of the report")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    search = p.add_argument_group(
        "--max-pps search",
        "Steps the rate up until a step loses more than --threshold, then bisects. max_pps is the offered rate "
        "(packets sent / sending time) of the best step held; sent, received, loss, RTT, offered_pps and "
        "achieved_pps are that step's figures, search_sent and search_received count every step. A failed step "
        "is retried --retries times before it counts. client_limited: the search ended on the client's side (it "
        "could not offer the rate, or the loss was in its own socket buffers), not the server's.")
    search.add_argument("--max-pps", action="store_true",
                        help="search for the highest rate held at <= --threshold loss (see above)")
    search.add_argument("--threshold", type=non_negative_float, default=0.1, help="loss %% allowed (default 0.1)")
    search.add_argument("--start-rate", type=positive_int, default=1000, help="first rate step, pps (default 1000)")
    search.add_argument("--step-factor", type=float, default=1.5,
                        help="each step offers this times the last held rate (default 1.5)")
    search.add_argument("--step-duration", type=non_negative_float, default=1.0,
                        help="seconds of sending per step (default 1)")
    search.add_argument("--refine", type=int, default=3,
                        help="bisection steps between the last rate held and the first lost (default 3)")
    search.add_argument("--retries", type=int, default=1,
                        help="runs again of a failed step before it counts as failed (default 1)")
    search.add_argument("--max-time", type=non_negative_float, default=60.0,
                        help="stop searching after this many seconds (default 60)")
    args = p.parse_args(argv)
    if (args.ca or args.server_name) and not args.tls:
        p.error("--ca and --server-name go with --tls")
    if args.size < MIN_SIZE or args.size > 65000:
        p.error(f"--size must be between {MIN_SIZE} (the send timestamp) and 65000")
    if args.messages < 0:
        p.error("--messages must not be negative")
    if args.retries < 0:
        p.error("--retries must not be negative")
    if args.step_factor <= 1.0:
        p.error("--step-factor must be more than 1")
    if args.processes == "auto":
        args.processes = os.cpu_count() or 1
    else:
        try:
            args.processes = int(args.processes)
        except ValueError:
            p.error("--processes takes a number or 'auto'")
        if args.processes < 1:
            p.error("--processes must be at least 1")
    args.processes = min(args.processes, args.clients)
    return args


# -- workers: the same Engine in this process or in others ---------------------------------------------------


class LocalWorker:
    """The engine in this process: calls go straight through."""

    def __init__(self, options: LoadOptions, count: int) -> None:
        self.engine = Engine(options, count)

    def call(self, command: str, *args: Any, progress: Callable[[int, int], None] | None = None) -> Any:
        if command == "run":
            return self.engine.run(*args[:3], step=args[3], start_at=args[4], linger=args[5], quiet=args[6],
                                   progress=progress)
        return getattr(self.engine, command)(*args)


def _worker_main(conn: multiprocessing.connection.Connection, options: LoadOptions, count: int,
                 counters: Any, slot: int) -> None:
    engine = Engine(options, count)

    def progress(sent: int, received: int) -> None:
        counters[2 * slot], counters[2 * slot + 1] = sent, received

    while True:
        command, args = conn.recv()
        if command == "run":
            conn.send(engine.run(*args[:3], step=args[3], start_at=args[4], linger=args[5], quiet=args[6],
                                 progress=progress))
        elif command == "close":
            engine.close()
            conn.send(None)
            return
        else:
            conn.send(getattr(engine, command)(*args))


class Pool:
    """The workers, and the progress line while they run."""

    def __init__(self, options: LoadOptions, clients: int, processes: int, show_progress: bool) -> None:
        self.shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
        self.show_progress = show_progress
        self.started = time.monotonic()
        self.local: LocalWorker | None = None
        self.conns: list[multiprocessing.connection.Connection] = []
        self.procs: list[multiprocessing.Process] = []
        if processes == 1:
            self.local = LocalWorker(options, clients)
            return
        context = multiprocessing.get_context("fork")  # Linux: the engine needs nothing re-imported
        self.counters = context.RawArray("q", 2 * processes)
        for slot, share in enumerate(self.shares):
            parent, child = context.Pipe()
            proc = context.Process(target=_worker_main, args=(child, options, share, self.counters, slot),
                                   daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def _progress(self, sent: int, received: int) -> None:
        if not self.show_progress:
            return
        lost = sent - received
        loss = 100.0 * lost / sent if sent else 0.0
        end = "\r" if sys.stderr.isatty() else "\n"
        print(f"[{time.monotonic() - self.started:6.1f} s] sent {sent} received {received} "
              f"in flight or lost {lost} ({loss:.2f} %)", end=end, file=sys.stderr, flush=True)

    def call(self, command: str, *args: Any) -> list[Any]:
        """The same command to every worker; their results in order."""
        return self.call_each(command, [args] * len(self.shares))

    def call_each(self, command: str, args_per_worker: list[tuple[Any, ...]]) -> list[Any]:
        if self.local is not None:
            progress = self._progress if command == "run" else None
            return [self.local.call(command, *args_per_worker[0], progress=progress)]
        for conn, args in zip(self.conns, args_per_worker, strict=True):
            conn.send((command, args))
        results: dict[int, Any] = {}
        while len(results) < len(self.conns):
            waiting = [c for i, c in enumerate(self.conns) if i not in results]
            for conn in multiprocessing.connection.wait(waiting, timeout=1.0):
                try:
                    results[self.conns.index(conn)] = conn.recv()
                except EOFError:
                    raise SystemExit(f"{PROG}: a worker process died") from None
            if command == "run":
                counts = list(self.counters)
                self._progress(sum(counts[0::2]), sum(counts[1::2]))
        return [results[i] for i in range(len(self.conns))]

    def run(self, rate: float, messages: int | None, duration: float | None, step: int, linger: float,
            quiet: float | None = None) -> RunResult:
        """Every worker sends its clients' part of `rate`, all starting at the same moment; merged result."""
        total = sum(self.shares)
        start_at = time.monotonic() + 0.05
        args = [(rate * share / total, messages, duration, step, start_at, linger, quiet) for share in self.shares]
        return merge_runs(self.call_each("run", args))

    def close(self) -> None:
        if self.local is not None:
            self.local.engine.close()
            return
        self.call("close")
        for proc in self.procs:
            proc.join(5)


# -- figures ----------------------------------------------------------------------------------------------------


SHORT_OFFER = 0.95  # a step whose client sent less than this share of its rate did not offer that rate

# Step verdicts of the --max-pps search.
HELD = "held"  # loss <= threshold at the rate asked for
SHORT = "short"  # loss <= threshold, but the client could not offer the rate: what it did offer counts as held
CLIENT_DROPS = "client-drops"  # loss over the threshold, but all but the threshold lost in the client's own sockets
LOST = "lost"  # loss over the threshold that the client's own drops do not explain: the server's (or peer's) limit


@dataclass
class Step:
    rate: float
    result: RunResult
    attempt: int = 1  # 2 = the first retry of this rate

    @property
    def loss_percent(self) -> float:
        r = self.result
        return 100.0 * (r.sent - r.received) / r.sent if r.sent else 0.0

    @property
    def offered_pps(self) -> float:
        r = self.result
        return r.sent / r.send_seconds if r.send_seconds else 0.0

    def verdict(self, threshold: float) -> str:
        r = self.result
        if r.sent and self.loss_percent <= threshold:
            return HELD if self.offered_pps >= SHORT_OFFER * self.rate else SHORT
        if r.sent and r.client_drops and 100.0 * (r.sent - r.received - r.client_drops) / r.sent <= threshold:
            return CLIENT_DROPS
        return LOST

    def record(self, threshold: float) -> dict[str, Any]:
        return {"rate": self.rate, "attempt": self.attempt, "verdict": self.verdict(threshold),
                **run_figures(self.result)}


def merge_setup(results: list[SetupResult]) -> SetupResult:
    merged = SetupResult()
    for r in results:
        merged.allocations += r.allocations
        merged.allocation_seconds = max(merged.allocation_seconds, r.allocation_seconds)
        merged.ready += r.ready
        merged.errors.update(r.errors)
    return merged


def merge_runs(results: list[RunResult]) -> RunResult:
    merged = RunResult()
    for r in results:
        merged.sent += r.sent
        merged.received += r.received
        merged.late += r.late
        merged.send_seconds = max(merged.send_seconds, r.send_seconds)
        merged.seconds = max(merged.seconds, r.seconds)
        merged.rtt_ns.extend(r.rtt_ns)
        merged.errors.update(r.errors)
    known = [r.client_drops for r in results]
    merged.client_drops = sum(known) if known and None not in known else None  # type: ignore[arg-type]
    return merged


def rtt_ms(samples: array) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "max": ordered[-1] / 1e6}


def run_figures(run: RunResult) -> dict[str, Any]:
    return {
        "sent": run.sent,
        "received": run.received,
        "late": run.late,
        "loss_percent": 100.0 * (run.sent - run.received) / run.sent if run.sent else 0.0,
        "rtt_ms": rtt_ms(run.rtt_ns),
        "offered_pps": run.sent / run.send_seconds if run.send_seconds else 0.0,
        "achieved_pps": run.received / run.send_seconds if run.send_seconds else 0.0,
        "seconds": run.seconds,
        "client_drops": run.client_drops,
    }


@dataclass
class Search:
    """What a --max-pps search found: `best` is the step with the highest offered rate at <= threshold loss."""

    steps: list[Step]
    best: Step | None
    client_limited: bool

    @property
    def max_pps(self) -> float:
        return self.best.offered_pps if self.best is not None else 0.0


def search_max_pps(run_step: Callable[[float, int], RunResult], args: argparse.Namespace) -> Search:
    """Offer rising rates (x --step-factor) until a step fails, then bisect between the highest rate held and the
    lowest failed for --refine steps. A failed step is run again up to --retries times (the run drains the last
    one's backlog first) before it counts as failed, so one burst of loss from another process does not end the
    search low. A step that lost <= threshold is held; if the client could not offer its rate (SHORT) what it did
    offer still counts as held. `client_limited`: the lowest failed rate failed on the client's side (SHORT, or
    lost in the client's own socket buffers), so the figure is the client's ceiling, not the server's.
    `run_step(rate, step_number)` sends one step (Pool.run in the tool)."""
    steps: list[Step] = []
    held, lost = 0.0, None  # highest rate held and lowest rate failed (rates asked for, for the bisection)
    client_limited = False
    best: Step | None = None
    rate = float(args.start_rate)
    refining = 0
    deadline = time.monotonic() + args.max_time
    while time.monotonic() < deadline:
        for attempt in range(1, args.retries + 2):
            step = Step(rate, run_step(rate, len(steps) + 1), attempt)
            steps.append(step)
            verdict = step.verdict(args.threshold)
            if verdict in (HELD, SHORT) and (best is None or step.offered_pps > best.offered_pps):
                best = step
            if verdict == HELD or time.monotonic() >= deadline:
                break
        if verdict == HELD:
            held = max(held, rate)
        elif lost is None or rate < lost:
            lost, client_limited = rate, verdict != LOST
        if lost is None:
            rate *= args.step_factor
        else:
            if refining >= args.refine:
                break
            refining += 1
            rate = (held + lost) / 2 if held else lost / args.step_factor
        rate = float(round(rate))
    return Search(steps, best, client_limited)


# -- output -------------------------------------------------------------------------------------------------------


def describe_errors(errors: Counter[str]) -> str:
    if not errors:
        return "none"
    parts = []
    for key, count in sorted(errors.items()):
        reason = ERROR_REASONS.get(int(key), "") if key.isdigit() else ""
        parts.append(f"{key}{' ' + reason if reason else ''}: {count}")
    return ", ".join(parts)


def report_text(result: dict[str, Any]) -> str:
    lines = [
        f"allocations: {result['allocations']} of {result['clients']} in {result['allocation_seconds']:.3f} s"
        + (f" ({result['allocations_per_second']:.0f}/s)" if result["allocations_per_second"] else ""),
    ]
    if "max_pps" in result:
        lines.append(f"max pps at <= {result['threshold_percent']:g} % loss: {result['max_pps']:.0f}"
                     + ("  (client-limited: the client could not offer more)" if result["client_limited"] else ""))
        for step in result["steps"]:
            lines.append(f"  step {step['rate']:>9.0f} pps{' (retry)' if step['attempt'] > 1 else '        '}: "
                         f"{step['verdict']:12} offered {step['offered_pps']:.0f} pps sent {step['sent']} "
                         f"received {step['received']} loss {step['loss_percent']:.3f} % "
                         f"p50 {_ms(step['rtt_ms']['p50'])}")
        lines.append("best step held:" if result["steps"] else "no step:")
    lines += [
        f"sent: {result['sent']}  received: {result['received']}  loss: {result['loss_percent']:.3f} %",
        f"rtt: p50 {_ms(result['rtt_ms']['p50'])}  p99 {_ms(result['rtt_ms']['p99'])}  "
        f"max {_ms(result['rtt_ms']['max'])}",
        f"achieved: {result['achieved_pps']:.0f} pps (offered {result['offered_pps']:.0f} pps)",
        f"errors: {describe_errors(Counter(result['errors']))}",
    ]
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def credentials_of(args: argparse.Namespace) -> Credentials:
    """The long-term credentials to send: as given, or (--secret) time-limited ones made from the secret."""
    if args.secret is None:
        return Credentials(args.user, args.password, args.realm)
    username, password = make_credentials(args.secret, args.user, args.ttl, time.time())
    return Credentials(username, password, args.realm)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    traffic = args.max_pps or args.messages > 0
    options = LoadOptions(
        server=args.server, credentials=credentials_of(args), tcp=args.tcp or args.tls,
        peer=args.peer, channels=args.channels, size=args.size, traffic=traffic, raw_echo=args.raw_echo,
        tls=args.tls, ca_file=args.ca, server_name=args.server_name,
    )
    pool = Pool(options, args.clients, args.processes, show_progress=not args.quiet)
    try:
        setup = merge_setup(pool.call("setup"))
        errors = Counter(setup.errors)
        result: dict[str, Any] = {
            "server": f"{args.server[0]}:{args.server[1]}",
            "transport": "tls" if args.tls else "tcp" if args.tcp else "udp",
            "mode": "channels" if args.channels else "indications", "clients": args.clients,
            "processes": args.processes, "size": args.size, "allocations": setup.allocations,
            "allocation_seconds": setup.allocation_seconds,
            "allocations_per_second": setup.allocations / setup.allocation_seconds
            if setup.allocation_seconds else 0.0,
        }
        run = RunResult()
        ok = setup.ready == args.clients and (args.raw_echo or setup.allocations == args.clients)
        if ok and args.max_pps:
            search = search_max_pps(
                lambda rate, number: pool.run(rate, None, args.step_duration, number, linger=0.25, quiet=0.1), args)
            run = search.best.result if search.best is not None else RunResult()
            result.update(max_pps=search.max_pps, threshold_percent=args.threshold,
                          client_limited=search.client_limited, best_rate=search.best and search.best.rate,
                          search_sent=sum(s.result.sent for s in search.steps),
                          search_received=sum(s.result.received for s in search.steps),
                          retries=sum(1 for s in search.steps if s.attempt > 1),
                          steps=[s.record(args.threshold) for s in search.steps])
            for step in search.steps:
                errors.update(step.result.errors)
            ok = search.max_pps > 0
            result.update(run_figures(run))
        elif ok and traffic:
            messages = None if args.duration is not None else args.messages
            run = pool.run(args.rate, messages, args.duration, 0, args.linger)
        elif ok and args.duration:
            for held_errors in pool.call("hold", args.duration):
                errors.update(held_errors)
        if not args.max_pps:
            errors.update(run.errors)
            result.update(run_figures(run))
        result["errors"] = dict(errors)
    finally:
        pool.close()
    if not args.quiet and sys.stderr.isatty():
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    else:
        print(report_text(result))
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
