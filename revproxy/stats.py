"""The proxy's counters (plain ints and dicts, bumped by the protocols) and their snapshot for the appliance's
management listener (`appliance.stats`).

Per request the protocols do a handful of `+= 1` and one bucket search for the node's latency; prometheus_client is
never called here — the management listener formats the snapshot when it is scraped.
"""

from __future__ import annotations

import bisect
from typing import Any

# Upper bounds (seconds) of the per-node latency histogram; the same as appliance.metrics.LATENCY_BUCKETS.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class NodeLatency:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: slower than the largest bound
        self.count = 0
        self.sum = 0.0


class ProxyStats:
    """What one proxy process counted since it started."""

    def __init__(self) -> None:
        self.requests = 0
        self.redirects = 0
        self.responses = dict.fromkeys(STATUS_CLASSES, 0)
        self.upstream_failures: dict[str, int] = {}
        self.node_requests: dict[str, int] = {}
        self.node_latency: dict[str, NodeLatency] = {}
        self.event_streams = 0  # open now
        self.websockets = 0  # open now

    def response(self, status: int) -> None:
        key = f"{status // 100}xx"
        if key in self.responses:
            self.responses[key] += 1

    def node_request(self, node: str) -> None:
        self.node_requests[node] = self.node_requests.get(node, 0) + 1

    def node_answered(self, node: str, seconds: float) -> None:
        latency = self.node_latency.get(node)
        if latency is None:
            latency = self.node_latency[node] = NodeLatency()
        latency.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency.count += 1
        latency.sum += seconds

    def upstream_failure(self, kind: str) -> None:
        self.upstream_failures[kind] = self.upstream_failures.get(kind, 0) + 1


def proxy_snapshot(stats: ProxyStats, active: int, nodes: list[tuple[str, bool]], info: dict[str, Any]) -> dict:
    """The snapshot body: `nodes` is the balancer's [(key, usable)], `info` the listen addresses and certificate."""
    return {
        "counters": {
            "requests": stats.requests,
            "redirects": stats.redirects,
            "responses": dict(stats.responses),
            "upstream_failures": dict(stats.upstream_failures),
            "node_requests": dict(stats.node_requests),
            "node_latency": {key: {"buckets": list(h.buckets), "sum": h.sum, "count": h.count}
                             for key, h in stats.node_latency.items()},
        },
        "gauges": {"active": active, "event_streams": stats.event_streams, "websockets": stats.websockets},
        "info": {**info, "nodes": [{"node": key, "up": up} for key, up in nodes]},
    }


_cert_cache: dict[tuple[str, float], dict[str, Any]] = {}


def certificate_info(path: str) -> dict[str, Any]:
    """The served certificate for the status page: subject, issuer, names, expiry (Unix time), self-signed.

    Read again only when the file changes (a reload or `rpturn cert install` replaces it)."""
    import os

    from appliance import certs

    try:
        key = (path, os.stat(path).st_mtime)
    except OSError:
        return {"path": path, "error": "cannot read the file"}
    cached = _cert_cache.get(key)
    if cached is None:
        try:
            bundle = certs.read_bundle(path)
        except certs.BundleError as e:
            return {"path": path, "error": str(e)}
        d = certs.describe(bundle.leaf, bundle.chain)
        cached = {"path": path, "subject": d.subject, "issuer": d.issuers[0], "names": list(d.names),
                  "not_before": d.not_before.timestamp(), "not_after": d.not_after.timestamp(),
                  "self_signed": d.self_signed}
        _cert_cache.clear()
        _cert_cache[key] = cached
    return cached


def service_snapshot(service: Any) -> dict:
    """The snapshot of a running `RevproxyService` (its context, balancer and configuration)."""
    from revproxy.service import certificate_path

    ctx, cfg = service.ctx, service.config
    info = {"listen": {"https": str(cfg.https) if cfg.https else "", "http": str(cfg.http) if cfg.http else ""},
            "certificate": certificate_info(certificate_path(cfg))}
    snapshot = proxy_snapshot(ctx.stats, ctx.active, ctx.balancer.status(), info)
    if ctx.pin_guard is not None:  # revproxy.guards: failure, ban, blocked
        snapshot["counters"]["pin_guard"] = dict(ctx.pin_guard.events)
    if getattr(service, "acme", None) is not None:  # revproxy.acme_service: renewed, failed
        snapshot["counters"]["acme"] = dict(service.acme.events)
    if ctx.ldap is not None:  # revproxy.ldap_guard: ok, bad-credentials, not-in-group, unavailable
        snapshot["counters"]["ldap"] = dict(ctx.ldap.events)
    return snapshot
