"""GET /status: the appliance's state as JSON for `rpturn status`, the HTML page and outside tools.

Pure: summed figures (`appliance.stats.aggregate`) and process readings in, a JSON-able dict out. The shape is an
interface (`rpturn status --json` prints it): add keys freely, never rename or drop one.

```
{"state": "running", "started": ..., "uptime_seconds": ...,
 "relay": {"allocations": N, "allocations_by_transport": {"udp": .., "tcp": .., "tls": ..}, "clients": N,
           "listen": [...], "relay_ports": "49152-65535", "workers": N, "binding_requests": N, ...},
 "revproxy": {"nodes": [{"node": "host:port", "up": true, "requests": N}], "requests": N, "responses": {...},
              "event_streams": N, "websockets": N, "listen": {...}, "certificate": {...}, "workers": N},
 "processes": [{"process": "main", "pid": ..., "rss_bytes": ..., "open_fds": ...}]}
```
A service with no live process (not started yet, or every worker dead) has `"state": "not running"`, and the
appliance's `"state"` is then `"degraded"`.
"""

from __future__ import annotations

from typing import Any

from appliance.stats import ServiceFigures


def _sum(values: dict) -> int:
    return sum(v for v in values.values() if isinstance(v, int | float))


def relay_status(f: ServiceFigures | None) -> dict[str, Any]:
    if f is None:
        return {"state": "not running", "allocations": 0, "workers": 0}
    c, g = f.counters, f.gauges
    by_transport = {t: g.get("allocations", {}).get(t, 0) for t in ("udp", "tcp", "tls")}
    return {
        "state": "running" if f.workers else "not running",
        "allocations": _sum(by_transport),
        "allocations_by_transport": by_transport,
        "clients": g.get("clients", 0),
        "permissions": g.get("permissions", 0),
        "channels": g.get("channels", 0),
        "listen": f.info.get("listen", []),
        "tls_listen": f.info.get("tls_listen", []),
        "relay_address": f.info.get("relay_address", ""),
        "relay_ports": f.info.get("relay_ports", ""),
        "realm": f.info.get("realm", ""),
        "workers": f.workers,
        "worker_restarts": f.restarts,
        "binding_requests": c.get("binding_requests", 0),
        "allocations_created": c.get("allocations_created", 0),
        "allocations_deleted": c.get("allocations_deleted", 0),
        "auth_failures": _sum(c.get("auth_failures", {})),
        "quota_rejections": _sum(c.get("quota_rejections", {})),
        "capacity_rejections": _sum(c.get("capacity_rejections", {})),
        "malformed_packets": c.get("malformed", 0),
        "relayed_packets": dict(c.get("packets", {})),
        "relayed_bytes": dict(c.get("bytes", {})),
    }


def proxy_status(f: ServiceFigures | None) -> dict[str, Any]:
    if f is None:
        return {"state": "not running", "nodes": [], "workers": 0}
    c, g = f.counters, f.gauges
    per_node = c.get("node_requests", {})
    nodes = [{"node": n["node"], "up": bool(n["up"]), "requests": per_node.get(n["node"], 0)}
             for n in f.info.get("nodes", [])]
    return {
        "state": "running" if f.workers else "not running",
        "nodes": nodes,
        "nodes_up": sum(1 for n in nodes if n["up"]),
        "requests": c.get("requests", 0),
        "responses": dict(c.get("responses", {})),
        "upstream_failures": dict(c.get("upstream_failures", {})),
        "active_requests": g.get("active", 0),
        "event_streams": g.get("event_streams", 0),
        "websockets": g.get("websockets", 0),
        "listen": f.info.get("listen", {}),
        "certificate": f.info.get("certificate", {}),
        "workers": f.workers,
        "worker_restarts": f.restarts,
    }


def build_status(figures: dict[str, ServiceFigures], processes: list[dict], started: float,
                 now: float) -> dict[str, Any]:
    relay, proxy = relay_status(figures.get("relay")), proxy_status(figures.get("revproxy"))
    return {
        "state": "running" if relay["state"] == proxy["state"] == "running" else "degraded",
        "started": started,
        "uptime_seconds": round(now - started, 1),
        "relay": relay,
        "revproxy": proxy,
        "processes": processes,
    }
