"""Tables and target checks for the relay benchmark: medians of the rounds, ratios ours/coturn, markdown out.

Pure functions over the result dictionaries the benchmark collects; nothing here measures anything. The coturns
("coturn-4.6.1", "coturn-4.17.1", ...: every server whose name starts with "coturn") are the anchors: each of
ours gets a ratio column and its targets against each of them.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

# name, JSON key, format, "higher is better"
METRICS = (
    ("max pps (≤ 0.1 % loss)", "max_pps", "{:,.0f}", True),
    ("RTT p50 @ 1000 pps (ms)", "rtt_p50_ms", "{:.3f}", False),
    ("RTT p99 @ 1000 pps (ms)", "rtt_p99_ms", "{:.3f}", False),
    ("CPU µs / relayed packet", "cpu_us_per_packet", "{:.1f}", False),
    ("relayed packets per server wake-up", "packets_per_wakeup", "{:.1f}", True),
    ("server RSS (MiB)", "rss_mib", "{:.1f}", False),
)


def median_of(rounds: Iterable[dict], key: str) -> float | None:
    values = [r[key] for r in rounds if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(rounds: list[dict]) -> dict:
    """Median of each metric over the rounds, with the spread (min, max) for the reader to judge noise."""
    out: dict = {}
    for _label, key, _fmt, _higher in METRICS:
        values = [r[key] for r in rounds if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
        out[key + "_range"] = [min(values), max(values)] if values else None
    out["client_limited_rounds"] = sum(1 for r in rounds if r.get("client_limited"))
    out["rounds"] = len(rounds)
    return out


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def anchors_of(servers: list[str]) -> list[str]:
    return [s for s in servers if s.startswith("coturn")]


def ours_of(servers: list[str]) -> list[str]:
    return [s for s in servers if not s.startswith("coturn")]


def _cell(fmt: str, value: float | None) -> str:
    return "—" if value is None else fmt.format(value)


def scenario_table(scenario: dict, servers: list[str]) -> str:
    """One markdown table: a row per metric, a column per server, then ratio columns ours/each coturn."""
    ours, anchors = ours_of(servers), anchors_of(servers)
    pairs = [(s, a) for s in ours for a in anchors]
    header = ["metric", *servers, *(f"{s} / {a}" for s, a in pairs)]
    lines = [f"#### {scenario['title']}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    medians = scenario["median"]
    for label, key, fmt, _higher in METRICS:
        row = [label] + [_cell(fmt, medians[s][key]) for s in servers]
        row += [_cell("{:.2f}", ratio(medians[s][key], medians[a][key])) for s, a in pairs]
        lines.append("| " + " | ".join(row) + " |")
    # The search stops at the client's own ceiling too: then the figure says little about the server.
    row = ["max pps search client-limited"] + [
        f"{medians[s]['client_limited_rounds']} of {medians[s]['rounds']} rounds" for s in servers
    ] + [""] * len(pairs)
    lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def allocation_table(allocations: dict, servers: list[str]) -> str:
    ours, anchors = ours_of(servers), anchors_of(servers)
    pairs = [(s, a) for s in ours for a in anchors]
    rows = (
        ("allocations / s (1000 allocations)", "rate_per_s", "{:,.0f}"),
        ("idle allocations held", "held", "{:,.0f}"),
        ("RSS before (MiB)", "rss_before_mib", "{:.1f}"),
        ("RSS with idle allocations (MiB)", "rss_after_mib", "{:.1f}"),
        ("memory per allocation (KiB)", "kib_per_allocation", "{:.2f}"),
    )
    header = ["metric", *servers, *(f"{s} / {a}" for s, a in pairs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for label, key, fmt in rows:
        row = [label] + [_cell(fmt, allocations[s].get(key)) for s in servers]
        row += [_cell("{:.2f}", ratio(allocations[s].get(key), allocations[a].get(key))) for s, a in pairs]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# The scenario the relay's headline targets name: workers = 2, ChannelData 100 B, 10 allocations (over UDP).
HEADLINE = "channels-10x100"


def check_targets(results: dict) -> list[dict]:
    """The performance targets against each coturn, with the measured figure and whether met.

    Per-scenario targets are checked in every scenario they apply to and reported by their worst case.
    """
    targets: list[dict] = []
    channel = [s for s in results["scenarios"] if s["mode"] == "channels" and s.get("transport", "udp") == "udp"]
    over_tls = [s for s in results["scenarios"] if s.get("transport") == "tls"]
    headline = [s for s in results["scenarios"] if s["name"] == HEADLINE]

    def worst(scenarios: list[dict], server: str, anchor: str, key: str, higher: bool, *, difference: bool = False):
        worst_value, where = None, None
        for s in scenarios:
            med = s["median"]
            if difference:
                if med[server][key] is None or med[anchor][key] is None:
                    continue
                value = med[server][key] - med[anchor][key]
            else:
                value = ratio(med[server][key], med[anchor][key])
            if value is None:
                continue
            if worst_value is None or (value < worst_value if higher else value > worst_value):
                worst_value, where = value, s["title"]
        return worst_value, where

    def add(name: str, measured, where, limit: float, higher: bool, unit: str) -> None:
        met = None if measured is None else (measured >= limit if higher else measured <= limit)
        targets.append({"target": name, "measured": measured, "worst_in": where, "limit": limit,
                        "unit": unit, "met": met})

    servers = results["servers"]
    ours = ours_of(servers)
    allocations = results.get("allocations") or {}
    for anchor in anchors_of(servers):
        for server in (s for s in ours if s.startswith("ours-w2")):
            if headline:
                add(f"ChannelData 10 allocations 100 B max pps, {server}, ≥ 1.0 x {anchor}",
                    *worst(headline, server, anchor, "max_pps", True), 1.0, True, "x")
                add(f"ChannelData 10 allocations 100 B CPU per relayed packet, {server}, ≤ 1.0 x {anchor}",
                    *worst(headline, server, anchor, "cpu_us_per_packet", False), 1.0, False, "x")
            add(f"ChannelData max pps, {server}, ≥ 1.0 x {anchor}",
                *worst(channel, server, anchor, "max_pps", True), 1.0, True, "x")
        for server in (s for s in ours if s.startswith("ours-w1")):
            add(f"ChannelData max pps, {server}, ≥ 0.6 x {anchor}",
                *worst(channel, server, anchor, "max_pps", True), 0.6, True, "x")
        for server in ours:
            if over_tls:
                add(f"ChannelData over TLS max pps, {server}, ≥ 0.8 x {anchor}",
                    *worst(over_tls, server, anchor, "max_pps", True), 0.8, True, "x")
            add(f"CPU per relayed packet, {server}, ≤ 2 x {anchor}",
                *worst(results["scenarios"], server, anchor, "cpu_us_per_packet", False), 2.0, False, "x")
            add(f"RTT p50 at 1000 pps, {server}, within 0.1 ms of {anchor}",
                *worst(results["scenarios"], server, anchor, "rtt_p50_ms", False, difference=True), 0.1, False, "ms")
            if server in allocations and anchor in allocations:
                add(f"allocation rate, {server}, ≥ 0.5 x {anchor}",
                    ratio(allocations[server].get("rate_per_s"), allocations[anchor].get("rate_per_s")), None, 0.5,
                    True, "x")
    for server in (s for s in ours if s in allocations):
        mine = allocations[server]
        add(f"memory per idle allocation, {server}, ≤ 10 KiB", mine.get("kib_per_allocation"), None, 10.0,
            False, "KiB")
        wanted = results.get("idle_allocations_requested", 10_000)
        add(f"idle allocations held, {server}, {wanted:,}", mine.get("held"), None, wanted, True, "")
    return targets


def targets_table(targets: list[dict]) -> str:
    lines = ["| target | measured (worst case) | met |", "|---|---:|:---:|"]
    for t in targets:
        measured = "—" if t["measured"] is None else (
            f"{t['measured']:+.3f} ms" if t["unit"] == "ms" else
            f"{t['measured']:,.0f}" if t["unit"] == "" else
            f"{t['measured']:.2f} {t['unit']}"
        )
        if t["worst_in"]:
            measured += f" ({t['worst_in']})"
        met = {True: "yes", False: "**no**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {measured} | {met} |")
    return "\n".join(lines)
