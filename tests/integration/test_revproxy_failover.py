"""Node failures, affinity, reload and drain, each against its own real `twistd revproxy` and real node
stand-ins that the tests stop and start."""

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.revproxy_process import Pki, ProxyProcess, free_port, lab_fixture, read_event, request, write_config

shared = lab_fixture("failover")


@pytest.fixture
def make_proxy(shared, tmp_path):
    pki, nodes = shared
    started: list[ProxyProcess] = []
    stopped_nodes: set[str] = set()

    def make(**table):
        port = free_port()
        conf = {"https": f"127.0.0.1:{port}", "http": "", "certificate": str(pki.bundle),
                "nodes": nodes.addresses(), "fail_timeout": 1, **table}
        p = ProxyProcess(write_config(tmp_path / f"proxy{len(started)}.toml", conf), port)
        started.append(p)
        return p

    def stop_node(name):
        nodes.stop(name)
        stopped_nodes.add(name)

    def start_node(name):
        nodes.start(name)
        stopped_nodes.discard(name)

    make.stop_node, make.start_node = stop_node, start_node
    yield make
    for p in started:
        p.stop()
    for name in stopped_nodes:
        nodes.start(name)


def test_failover_gives_no_client_errors_while_a_node_is_stopped(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy()
    body = os.urandom(50_000)
    served = Counter()
    for i in range(60):
        if i == 10:
            make_proxy.stop_node("b")
        if i == 40:
            make_proxy.start_node("b")
        if i % 2:
            r = request(pki, proxy.port, "POST", "/echo", body=body)
            assert (r.status, r.body == body) == (200, True), i
        else:
            r = request(pki, proxy.port)
            assert r.status == 200, i
            served[r.json()["node"]] += 1
    assert served["a"] and served["c"]
    assert "marked down" in proxy.log()


def test_all_nodes_down_gives_502_within_a_second_and_traffic_returns_by_itself(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy()
    assert request(pki, proxy.port).status == 200
    for name in "abc":
        make_proxy.stop_node(name)
    for _ in range(3):
        began = time.monotonic()
        assert request(pki, proxy.port).status == 502
        assert time.monotonic() - began < 1.0
    make_proxy.start_node("a")
    deadline = time.monotonic() + 4
    while request(pki, proxy.port).status != 200:
        assert time.monotonic() < deadline, "traffic did not come back to the restarted node"
        time.sleep(0.2)
    assert request(pki, proxy.port).json()["node"] == "a"


def test_client_ip_affinity_keeps_each_client_on_one_node(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy(balance="client_ip")
    for source in ("127.0.0.1", "127.0.0.9"):
        assert len({request(pki, proxy.port, source=source).json()["node"] for _ in range(8)}) == 1
    spread = {request(pki, proxy.port, source=f"127.0.0.{i}").json()["node"] for i in range(10, 40)}
    assert len(spread) >= 2


def test_idempotent_request_is_retried_on_the_next_node_after_a_503(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy()
    r = request(pki, proxy.port, "GET", "/status/503")
    assert r.status == 503
    proxy.wait_log("retrying GET on the next node")
    assert proxy.log().count("retrying GET") == 2  # three nodes tried, the last answer passed on


def test_post_is_not_retried_after_a_503(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy()
    assert request(pki, proxy.port, "POST", "/status/503", body=b"{}").status == 503
    assert "retrying POST" not in proxy.log()


def test_node_that_never_answers_gives_504_after_upstream_read_timeout(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy(upstream_read_timeout=0.5)
    began = time.monotonic()
    assert request(pki, proxy.port, "POST", "/slow?delay=3", body=b"{}").status == 504
    assert time.monotonic() - began < 2


def test_active_health_check_marks_a_node_down_and_up(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy(health_check="/stats", health_interval=0.2, fail_timeout=30)
    make_proxy.stop_node("c")
    proxy.wait_log("node 127.0.0.4", timeout=3)
    proxy.wait_log("is down", timeout=3)
    assert {request(pki, proxy.port).json()["node"] for _ in range(6)} == {"a", "b"}
    make_proxy.start_node("c")
    proxy.wait_log("is up", timeout=3)
    assert "c" in {request(pki, proxy.port).json()["node"] for _ in range(6)}


def test_sighup_reload_applies_new_nodes_and_certificate_while_an_sse_stream_stays_open(shared, make_proxy,
                                                                                        tmp_path):
    pki, nodes = shared
    proxy = make_proxy(nodes=nodes.addresses("a"))
    import socket

    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    s = pki.client_context().wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"GET /api/client/v2/conferences/x/events?interval=0.2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    read_event(s)
    new_pki = Pki(tmp_path)
    write_config(proxy.config_path, {"https": f"127.0.0.1:{proxy.port}", "http": "",
                                     "certificate": str(new_pki.bundle), "nodes": nodes.addresses("b", "c"),
                                     "fail_timeout": 1})
    proxy.signal(signal.SIGHUP)
    proxy.wait_log("reloaded")
    assert {request(new_pki, proxy.port).json()["node"] for _ in range(6)} == {"b", "c"}
    for _ in range(3):  # the stream opened before the reload still flows, on the old certificate
        assert b"event: tick" in read_event(s)
    s.close()
    assert proxy.proc.poll() is None


def test_bad_config_on_reload_keeps_the_running_one(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy()
    proxy.config_path.write_text("[revproxy]\nnodes = []\n")
    proxy.signal(signal.SIGHUP)
    proxy.wait_log("reload refused")
    assert "nodes: expected a non-empty list" in proxy.log()
    assert request(pki, proxy.port).status == 200


def test_sigterm_stops_accepting_and_lets_requests_in_flight_finish(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy(drain_timeout=5)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", request(pki, proxy.port, "GET", "/slow?delay=1")))
    t.start()
    time.sleep(0.3)
    proxy.signal(signal.SIGTERM)
    proxy.wait_log("draining")
    with pytest.raises(OSError):
        request(pki, proxy.port, timeout=2)
    t.join(5)
    assert result["r"].status == 200
    assert proxy.proc.wait(5) in (0, -signal.SIGTERM)


def test_two_workers_share_the_port_and_stop_together(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy(workers=2)
    proxy.wait_log("balance round_robin, worker 1", timeout=10)
    proxy.wait_log("balance round_robin, worker 0", timeout=10)
    assert all(request(pki, proxy.port).status == 200 for _ in range(20))
    proxy.stop()
    assert "workers stopped" in proxy.log()


def test_verify_nodes_accepts_nodes_signed_by_the_ca_file(shared, make_proxy, tmp_path):
    pki, nodes = shared
    ca = tmp_path / "nodes-ca.pem"
    ca.write_bytes(b"".join(Path(s.cert).read_bytes() for s in nodes.specs.values()))
    proxy = make_proxy(verify_nodes=True, ca_file=str(ca))
    assert {request(pki, proxy.port).json()["node"] for _ in range(3)} == {"a", "b", "c"}


def test_verify_nodes_refuses_nodes_the_ca_file_does_not_vouch_for(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy(verify_nodes=True, ca_file=str(pki.root))
    assert request(pki, proxy.port).status == 502
    assert "marked down" in proxy.log()
