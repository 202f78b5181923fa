"""GET /: the status page for a person, rendered from the /status dict (pure: dict in, HTML out).

Modelled on an Expressway's TURN status page — state, listening addresses, active TURN clients, relays over
UDP/TCP/TLS — plus the proxy's nodes and the certificate. No script, no external resource; it reloads itself every
10 seconds. Each figure sits in an element with an `id` (`relay-allocations`, `node-<host:port>`), so tests and
scrapers of the DOM find it without parsing prose.
"""

from __future__ import annotations

import datetime
import html
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#1d2733;background:#f4f6f8}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:0 0 10px}
.sub{color:#5b6b7b;margin-bottom:18px}
section{background:#fff;border:1px solid #d8dee4;border-radius:6px;padding:14px 18px;margin-bottom:16px}
table{border-collapse:collapse;min-width:420px} td,th{padding:4px 14px 4px 0;text-align:left;vertical-align:top}
th{color:#5b6b7b;font-weight:600} td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37;font-weight:600} .bad{color:#cf222e;font-weight:600} .warn{color:#9a6700;font-weight:600}
.grid{display:flex;gap:16px;flex-wrap:wrap} .grid section{flex:1 1 460px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _state(text: str) -> str:
    cls = {"running": "ok", "up": "ok", "degraded": "warn"}.get(text, "bad")
    return f'<span class="{cls}">{_e(text)}</span>'


def _rows(rows: list[tuple[str, str, str]]) -> str:
    """(label, element id, already-escaped HTML value) -> table rows."""
    return "".join(f'<tr><th>{_e(label)}</th><td id="{_e(ident)}">{value}</td></tr>' for label, ident, value in rows)


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d {hours}h {minutes}m" if days else f"{hours}h {minutes}m {secs}s"


def _certificate(cert: dict, now: float) -> str:
    if not cert:
        return "<p>No certificate information.</p>"
    not_after = cert.get("not_after")
    days = (not_after - now) / 86400 if not_after else None
    if days is None:
        left = "-"
    elif days < 0:
        left = '<span class="bad">expired</span>'
    elif days < 30:
        left = f'<span class="warn">{days:.0f} days</span>'
    else:
        left = f'<span class="ok">{days:.0f} days</span>'
    return "<table>" + _rows([
        ("Subject", "cert-subject", _e(cert.get("subject", "-"))),
        ("Issuer", "cert-issuer", _e(cert.get("issuer", "-"))),
        ("Names", "cert-names", _e(", ".join(cert.get("names", [])) or "-")),
        ("Expires", "cert-expires", _e(_when(not_after))),
        ("Time left", "cert-left", left),
        ("Self-signed", "cert-self-signed", "yes" if cert.get("self_signed") else "no"),
        ("File", "cert-file", _e(cert.get("path", "-"))),
    ]) + "</table>"


def render_page(status: dict[str, Any], now: float) -> str:
    relay, proxy = status.get("relay", {}), status.get("revproxy", {})
    by_transport = relay.get("allocations_by_transport", {})
    packets, octets = relay.get("relayed_packets", {}), relay.get("relayed_bytes", {})
    relay_rows = _rows([
        ("State", "relay-state", _state(relay.get("state", "not running"))),
        ("Listening on (UDP and TCP)", "relay-listen", _e(", ".join(relay.get("listen", [])) or "-")),
        ("Listening on (TLS)", "relay-tls-listen", _e(", ".join(relay.get("tls_listen", [])) or "off")),
        ("Relay address", "relay-address", _e(relay.get("relay_address") or "-")),
        ("Relay ports", "relay-ports", _e(relay.get("relay_ports") or "-")),
        ("Active TURN clients", "relay-clients", _e(relay.get("clients", 0))),
        ("Allocations", "relay-allocations", _e(relay.get("allocations", 0))),
        ("Relays over UDP", "relay-udp", _e(by_transport.get("udp", 0))),
        ("Relays over TCP", "relay-tcp", _e(by_transport.get("tcp", 0))),
        ("Relays over TLS", "relay-tls", _e(by_transport.get("tls", 0))),
        ("Allocations created / deleted", "relay-created-deleted",
         f'{_e(relay.get("allocations_created", 0))} / {_e(relay.get("allocations_deleted", 0))}'),
        ("STUN Binding requests", "relay-bindings", _e(relay.get("binding_requests", 0))),
        ("Authentication failures", "relay-auth-failures", _e(relay.get("auth_failures", 0))),
        ("486 quota / 508 capacity", "relay-rejections",
         f'{_e(relay.get("quota_rejections", 0))} / {_e(relay.get("capacity_rejections", 0))}'),
        ("Packets client→peer / peer→client", "relay-packets",
         f'{_e(packets.get("client_to_peer", 0))} / {_e(packets.get("peer_to_client", 0))}'),
        ("Bytes client→peer / peer→client", "relay-bytes",
         f'{_e(octets.get("client_to_peer", 0))} / {_e(octets.get("peer_to_client", 0))}'),
        ("Workers (restarts)", "relay-workers",
         f'{_e(relay.get("workers", 0))} ({_e(relay.get("worker_restarts", 0))})'),
    ])
    listen = proxy.get("listen", {})
    responses = proxy.get("responses", {})
    proxy_rows = _rows([
        ("State", "proxy-state", _state(proxy.get("state", "not running"))),
        ("HTTPS", "proxy-https", _e(listen.get("https") or "-")),
        ("HTTP (redirect)", "proxy-http", _e(listen.get("http") or "off")),
        ("Requests", "proxy-requests", _e(proxy.get("requests", 0))),
        ("Responses", "proxy-responses",
         _e(" · ".join(f"{k}: {responses[k]}" for k in sorted(responses) if responses[k]) or "-")),
        ("In progress", "proxy-active", _e(proxy.get("active_requests", 0))),
        ("Open /events streams", "proxy-events", _e(proxy.get("event_streams", 0))),
        ("Open WebSockets", "proxy-websockets", _e(proxy.get("websockets", 0))),
        ("Workers (restarts)", "proxy-workers",
         f'{_e(proxy.get("workers", 0))} ({_e(proxy.get("worker_restarts", 0))})'),
    ])
    nodes = "".join(
        f'<tr id="node-{_e(n["node"])}"><td>{_e(n["node"])}</td><td>{_state("up" if n["up"] else "down")}</td>'
        f'<td class="n">{_e(n.get("requests", 0))}</td></tr>'
        for n in proxy.get("nodes", [])
    ) or '<tr><td colspan="3">no nodes configured</td></tr>'
    processes = "".join(
        f'<tr><td>{_e(p["process"])}</td><td class="n">{_e(p["pid"])}</td>'
        f'<td class="n">{p["rss_bytes"] / 1048576:.1f} MiB</td><td class="n">{_e(p["open_fds"])}</td></tr>'
        for p in status.get("processes", [])
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>rpturn status</title><style>{STYLE}</style></head>
<body>
<h1>rpturn appliance: <span id="state">{_state(status.get("state", "unknown"))}</span></h1>
<div class="sub">Up <span id="uptime">{_e(_duration(status.get("uptime_seconds", 0)))}</span>
since {_e(_when(status.get("started")))} · page generated {_e(_when(now))}</div>
<div class="grid">
<section id="relay"><h2>TURN relay</h2><table>{relay_rows}</table></section>
<section id="revproxy"><h2>HTTPS reverse proxy</h2><table>{proxy_rows}</table>
<h2 style="margin-top:14px">Conferencing Nodes</h2>
<table id="nodes"><tr><th>Node</th><th>State</th><th>Requests</th></tr>{nodes}</table></section>
</div>
<div class="grid">
<section id="certificate"><h2>Certificate</h2>{_certificate(proxy.get("certificate", {}), now)}</section>
<section id="processes"><h2>Processes</h2><table><tr><th>Process</th><th>PID</th><th>Memory</th><th>Open files</th>
</tr>{processes}</table></section>
</div>
</body></html>
"""
