"""The real `twistd revproxy` in front of three real HTTPS node stand-ins, driven by curl, openssl, Python's
ssl/http.client and a WebSocket client: TLS, balancing, headers, streaming, upgrades, smuggling and limits."""

import hashlib
import os
import re
import socket
import ssl
import subprocess
import time
from collections import Counter

import pytest
import websocket

from tests.support.revproxy_process import (
    Nodes,
    Pki,
    ProxyProcess,
    free_port,
    pattern,
    raw_exchange,
    request,
    write_config,
)

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("revproxy")
    pki = Pki(d)
    nodes = Nodes(d)
    webapp = d / "webapp"
    webapp.mkdir()
    (webapp / "index.html").write_text("<h1>branded web app</h1>")
    port, hport = free_port(), free_port()
    cfg = write_config(d / "proxy.toml", {
        "https": f"127.0.0.1:{port}", "http": f"127.0.0.1:{hport}", "certificate": str(pki.bundle),
        "nodes": nodes.addresses(), "client_timeout": 2, "webapp_dir": str(webapp)})
    proxy = ProxyProcess(cfg, port)
    yield pki, nodes, proxy, port, hport
    proxy.stop()
    nodes.close()


def tls_socket(pki: Pki, port: int, timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return pki.client_context().wrap_socket(raw, server_hostname="localhost")


def openssl(port: int, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                           *args], input=stdin, capture_output=True, text=True, timeout=20)


# -- TLS ----------------------------------------------------------------------------------------------------------
def test_full_chain_is_sent_and_verifies_with_only_the_root_ca(env):
    pki, _, _, port, _ = env
    r = openssl(port, "-CAfile", str(pki.root), "-verify_return_error", "-showcerts")
    assert "Verify return code: 0 (ok)" in r.stdout
    assert r.stdout.count("-----BEGIN CERTIFICATE-----") == 2  # leaf and intermediate


def test_python_ssl_trusting_only_the_root_gets_through(env):
    pki, _, _, port, _ = env
    with tls_socket(pki, port) as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        assert len(s.getpeercert()["subject"]) == 1


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_tls_1_0_and_1_1_are_refused(env, version):
    _, _, _, port, _ = env
    r = openssl(port, version, "-cipher", "DEFAULT:@SECLEVEL=0")
    assert r.returncode != 0
    assert "Cipher is (NONE)" in r.stdout or "no protocols available" in r.stderr or "alert" in r.stderr


def test_tls_1_2_uses_ecdhe_with_an_aead_cipher_and_resumes_sessions(env, tmp_path):
    _, _, _, port, _ = env
    sess = str(tmp_path / "sess.pem")
    first = openssl(port, "-tls1_2", "-sess_out", sess)
    cipher = re.search(r"Cipher is (\S+)", first.stdout).group(1)
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)
    again = openssl(port, "-tls1_2", "-sess_in", sess)
    assert "Reused, TLSv1.2" in again.stdout


# -- balancing and headers ----------------------------------------------------------------------------------------
def test_round_robin_spreads_requests_evenly_over_the_nodes(env):
    pki, _, _, port, _ = env
    seen = Counter(request(pki, port).json()["node"] for _ in range(30))
    assert seen == {"a": 10, "b": 10, "c": 10}


def test_keep_alive_connections_to_the_nodes_are_reused(env):
    pki, nodes, _, port, _ = env
    for _ in range(6):
        request(pki, port)
    before = sum(nodes.stats(n)["connections"] for n in "abc")
    for _ in range(30):
        request(pki, port)
    after = sum(nodes.stats(n)["connections"] for n in "abc")
    assert after - before <= 3 + 3  # the /stats calls themselves are 3 direct connections


def test_curl_gets_a_node_answer_with_host_kept(env):
    pki, _, _, port, _ = env
    r = subprocess.run(["curl", "-sS", "--cacert", str(pki.root), f"https://localhost:{port}/whoami"],
                       capture_output=True, text=True, timeout=20)
    assert f'"host": ["localhost:{port}"]' in r.stdout


def test_forwarded_headers_are_set_and_a_clients_proto_overwritten(env):
    pki, _, _, port, _ = env
    seen = request(pki, port, headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "http",
                                       "X-Real-IP": "192.0.2.1"}).json()["headers"]
    assert seen["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-real-ip"] == ["127.0.0.1"]


def test_hop_by_hop_headers_are_stripped_both_ways(env):
    pki, _, _, port, _ = env
    r = request(pki, port, headers={"Connection": "keep-alive, X-Secret", "X-Secret": "1", "Keep-Alive": "5",
                                    "TE": "trailers", "Proxy-Authorization": "Basic eA==", "X-Kept": "yes"})
    seen = r.json()["headers"]
    assert not {"x-secret", "keep-alive", "te", "proxy-authorization"} & set(seen)
    assert seen["x-kept"] == ["yes"]
    assert r.headers["x-node"] and r.headers.get("x-hop") is None


# -- bodies -------------------------------------------------------------------------------------------------------
def test_5_mib_upload_arrives_intact(env):
    pki, _, _, port, _ = env
    body = os.urandom(5 * MiB)
    r = request(pki, port, "POST", "/echo", body=body, timeout=30)
    assert r.status == 200
    assert r.headers["x-sha256"] == hashlib.sha256(body).hexdigest() and r.body == body


def test_5_mib_download_arrives_intact(env):
    pki, _, _, port, _ = env
    r = request(pki, port, "GET", f"/big?n={5 * MiB}", timeout=30)
    assert r.status == 200 and r.body == pattern(5 * MiB)


def test_chunked_upload_is_forwarded_intact(env):
    pki, _, _, port, _ = env
    parts = [os.urandom(100_000) for _ in range(3)]
    r = request(pki, port, "POST", "/echo", body=iter(parts))  # an iterable body: http.client sends it chunked
    assert r.body == b"".join(parts)


# -- streams and upgrades -----------------------------------------------------------------------------------------
def read_events(s: ssl.SSLSocket, count: int) -> list[tuple[float, bytes]]:
    got: list[tuple[float, bytes]] = []
    buf = b""
    while len(got) < count:
        data = s.recv(65536)
        assert data, "stream ended early"
        buf += data
        while b"event: tick\ndata: " in buf:
            i = buf.index(b"event: tick\ndata: ")
            end = buf.index(b"\n\n", i)
            got.append((time.time(), buf[i: end]))
            buf = buf[end + 2:]
    return got


def test_sse_events_reach_the_client_one_by_one_without_delay(env):
    pki, _, _, port, _ = env
    with tls_socket(pki, port) as s:
        s.sendall(b"GET /api/client/v2/conferences/x/events?count=4&interval=0.4 HTTP/1.1\r\nHost: localhost\r\n"
                  b"Accept: text/event-stream\r\n\r\n")
        events = read_events(s, 4)
    lags = [arrived - float(line.split()[-1]) for arrived, line in events]
    assert max(lags) < 0.1  # each event delivered as it is sent, not batched
    assert events[-1][0] - events[0][0] > 1.0


def test_node_stream_is_closed_at_once_when_the_client_leaves(env):
    pki, nodes, _, port, _ = env
    gone_before = sum(nodes.stats(n)["events_gone"] for n in "abc")
    s = tls_socket(pki, port)
    s.sendall(b"GET /api/client/v2/conferences/x/events?interval=0.2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    read_events(s, 1)
    s.close()
    deadline = time.monotonic() + 2
    while sum(nodes.stats(n)["events_gone"] for n in "abc") == gone_before:
        assert time.monotonic() < deadline, "the node's /events stream stayed open"
        time.sleep(0.05)


def test_websocket_echo_through_the_proxy(env):
    pki, _, _, port, _ = env
    ws = websocket.create_connection(f"wss://localhost:{port}/ws", sslopt={"ca_certs": str(pki.root)}, timeout=5)
    try:
        ws.send("hello node")
        assert ws.recv() == "hello node"
        blob = os.urandom(200_000)
        ws.send_binary(blob)
        assert ws.recv() == blob
    finally:
        ws.close()


# -- redirect and local web app -----------------------------------------------------------------------------------
def test_plain_http_redirects_to_https_keeping_host_path_and_query(env):
    _, _, _, port, hport = env
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", "-H",
                        "Host: meet.example.com", f"http://127.0.0.1:{hport}/webapp/conf?alias=x&b=2"],
                       capture_output=True, text=True, timeout=20)
    assert r.stdout == f"301 https://meet.example.com:{port}/webapp/conf?alias=x&b=2"


def test_webapp_dir_is_served_locally_and_never_outside_it(env):
    pki, _, _, port, _ = env
    r = request(pki, port, "GET", "/webapp/")
    assert r.status == 200 and r.body == b"<h1>branded web app</h1>"
    assert r.headers["content-type"] == "text/html"
    assert request(pki, port, "GET", "/webapp/%2e%2e/%2e%2e/etc/passwd").status == 404


def test_access_log_scrubs_secrets_from_the_query(env):
    pki, _, proxy, port, _ = env
    request(pki, port, "GET", "/api/client/v2/conferences/m/x?token=SECRETTOKEN&pin=4321&alias=visible")
    proxy.wait_log("alias=visible")
    log = proxy.log()
    assert "token=***&pin=***&alias=visible" in log
    assert "SECRETTOKEN" not in log and "4321" not in log


# -- smuggling and limits -----------------------------------------------------------------------------------------
def refused(env, data: bytes) -> bytes:
    pki, _, _, port, _ = env
    out = raw_exchange(pki, port, data)
    assert out.count(b"HTTP/1.1 ") == 1, out  # one answer, then the connection is closed
    return out


def test_content_length_with_transfer_encoding_gets_400_and_close(env):
    out = refused(env, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"0\r\n\r\nGET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")


def test_conflicting_content_lengths_get_400(env):
    out = refused(env, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd")
    assert out.startswith(b"HTTP/1.1 400 ")


def test_malformed_header_gets_400(env):
    out = refused(env, b"GET /whoami HTTP/1.1\r\nHost: x\r\nX-Bad : 1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")


def test_head_over_16_kib_gets_431(env):
    out = refused(env, b"GET /whoami HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")


def test_connect_gets_405(env):
    out = refused(env, b"CONNECT 10.1.2.3:22 HTTP/1.1\r\nHost: 10.1.2.3:22\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 405 ")


def test_body_over_max_body_size_gets_413(env):
    out = refused(env, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (16 * MiB))
    assert out.startswith(b"HTTP/1.1 413 ")


def test_absolute_form_uri_is_sent_to_a_node_as_its_path(env):
    pki, _, _, port, _ = env
    out = raw_exchange(pki, port, b"GET https://10.9.9.9:9999/whoami?q=1 HTTP/1.1\r\nHost: localhost\r\n"
                                  b"Connection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and b'"uri": "/whoami?q=1"' in out


def test_host_header_cannot_steer_the_proxy(env):
    pki, _, _, port, _ = env
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(5)
    trap.settimeout(0.3)
    try:
        out = raw_exchange(pki, port, b"GET /whoami HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
                           % trap.getsockname()[1])
        assert out.startswith(b"HTTP/1.1 200 ") and b'"node": ' in out, out
        with pytest.raises(TimeoutError):
            trap.accept()  # nothing ever connected to the address the Host header named
    finally:
        trap.close()


def test_slow_client_is_closed_while_others_are_served(env):
    pki, _, _, port, _ = env
    slow = tls_socket(pki, port, timeout=6)
    slow.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
    began = time.monotonic()
    for _ in range(5):
        assert request(pki, port).status == 200
    assert slow.recv(100) == b""  # closed by the proxy (client_timeout = 2 s)
    assert 1.5 < time.monotonic() - began < 4.5
    slow.close()
