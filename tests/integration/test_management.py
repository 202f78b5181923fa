"""The management listener of the real `twistd rpturn`: /metrics after real traffic (checked by promtool and scraped
once by a real Prometheus server), /status, the HTML page in headless Chromium, `rpturn status` in a real terminal,
and the `allow` list (a loopback source outside it is refused).

One appliance serves the module: a UDP and a TCP allocation relaying through it, Binding requests, a wrong password,
proxy requests to two node stand-ins of which one is stopped. Everything is on loopback.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
import websocket
from prometheus_client.parser import text_string_to_metric_families

from relay import stun
from tests.support.appliance_process import ApplianceProcess
from tests.support.net import free_port
from tests.support.processes import RPTURN
from tests.support.relay_process import EchoPeer, RawTurnClient, error_code, udp_binding
from tests.support.revproxy_process import Nodes, Pki, request
from tests.support.tmux import Terminal

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PROXY_REQUESTS = 6


def get(app: ApplianceProcess, path: str, source: str = "127.0.0.1") -> tuple[int, str, bytes]:
    """GET from the appliance's management listener, from a chosen loopback source address."""
    conn = http.client.HTTPConnection("127.0.0.1", app.management_port, timeout=10, source_address=(source, 0))
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.getheader("content-type", ""), r.read()
    finally:
        conn.close()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(values: dict, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), float("nan"))


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    where = tmp_path_factory.mktemp("management")
    pki = Pki(where)
    nodes = Nodes(where, names=("a", "b"))
    peer = EchoPeer()
    app = ApplianceProcess(where, relay={"min_port": 45500, "max_port": 45999}, users={"alice": "secret"},
                           revproxy={"certificate": str(pki.bundle), "nodes": nodes.addresses("a", "b"),
                                     "fail_timeout": 120},
                           management={"allow": ["127.0.0.1/32"]})
    nodes.stop("b")
    clients: list[RawTurnClient] = []
    try:
        app.start()
        app.pki, app.nodes, app.peer, app.clients = pki, nodes, peer, clients
        app.relay = ("127.0.0.1", app.relay_port)
        app.baseline = samples(get(app, "/metrics")[2].decode())
        yield app
    finally:
        for c in clients:
            c.close()
        app.stop()
        nodes.close()
        peer.close()


@pytest.fixture(scope="module")
def traffic(appliance):
    """Real traffic through both services; the figures it must produce."""
    app = appliance
    for _ in range(3):
        assert udp_binding(*app.relay) is not None
    udp = RawTurnClient(app.relay, transport="udp")
    tcp = RawTurnClient(app.relay, transport="tcp")
    app.clients += [udp, tcp]
    peer = (stun.Attr.XOR_PEER_ADDRESS, app.peer.address)
    for client in (udp, tcp):
        client.learn_nonce()
        assert error_code(client.allocate()) is None
        assert error_code(client.request(stun.Method.CREATE_PERMISSION, [peer])) is None
    for i in range(5):
        udp.send_bytes(stun.encode(stun.Message(stun.Method.SEND, stun.MessageClass.INDICATION, os.urandom(12),
                                                [peer, (stun.Attr.DATA, b"x" * (100 + i))])))
        udp.recv_message()  # the Data indication with the echo
    wrong = RawTurnClient(app.relay, password="wrong")
    wrong.learn_nonce()
    assert error_code(wrong.allocate()) == 401
    wrong.close()
    statuses = [request(app.pki, app.https_port, path="/whoami").status for _ in range(PROXY_REQUESTS)]
    assert statuses == [200] * PROXY_REQUESTS
    return app


def scrape_until(app, check, timeout: float = 10.0) -> dict:
    """Scrape until `check(values)` holds (a worker's figures may be up to a second old); the last values."""
    deadline = time.monotonic() + timeout
    while True:
        code, _, body = get(app, "/metrics")
        assert code == 200
        values = samples(body.decode())
        if check(values) or time.monotonic() > deadline:
            return values
        time.sleep(0.2)


def test_metrics_after_real_traffic_pass_promtool_and_carry_the_figures(traffic, tmp_path):
    app = traffic
    before = app.baseline
    values = scrape_until(app, lambda v: metric(v, "rpturn_proxy_requests_total") >= PROXY_REQUESTS
                          and metric(v, "rpturn_turn_allocations", transport="tcp") == 1)
    _, content_type, body = get(app, "/metrics")
    assert content_type.startswith("text/plain; version=0.0.4")
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    assert metric(values, "rpturn_turn_allocations", transport="udp") == 1
    assert metric(values, "rpturn_turn_allocations", transport="tcp") == 1
    assert metric(values, "rpturn_turn_allocations", transport="tls") == 0
    assert metric(values, "rpturn_turn_allocations_created_total") == 2
    binding = "rpturn_stun_binding_requests_total"
    assert metric(values, binding) - metric(before, binding) == 3
    assert metric(values, "rpturn_turn_auth_failures_total", reason="bad_message_integrity") == 1
    assert metric(values, "rpturn_turn_relayed_packets_total", direction="client_to_peer") == 5
    assert metric(values, "rpturn_turn_relayed_packets_total", direction="peer_to_client") == 5
    assert metric(values, "rpturn_turn_relayed_bytes_total", direction="client_to_peer") == sum(range(100, 105))
    assert metric(values, "rpturn_proxy_requests_total") == PROXY_REQUESTS
    assert metric(values, "rpturn_proxy_responses_total", status_class="2xx") == PROXY_REQUESTS
    a, b = app.nodes.addresses("a", "b")
    assert metric(values, "rpturn_proxy_node_up", node=a) == 1
    assert metric(values, "rpturn_proxy_node_up", node=b) == 0
    assert metric(values, "rpturn_proxy_upstream_failures_total", kind="connect") >= 1
    assert metric(values, "rpturn_proxy_node_requests_total", node=a) == PROXY_REQUESTS
    assert metric(values, "rpturn_proxy_node_response_seconds_count", node=a) == PROXY_REQUESTS
    assert metric(values, "rpturn_certificate_expiry_timestamp_seconds") > time.time() + 80 * 86400
    # workers = 1: both services run in the main process, which is named after all three
    main = "main+relay-0+revproxy-0"
    assert metric(values, "rpturn_process_open_fds", process=main) > 5
    assert metric(values, "rpturn_process_resident_memory_bytes", process=main) > 10 * 2**20
    assert metric(values, "rpturn_workers", service="relay") == 1
    assert metric(values, "rpturn_workers", service="revproxy") == 1


def test_status_json_has_the_relay_allocations_and_the_nodes(traffic):
    app = traffic
    code, content_type, body = get(app, "/status")
    assert code == 200 and content_type == "application/json"
    status = json.loads(body)
    assert status["relay"]["allocations"] == 2
    assert status["relay"]["allocations_by_transport"] == {"udp": 1, "tcp": 1, "tls": 0}
    a, b = app.nodes.addresses("a", "b")
    assert [(n["node"], n["up"]) for n in status["revproxy"]["nodes"]] == [(a, True), (b, False)]
    assert status["state"] == "running"


def test_a_loopback_source_outside_allow_is_refused(traffic):
    app = traffic
    for path in ("/metrics", "/status", "/"):
        code, _, body = get(app, path, source="127.0.0.2")
        assert code == 403, path
        assert b"rpturn_" not in body and b"allocations" not in body
    assert get(app, "/status", source="127.0.0.1")[0] == 200
    assert "management listener refused" in app.log()


def wait_code(app, source: str, code: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while get(app, "/status", source=source)[0] != code:
        assert time.monotonic() < deadline, app.log()[-2000:]
        time.sleep(0.1)


def test_sighup_applies_a_new_allow_list(traffic):
    app = traffic
    app.management_table["allow"] = ["127.0.0.1/32", "127.0.0.2/32"]
    app.write()
    app.signal(signal.SIGHUP)
    wait_code(app, "127.0.0.2", 200)
    app.management_table["allow"] = ["127.0.0.1/32"]
    app.write()
    app.signal(signal.SIGHUP)
    wait_code(app, "127.0.0.2", 403)
    assert get(app, "/status")[0] == 200


def test_a_real_prometheus_server_scrapes_it(traffic, tmp_path):
    app = traffic
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: rpturn\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{app.management_port}']\n")
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 (closed below)
    server = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                               f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                              stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        deadline = time.monotonic() + 30
        result: list = []
        while not result:
            assert server.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-3000:]
            time.sleep(0.5)
            try:
                query = "rpturn_turn_allocations{transport=%22udp%22}"
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query={query}", timeout=5) as r:
                    result = json.load(r)["data"]["result"]
            except OSError:
                continue
        assert result[0]["value"][1] == "1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query=up", timeout=5) as r:
            up = json.load(r)["data"]["result"]
        assert [x["value"][1] for x in up] == ["1"]
    finally:
        server.terminate()
        server.wait(20)
        log.close()


def test_the_status_page_renders_in_headless_chromium(traffic, tmp_path):
    app = traffic
    url = f"http://127.0.0.1:{app.management_port}/"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,900"]
    env = {**os.environ, "HOME": str(tmp_path)}
    shot = tmp_path / "status.png"
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=60, env=env, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    keep = os.environ.get("RPTURN_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, timeout=60, env=env, check=True).stdout
    dom = dom.decode()
    assert '<td id="relay-allocations">2</td>' in dom
    assert '<td id="relay-udp">1</td>' in dom and '<td id="relay-tcp">1</td>' in dom
    a, b = app.nodes.addresses("a", "b")
    assert f'id="node-{b}"' in dom and ">down<" in dom and f'id="node-{a}"' in dom
    assert "CN=localhost" in dom or "localhost" in dom


def test_rpturn_status_shows_the_table_in_a_terminal(traffic):
    app = traffic
    with Terminal([RPTURN, "status", "--config", str(app.config_path)], cwd=str(app.tmp_path)) as term:
        screen = term.expect(r"Processes:")
        assert term.exit_status() == 0
    assert "rpturn appliance: running" in screen
    assert "(UDP 1, TCP 1, TLS 0)" in screen
    b = app.nodes.addresses("b")[0]
    assert "nodes: 1 of 2 up" in screen
    assert f"{b}  DOWN" in screen
    out = subprocess.run([RPTURN, "status", "--json", "--config", str(app.config_path)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0
    assert json.loads(out.stdout)["relay"]["allocations"] == 2


def test_open_event_streams_and_websockets_are_gauges(traffic):
    """Runs after the tests above that count requests: it adds two of its own."""
    app = traffic
    ctx = app.pki.client_context()
    raw = socket.create_connection(("127.0.0.1", app.https_port), timeout=10)
    stream = ctx.wrap_socket(raw, server_hostname="localhost")
    ws = websocket.create_connection(f"wss://localhost:{app.https_port}/ws", sslopt={"ca_certs": str(app.pki.root)},
                                     timeout=10)
    try:
        stream.sendall(b"GET /api/client/v2/conferences/x/events?count=1000&interval=0.2 HTTP/1.1\r\n"
                       b"Host: localhost\r\n\r\n")
        assert stream.recv(4096).startswith(b"HTTP/1.1 200")
        ws.send("ping")
        assert ws.recv() == "ping"
        values = scrape_until(app, lambda v: metric(v, "rpturn_proxy_event_streams") == 1
                              and metric(v, "rpturn_proxy_websockets") == 1)
        assert metric(values, "rpturn_proxy_event_streams") == 1
        assert metric(values, "rpturn_proxy_websockets") == 1
    finally:
        stream.close()
        ws.close()
    values = scrape_until(app, lambda v: metric(v, "rpturn_proxy_event_streams") == 0
                          and metric(v, "rpturn_proxy_websockets") == 0)
    assert metric(values, "rpturn_proxy_event_streams") == 0
    assert metric(values, "rpturn_proxy_websockets") == 0
    assert metric(values, "rpturn_proxy_active_requests") == 0


def test_rpturn_status_says_in_one_line_when_the_appliance_is_not_running(tmp_path):
    port = free_port()
    config = tmp_path / "rpturn.toml"
    config.write_text(f'[management]\nlisten = "127.0.0.1:{port}"\n')
    out = subprocess.run([RPTURN, "status", "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith("rpturn status: the appliance is not running (nothing answers on 127.0.0.1:")
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_figures_are_summed_over_workers_and_survive_a_killed_worker(tmp_path):
    """workers = 2 for both services: each worker publishes its own figures; /metrics sums them, a worker killed
    with SIGKILL is replaced and counted as a restart, and what it had counted stays in the totals."""
    pki = Pki(tmp_path)
    nodes = Nodes(tmp_path, names=("a",))
    app = ApplianceProcess(tmp_path, relay={"workers": 2}, users={"alice": "secret"},
                           revproxy={"certificate": str(pki.bundle), "nodes": nodes.addresses("a"), "workers": 2})
    # 16 clients: the kernel spreads their 5-tuples over both workers (all on one: odds 2 in 65 536)
    clients = [RawTurnClient(("127.0.0.1", app.relay_port)) for _ in range(16)]
    try:
        app.start()
        for client in clients:
            client.learn_nonce()
            assert error_code(client.allocate()) is None
        for _ in range(10):
            assert request(pki, app.https_port, path="/whoami").status == 200
        values = scrape_until(app, lambda v: metric(v, "rpturn_turn_allocations", transport="udp") == 16
                              and metric(v, "rpturn_proxy_requests_total") == 10
                              and metric(v, "rpturn_workers", service="relay") == 2
                              and metric(v, "rpturn_workers", service="revproxy") == 2)
        assert metric(values, "rpturn_turn_allocations", transport="udp") == 16
        assert metric(values, "rpturn_proxy_requests_total") == 10
        assert metric(values, "rpturn_workers", service="relay") == 2
        assert metric(values, "rpturn_workers", service="revproxy") == 2
        for process in ("main", "relay-0", "relay-1", "revproxy-0", "revproxy-1"):
            assert metric(values, "rpturn_process_resident_memory_bytes", process=process) > 2**20, process

        status = json.loads(get(app, "/status")[2])
        per_worker = {p["process"]: p["pid"] for p in status["processes"]}
        os.kill(per_worker["relay-0"], 9)
        after = scrape_until(app, lambda v: metric(v, "rpturn_worker_restarts_total", service="relay") == 1
                             and metric(v, "rpturn_workers", service="relay") == 2, timeout=15)
        assert metric(after, "rpturn_worker_restarts_total", service="relay") == 1
        assert metric(after, "rpturn_worker_restarts_total", service="revproxy") == 0
        assert metric(after, "rpturn_workers", service="relay") == 2
        # The dead worker's allocations are gone from the gauge; what it counted stays in the counters.
        assert metric(after, "rpturn_turn_allocations", transport="udp") < 16
        assert metric(after, "rpturn_turn_allocations_created_total") == 16
        assert json.loads(get(app, "/status")[2])["relay"]["worker_restarts"] == 1
    finally:
        for client in clients:
            client.close()
        app.stop()
        nodes.close()


def test_a_management_port_in_use_is_a_one_line_start_error(tmp_path):
    app = ApplianceProcess(tmp_path, relay={}, revproxy={"nodes": ["127.0.0.2:443"],
                                                         "self_signed": str(tmp_path / "selfsigned.pem")},
                           users={"alice": "secret"})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", app.management_port))
        taken.listen()
        out = app.run_until_exit()
    assert out.returncode != 0
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert lines == [f"{app.config_path}: [management] listen: the management cannot listen on "
                     f"127.0.0.1:{app.management_port} (TCP): already in use (another process listens there)"]
