"""`rpturn status [--config FILE] [--json]`: what the running appliance is doing, at a glance.

Reads GET /status from the `[management] listen` address of the config file (a wildcard address is reached on
loopback) and prints it as a short table: the relay's allocations by transport and its counters, the proxy's
nodes up or down, the certificate's expiry, the processes. `--json` prints the /status document as it came.
Exit 0 when the appliance answers and is running, 1 when it is degraded (a service without a live process) or
cannot be reached (one line: not running, or refused by `allow`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
import urllib.error
import urllib.request
from typing import Any

from appliance.cli import CommandError

HELP = "show the running appliance's state: relay allocations, proxy nodes, certificate, processes"
TIMEOUT = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default="conf/rpturn.toml", help="the appliance's TOML config file")
    parser.add_argument("--json", action="store_true", help="print the /status JSON document")


def status_url(path: str) -> str:
    from appliance.config import ConfigError, format_hostport
    from appliance.management_config import load_management_config

    try:
        config = load_management_config(path)
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    if config.listen is None:
        raise CommandError(f'{path}: [management] listen is "" (off): there is no status to read')
    host, port = config.listen
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{format_hostport(host, port)}/status"


def fetch(url: str) -> dict[str, Any]:
    where = url.removeprefix("http://").removesuffix("/status")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code == 403:
            raise CommandError(f"the management listener on {where} refused this host ([management] allow)") from None
        raise CommandError(f"the management listener on {where} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CommandError(f"the appliance is not running (nothing answers on {where}: {reason})") from None
    except ValueError:
        raise CommandError(f"the listener on {where} did not answer with rpturn's status JSON") from None


def _count(n: Any) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_status(status: dict[str, Any], now: float | None = None) -> str:
    """The table a person reads at a glance (pure: the /status dict in, text out)."""
    now = time.time() if now is None else now
    relay, proxy = status.get("relay", {}), status.get("revproxy", {})
    lines: list[str] = []

    def row(label: str, value: Any) -> None:
        lines.append(f"  {label:<26} {value}")

    up = datetime.timedelta(seconds=int(status.get("uptime_seconds", 0)))
    lines.append(f"rpturn appliance: {status.get('state', 'unknown')} (up {up})")
    lines.append("")
    lines.append(f"TURN relay: {relay.get('state', 'not running')}")
    by = relay.get("allocations_by_transport", {})
    row("listening on", (", ".join(relay.get("listen", [])) or "-") + " (UDP, TCP)"
        + "".join(f", {a} (TLS)" for a in relay.get("tls_listen", [])))
    row("relay ports", relay.get("relay_ports") or "-")
    row("allocations", f"{_count(relay.get('allocations', 0))}  (UDP {by.get('udp', 0)}, TCP {by.get('tcp', 0)}, "
                       f"TLS {by.get('tls', 0)})")
    row("active TURN clients", _count(relay.get("clients", 0)))
    row("created / deleted", f"{_count(relay.get('allocations_created', 0))} / "
                             f"{_count(relay.get('allocations_deleted', 0))}")
    row("STUN binding requests", _count(relay.get("binding_requests", 0)))
    row("auth failures", _count(relay.get("auth_failures", 0)))
    row("486 quota / 508 capacity", f"{relay.get('quota_rejections', 0)} / {relay.get('capacity_rejections', 0)}")
    packets, octets = relay.get("relayed_packets", {}), relay.get("relayed_bytes", {})
    row("relayed client->peer", f"{_count(packets.get('client_to_peer', 0))} packets, "
                                f"{_bytes(octets.get('client_to_peer', 0))}")
    row("relayed peer->client", f"{_count(packets.get('peer_to_client', 0))} packets, "
                                f"{_bytes(octets.get('peer_to_client', 0))}")
    row("workers (restarts)", f"{relay.get('workers', 0)} ({relay.get('worker_restarts', 0)})")
    lines.append("")
    lines.append(f"HTTPS reverse proxy: {proxy.get('state', 'not running')}")
    listen = proxy.get("listen", {})
    row("listening on", f"{listen.get('https') or '-'} (HTTPS), {listen.get('http') or 'off'} (HTTP)")
    responses = proxy.get("responses", {})
    row("requests", f"{_count(proxy.get('requests', 0))}  ("
                    + (", ".join(f"{k} {v}" for k, v in sorted(responses.items()) if v) or "none") + ")")
    row("open /events, WebSockets", f"{proxy.get('event_streams', 0)}, {proxy.get('websockets', 0)}")
    row("workers (restarts)", f"{proxy.get('workers', 0)} ({proxy.get('worker_restarts', 0)})")
    nodes = proxy.get("nodes", [])
    lines.append(f"  nodes: {proxy.get('nodes_up', sum(1 for n in nodes if n.get('up')))} of {len(nodes)} up")
    width = max((len(n["node"]) for n in nodes), default=4)
    for n in nodes:
        lines.append(f"    {n['node']:<{width}}  {'up' if n.get('up') else 'DOWN':<4}  "
                     f"{_count(n.get('requests', 0))} requests")
    cert = proxy.get("certificate") or {}
    if cert.get("not_after"):
        days = (cert["not_after"] - now) / 86400
        when = datetime.datetime.fromtimestamp(cert["not_after"], datetime.UTC).strftime("%Y-%m-%d")
        note = "EXPIRED" if days < 0 else f"{days:.0f} days left" + (" (renew soon)" if days < 30 else "")
        lines.append("")
        lines.append(f"Certificate: {cert.get('subject', '-')}, expires {when}, {note}"
                     + (" (self-signed)" if cert.get("self_signed") else ""))
    processes = status.get("processes", [])
    if processes:
        lines.append("")
        lines.append("Processes:")
        for p in processes:
            lines.append(f"  {p['process']:<26} pid {p['pid']:<8} {p['rss_bytes'] / 1048576:7.1f} MiB  "
                         f"{p['open_fds']} open files")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    status = fetch(status_url(args.config))
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    return 0 if status.get("state") == "running" else 1
