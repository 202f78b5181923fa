"""GET /metrics: the appliance's figures (summed over every worker, `appliance.stats`) in Prometheus text format.

Built at scrape time from the summed snapshots with prometheus_client's metric families in a registry made for
the one scrape: prometheus_client only formats, it is never called by a service. The README's "Monitoring"
section lists every name with its coturn equivalent.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from appliance.stats import ServiceFigures

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Upper bounds (seconds) of the proxy's per-node latency histogram; the services count into the same buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(family, label: str, values: dict) -> Metric:
    for key in sorted(values):
        family.add_metric([str(key)], values[key])
    return family


# The relay's counters in the order /metrics lists them: (name, help, snapshot key, label; None: one value).
RELAY_COUNTERS = (
    ("rpturn_stun_binding_requests", "STUN Binding requests answered.", "binding_requests", None),
    ("rpturn_stun_requests", "STUN/TURN requests received (every method).", "requests", None),
    ("rpturn_turn_allocations_created", "TURN allocations created.", "allocations_created", None),
    ("rpturn_turn_allocations_refreshed", "TURN Refresh requests that kept an allocation.",
     "allocations_refreshed", None),
    ("rpturn_turn_allocations_deleted", "TURN allocations deleted (refresh 0, expiry, lost connection, shutdown).",
     "allocations_deleted", None),
    ("rpturn_turn_auth_failures", "Failed TURN authentications by reason.", "auth_failures", "reason"),
    ("rpturn_turn_stale_nonces", "Requests with an expired nonce (438, routine).", "stale_nonces", None),
    ("rpturn_turn_error_responses", "STUN/TURN error responses by code.", "errors", "code"),
    ("rpturn_turn_quota_rejections", "Allocate refused with 486 by cause.", "quota_rejections", "cause"),
    ("rpturn_turn_capacity_rejections", "Requests refused with 508 by cause.", "capacity_rejections", "cause"),
    ("rpturn_turn_permissions_denied", "Permissions refused by the peer policy (403).", "permissions_denied", None),
    ("rpturn_stun_malformed_packets", "Packets dropped because they could not be parsed.", "malformed", None),
    ("rpturn_turn_dropped_packets", "Relayable packets dropped, by reason.", "dropped", "reason"),
    ("rpturn_stun_unauthenticated_dropped", "Requests from sources without an allocation dropped unparsed by the "
     "flood gate: over their source's rate (per_source) or shed over the global budget (budget).",
     "unauthenticated_dropped", "reason"),
    ("rpturn_turn_relayed_packets", "Packets relayed, by direction.", "packets", "direction"),
    ("rpturn_turn_relayed_bytes", "Payload bytes relayed, by direction.", "bytes", "direction"),
)


def relay_metrics(relay: ServiceFigures) -> Iterator[Metric]:
    c, g = relay.counters, relay.gauges
    allocations = GaugeMetricFamily("rpturn_turn_allocations", "Live TURN allocations by client transport.",
                                    labels=["transport"])
    yield _labelled(allocations, "transport", {t: g.get("allocations", {}).get(t, 0) for t in ("udp", "tcp", "tls")})
    yield GaugeMetricFamily("rpturn_turn_clients", "Client addresses with a live allocation (per worker, summed).",
                            value=g.get("clients", 0))
    yield GaugeMetricFamily("rpturn_turn_permissions", "Live permissions in all allocations.",
                            value=g.get("permissions", 0))
    yield GaugeMetricFamily("rpturn_turn_channels", "Live channel bindings in all allocations.",
                            value=g.get("channels", 0))
    for name, doc, key, label in RELAY_COUNTERS:
        if label is None:
            yield _counter(name, doc, c.get(key, 0))
        else:
            yield _labelled(CounterMetricFamily(name, doc, labels=[label]), label, c.get(key, {}))


def proxy_metrics(proxy: ServiceFigures) -> Iterator[Metric]:
    c, g, info = proxy.counters, proxy.gauges, proxy.info
    yield _counter("rpturn_proxy_requests", "Requests received by the HTTPS proxy.", c.get("requests", 0))
    yield _labelled(CounterMetricFamily("rpturn_proxy_responses", "Responses sent to clients, by status class.",
                                        labels=["status_class"]), "status_class", c.get("responses", {}))
    yield _labelled(CounterMetricFamily("rpturn_proxy_upstream_failures", "Failed attempts towards a node, by kind.",
                                        labels=["kind"]), "kind", c.get("upstream_failures", {}))
    yield _counter("rpturn_proxy_redirects", "Plain-HTTP requests redirected to HTTPS.", c.get("redirects", 0))
    guard = c.get("pin_guard", {})
    yield _labelled(CounterMetricFamily("rpturn_proxy_pin_guard_events", "PIN guard: failed PIN attempts (failure), "
                                        "addresses banned (ban), requests answered 429 (blocked).",
                                        labels=["event"]), "event", {k: guard.get(k, 0)
                                                                     for k in ("failure", "ban", "blocked")})
    acme = c.get("acme", {})
    yield _labelled(CounterMetricFamily("rpturn_proxy_acme_events", "ACME: certificates obtained (renewed) and "
                                        "failed attempts (failed; the last good certificate stays).",
                                        labels=["event"]), "event", {k: acme.get(k, 0) for k in ("renewed", "failed")})
    ldap = c.get("ldap", {})
    yield _labelled(CounterMetricFamily("rpturn_proxy_ldap_checks", "LDAP authentication checks by outcome (successes "
                                        "answered from the cache are not counted).", labels=["outcome"]), "outcome",
                    {k: ldap.get(k, 0) for k in ("ok", "bad-credentials", "not-in-group", "unavailable")})
    yield GaugeMetricFamily("rpturn_proxy_active_requests", "Requests in progress.", value=g.get("active", 0))
    yield GaugeMetricFamily("rpturn_proxy_event_streams", "Open server-sent-event (/events) streams.",
                            value=g.get("event_streams", 0))
    yield GaugeMetricFamily("rpturn_proxy_websockets", "Open WebSocket tunnels.", value=g.get("websockets", 0))
    nodes = info.get("nodes", [])
    up = GaugeMetricFamily("rpturn_proxy_node_up", "1 if the node is in use, 0 if it is marked down.",
                           labels=["node"])
    for node in nodes:
        up.add_metric([node["node"]], 1 if node["up"] else 0)
    yield up
    per_node = c.get("node_requests", {})
    requests = CounterMetricFamily("rpturn_proxy_node_requests", "Requests sent to each node (attempts).",
                                   labels=["node"])
    for key in sorted({n["node"] for n in nodes} | set(per_node)):
        requests.add_metric([key], per_node.get(key, 0))
    yield requests
    latency = HistogramMetricFamily("rpturn_proxy_node_response_seconds",
                                    "Time from sending a request to a node to its response head.", labels=["node"])
    for key, h in sorted(c.get("node_latency", {}).items()):
        latency.add_metric([key], cumulative_buckets(h.get("buckets", [])), sum_value=h.get("sum", 0.0))
    yield latency
    cert = info.get("certificate") or {}
    if cert.get("not_after"):
        yield GaugeMetricFamily("rpturn_certificate_expiry_timestamp_seconds",
                                "When the HTTPS certificate expires (Unix time).", value=cert["not_after"])


def cumulative_buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Per-bucket counts (one per LATENCY_BUCKETS bound, then the overflow) -> Prometheus's cumulative buckets."""
    counts = list(counts) + [0] * (len(LATENCY_BUCKETS) + 1 - len(counts))
    out, running = [], 0
    for bound, n in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=False):
        running += n
        out.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return out


def process_metrics(figures: dict[str, ServiceFigures], processes: list[dict], start_time: float) -> Iterator[Metric]:
    workers = GaugeMetricFamily("rpturn_workers", "Live worker processes per service.", labels=["service"])
    restarts = CounterMetricFamily("rpturn_worker_restarts", "Worker processes replaced since the start.",
                                   labels=["service"])
    for service in sorted(figures):
        workers.add_metric([service], figures[service].workers)
        restarts.add_metric([service], figures[service].restarts)
    yield workers
    yield restarts
    rss = GaugeMetricFamily("rpturn_process_resident_memory_bytes", "Resident memory of each process.",
                            labels=["process"])
    fds = GaugeMetricFamily("rpturn_process_open_fds", "Open file descriptors of each process.", labels=["process"])
    for p in processes:
        rss.add_metric([p["process"]], p["rss_bytes"])
        fds.add_metric([p["process"]], p["open_fds"])
    yield rss
    yield fds
    yield GaugeMetricFamily("rpturn_start_time_seconds", "When the appliance started (Unix time).", value=start_time)


class _Collector:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def render(figures: dict[str, ServiceFigures], processes: list[dict], start_time: float) -> bytes:
    """The whole /metrics body."""
    metrics: list[Metric] = []
    if "relay" in figures:
        metrics += relay_metrics(figures["relay"])
    if "revproxy" in figures:
        metrics += proxy_metrics(figures["revproxy"])
    metrics += process_metrics(figures, processes, start_time)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics))
    return generate_latest(registry)
