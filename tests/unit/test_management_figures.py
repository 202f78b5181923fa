"""The management listener's pure parts: summing worker snapshots, the Prometheus text, /status, the table, the page."""

from __future__ import annotations

import collections
import json
import os
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from appliance import stats
from appliance.commands.status import format_status
from appliance.metrics import LATENCY_BUCKETS, cumulative_buckets, render
from appliance.status import build_status
from appliance.status_page import render_page
from relay.stats import label, relay_snapshot


def snap(service: str, worker: int, pid: int, counters=None, gauges=None, info=None, time=0.0) -> dict:
    return {"service": service, "worker": worker, "pid": pid, "time": time, "counters": counters or {},
            "gauges": gauges or {}, "info": info or {}}


def samples(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_are_summed_over_dead_workers_too_but_gauges_only_over_live_ones():
    snapshots = [
        snap("relay", 0, 100, {"requests": 5, "errors": {"401": 2}}, {"allocations": {"udp": 3}}),
        snap("relay", 1, 101, {"requests": 7, "errors": {"401": 1, "486": 4}}, {"allocations": {"udp": 2}}),
        snap("relay", 1, 99, {"requests": 11}, {"allocations": {"udp": 40}}, time=-1),  # worker 1 before a restart
    ]
    figures = stats.aggregate(snapshots, alive=lambda pid: pid != 99)["relay"]
    assert figures.counters == {"requests": 23, "errors": {"401": 3, "486": 4}}
    assert figures.gauges == {"allocations": {"udp": 5}}
    assert figures.workers == 2
    assert figures.restarts == 1
    assert sorted(figures.pids) == [(0, 100), (1, 101)]


def test_histogram_buckets_add_element_by_element():
    total = stats.add_into({}, {"h": {"buckets": [1, 0, 2], "sum": 0.5, "count": 3}})
    stats.add_into(total, {"h": {"buckets": [0, 4, 1, 1], "sum": 1.0, "count": 6}})
    assert total == {"h": {"buckets": [1, 4, 3, 1], "sum": 1.5, "count": 9}}


def test_a_node_is_down_when_any_live_worker_has_it_down():
    nodes_a = [{"node": "10.0.0.1:443", "up": True}, {"node": "10.0.0.2:443", "up": True}]
    nodes_b = [{"node": "10.0.0.1:443", "up": True}, {"node": "10.0.0.2:443", "up": False}]
    dead = [{"node": "10.0.0.1:443", "up": False}]
    figures = stats.aggregate([
        snap("revproxy", 0, 1, info={"nodes": nodes_a}),
        snap("revproxy", 1, 2, info={"nodes": nodes_b}),
        snap("revproxy", 2, 3, info={"nodes": dead}),
    ], alive=lambda pid: pid != 3)["revproxy"]
    assert figures.info["nodes"] == [{"node": "10.0.0.1:443", "up": True}, {"node": "10.0.0.2:443", "up": False}]


def test_spool_round_trip_skips_our_own_pid_and_half_written_files(tmp_path):
    stats.write_snapshot(str(tmp_path), snap("relay", 0, 4242, {"requests": 1}))
    stats.write_snapshot(str(tmp_path), snap("relay", 1, os.getpid(), {"requests": 2}))
    (tmp_path / ".relay-2-7.json.tmp").write_text("{half")
    (tmp_path / "relay-3-8.json").write_text("{broken")
    got = stats.read_spool(str(tmp_path), skip_pid=os.getpid())
    assert [s["pid"] for s in got] == [4242]


def test_pid_alive_sees_this_process_and_not_a_free_pid():
    assert stats.pid_alive(os.getpid())
    assert not stats.pid_alive(2**22 + 12345)  # above the kernel's pid_max


def fake_allocation(transport: str, client: str, packets: tuple[int, int, int, int] = (0, 0, 0, 0)):
    pf, bf, pt, bt = packets
    return SimpleNamespace(five_tuple=(transport, (client, 5000), ("127.0.0.1", 3478)), packets_from_client=pf,
                           bytes_from_client=bf, packets_to_client=pt, bytes_to_client=bt, peer_packets_dropped=1,
                           client_packets_dropped=0, permissions={"1.2.3.4": 1.0}, channels={0x4000: ("1.2.3.4", 9)})


def test_relay_snapshot_counts_live_allocations_into_the_relayed_totals():
    core_stats = collections.Counter({
        "binding_requests": 9, "allocations_created": 3, "allocations_deleted": 1, "packets_from_client": 10,
        "bytes_from_client": 1000, "auth_failure bad MESSAGE-INTEGRITY": 2, "auth_failure unknown user": 1,
        "error_486 user_quota": 1, "error_508 ": 2, "error_508 too many permissions on this allocation": 1,
        "error_401": 5, "malformed": 4,
    })
    body = relay_snapshot(core_stats, [fake_allocation("udp", "10.0.0.1", (5, 500, 6, 600)),
                                       fake_allocation("tcp", "10.0.0.1", (1, 100, 0, 0))], {"listen": ["x"]})
    c, g = body["counters"], body["gauges"]
    assert g["allocations"] == {"udp": 1, "tcp": 1, "tls": 0}
    assert g["clients"] == 1
    assert c["packets"] == {"client_to_peer": 16, "peer_to_client": 6}
    assert c["bytes"] == {"client_to_peer": 1600, "peer_to_client": 600}
    assert c["auth_failures"] == {"bad_message_integrity": 2, "unknown_user": 1}
    assert c["quota_rejections"] == {"user_quota": 1, "total_quota": 0}
    assert c["capacity_rejections"] == {"no_relay_port": 2, "reservation_token": 0, "permission_limit": 1}
    assert c["errors"] == {"401": 5}
    assert c["binding_requests"] == 9 and c["malformed"] == 4
    assert c["dropped"]["peer_without_permission"] == 2
    json.dumps(body)  # it goes into a file


def test_label_makes_reasons_prometheus_friendly():
    assert label("USERNAME, REALM or NONCE missing") == "username_realm_or_nonce_missing"
    assert label("") == "unknown"


def appliance_figures():
    relay = relay_snapshot(collections.Counter({"binding_requests": 3, "auth_failure unknown user": 2}),
                           [fake_allocation("udp", "10.0.0.1"), fake_allocation("tcp", "10.0.0.2")],
                           {"listen": ["127.0.0.1:3478"], "relay_ports": "49152-65535"})
    proxy = {
        "counters": {"requests": 7, "responses": {"2xx": 6, "5xx": 1}, "upstream_failures": {"connect_error": 2},
                     "node_requests": {"127.0.0.1:8443": 6},
                     "node_latency": {"127.0.0.1:8443": {"buckets": [2, 3] + [0] * 9 + [1], "sum": 12.5, "count": 6}}},
        "gauges": {"event_streams": 1, "websockets": 0, "active": 1},
        "info": {"nodes": [{"node": "127.0.0.1:8443", "up": True}, {"node": "127.0.0.1:9443", "up": False}],
                 "listen": {"https": "127.0.0.1:8444", "http": ""},
                 "certificate": {"subject": "CN=meet.example.com", "not_after": 2_000_000_000.0}},
    }
    return stats.aggregate([snap("relay", 0, os.getpid(), **relay), snap("revproxy", 0, os.getpid(), **proxy)])


def test_metrics_text_has_the_pinned_names_and_values():
    text = render(appliance_figures(), [{"process": "main", "pid": 1, "rss_bytes": 1024, "open_fds": 7}], 1.0)
    got = samples(text)
    assert got[("rpturn_turn_allocations", (("transport", "udp"),))] == 1
    assert got[("rpturn_turn_allocations", (("transport", "tcp"),))] == 1
    assert got[("rpturn_turn_allocations", (("transport", "tls"),))] == 0
    assert got[("rpturn_stun_binding_requests_total", ())] == 3
    assert got[("rpturn_turn_auth_failures_total", (("reason", "unknown_user"),))] == 2
    assert got[("rpturn_proxy_requests_total", ())] == 7
    assert got[("rpturn_proxy_node_up", (("node", "127.0.0.1:8443"),))] == 1
    assert got[("rpturn_proxy_node_up", (("node", "127.0.0.1:9443"),))] == 0
    assert got[("rpturn_proxy_node_requests_total", (("node", "127.0.0.1:9443"),))] == 0
    assert got[("rpturn_proxy_responses_total", (("status_class", "5xx"),))] == 1
    assert got[("rpturn_proxy_node_response_seconds_bucket", (("le", "0.005"), ("node", "127.0.0.1:8443")))] == 2
    assert got[("rpturn_proxy_node_response_seconds_bucket", (("le", "+Inf"), ("node", "127.0.0.1:8443")))] == 6
    assert got[("rpturn_proxy_node_response_seconds_count", (("node", "127.0.0.1:8443"),))] == 6
    assert got[("rpturn_certificate_expiry_timestamp_seconds", ())] == 2_000_000_000.0
    assert got[("rpturn_process_open_fds", (("process", "main"),))] == 7
    assert got[("rpturn_workers", (("service", "relay"),))] == 1


def test_cumulative_buckets_end_with_the_total():
    buckets = cumulative_buckets([1, 2, 3])
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    assert buckets[0] == ("0.005", 1) and buckets[2] == ("0.025", 6) and buckets[-1] == ("+Inf", 6)


def test_status_document_and_table_and_page_show_the_same_figures():
    status = build_status(appliance_figures(), [{"process": "main", "pid": 42, "rss_bytes": 2**20 * 30,
                                                 "open_fds": 12}], started=1000.0, now=1060.0)
    assert status["state"] == "running"
    assert status["relay"]["allocations"] == 2
    assert status["relay"]["allocations_by_transport"] == {"udp": 1, "tcp": 1, "tls": 0}
    assert status["revproxy"]["nodes"] == [{"node": "127.0.0.1:8443", "up": True, "requests": 6},
                                           {"node": "127.0.0.1:9443", "up": False, "requests": 0}]
    json.dumps(status)
    table = format_status(status, now=1_900_000_000.0)
    assert "allocations                2  (UDP 1, TCP 1, TLS 0)" in table
    assert "127.0.0.1:9443  DOWN" in table and "nodes: 1 of 2 up" in table
    assert "1 days left" in table or "days left" in table
    page = render_page(status, now=1_900_000_000.0)
    assert '<td id="relay-allocations">2</td>' in page
    assert 'id="node-127.0.0.1:9443"' in page and ">down<" in page
    assert "CN=meet.example.com" in page


def test_a_service_without_live_workers_makes_the_appliance_degraded():
    figures = stats.aggregate([snap("relay", 0, 2**22 + 1)])  # its only process is gone
    status = build_status(figures, [], started=0.0, now=1.0)
    assert status["state"] == "degraded"
    assert status["relay"]["state"] == "not running"
    assert status["revproxy"] == {"state": "not running", "nodes": [], "workers": 0}


def test_page_escapes_what_it_shows():
    status = build_status({}, [], 0.0, 1.0)
    status["relay"]["listen"] = ["<script>x</script>"]
    assert "<script>x" not in render_page(status, 1.0)


def test_proxy_counters_snapshot_and_latency_buckets():
    from revproxy.stats import LATENCY_BUCKETS as PROXY_BUCKETS
    from revproxy.stats import ProxyStats, proxy_snapshot

    assert PROXY_BUCKETS == LATENCY_BUCKETS  # the services count into the buckets the exporter names
    s = ProxyStats()
    s.requests += 3
    for status in (200, 204, 502):
        s.response(status)
    s.node_request("10.0.0.1:443")
    s.node_answered("10.0.0.1:443", 0.004)
    s.node_answered("10.0.0.1:443", 0.3)
    s.node_answered("10.0.0.1:443", 99.0)
    s.upstream_failure("connect")
    s.event_streams += 1
    body = proxy_snapshot(s, 2, [("10.0.0.1:443", True), ("10.0.0.2:443", False)], {"listen": {"https": "x"}})
    c = body["counters"]
    assert c["responses"] == {"1xx": 0, "2xx": 2, "3xx": 0, "4xx": 0, "5xx": 1}
    latency = c["node_latency"]["10.0.0.1:443"]
    assert latency["count"] == 3 and latency["buckets"][0] == 1 and latency["buckets"][-1] == 1
    assert latency["buckets"][LATENCY_BUCKETS.index(0.5)] == 1
    assert body["gauges"] == {"active": 2, "event_streams": 1, "websockets": 0}
    assert body["info"]["nodes"] == [{"node": "10.0.0.1:443", "up": True}, {"node": "10.0.0.2:443", "up": False}]
    json.dumps(body)
