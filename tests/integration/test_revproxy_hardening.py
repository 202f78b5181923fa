"""Hardening of the real `twistd revproxy` against slow uploads, connection floods, header and log tricks: each
test fails on a proxy without its fix (real nodes, real TLS, loopback only)."""

import concurrent.futures
import json
import re
import signal
import socket
import ssl
import time

import pytest

from tests.support.revproxy_process import (
    Pki,
    ProxyProcess,
    free_port,
    lab_fixture,
    raw_exchange,
    request,
    write_config,
)

shared = lab_fixture("hardening")


@pytest.fixture
def make_proxy(shared, tmp_path):
    pki, nodes = shared
    started: list[ProxyProcess] = []

    def make(**table):
        port = free_port()
        conf = {"https": f"127.0.0.1:{port}", "http": "", "certificate": str(pki.bundle),
                "nodes": nodes.addresses(), "hostname": "appliance.example.com", **table}
        p = ProxyProcess(write_config(tmp_path / f"proxy{len(started)}.toml", conf), port)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


def tls_socket(pki: Pki, port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    return pki.client_context().wrap_socket(raw, server_hostname="localhost")


def read_response(s: ssl.SSLSocket) -> bytes:
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except (TimeoutError, ssl.SSLError, ConnectionResetError):
            break
        if not data:
            break
        out += data
    return out


def slow_upload(pki: Pki, port: int, method: str, pieces: int, interval: float) -> bytes:
    """`pieces` bytes sent one every `interval` seconds, then the whole answer."""
    body = bytes(range(65, 65 + pieces))
    with tls_socket(pki, port) as s:
        s.sendall(b"%s /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                  % (method.encode(), len(body)))
        for i in range(pieces):
            time.sleep(interval)
            s.sendall(body[i: i + 1])
        answer = read_response(s)
    assert answer.endswith(body) or not answer.startswith(b"HTTP/1.1 200"), answer
    return answer


# -- slow uploads -------------------------------------------------------------------------------------------------
def test_a_slow_upload_outlasting_the_node_read_timeout_gets_its_answer(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy(upstream_read_timeout=1)
    answer = slow_upload(pki, proxy.port, "POST", pieces=8, interval=0.35)  # 2.8 s of sending
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


def test_slow_puts_mark_no_node_down_and_others_are_served_meanwhile(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy(upstream_read_timeout=1, fail_timeout=30)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        uploads = [pool.submit(slow_upload, pki, proxy.port, "PUT", 8, 0.35) for _ in range(6)]
        time.sleep(1.5)
        assert all(request(pki, proxy.port).status == 200 for _ in range(6))
        answers = [u.result(timeout=20) for u in uploads]
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), [a[:40] for a in answers]
    assert "marked down" not in proxy.log()
    assert {request(pki, proxy.port).json()["node"] for _ in range(3)} == {"a", "b", "c"}


# -- connection floods --------------------------------------------------------------------------------------------
def closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_tls_handshake_that_does_not_finish_is_closed_after_tls_handshake_timeout(shared, make_proxy):
    proxy = make_proxy(tls_handshake_timeout=1, keepalive_timeout=75)
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port)) as idle, \
            socket.create_connection(("127.0.0.1", proxy.port)) as half:
        half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, no more
        assert closed_within(idle, 4) and closed_within(half, 4)
    assert time.monotonic() - began < 3


def test_connections_per_source_address_are_limited_and_other_addresses_still_served(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy(max_connections_per_ip=5)
    time.sleep(0.3)  # the start-up probe's connection is gone
    held = [socket.create_connection(("127.0.0.1", proxy.port), source_address=("127.0.0.1", 0))
            for _ in range(5)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", proxy.port), source_address=("127.0.0.1", 0)) as extra:
            assert closed_within(extra, 2)
        assert request(pki, proxy.port, source="127.0.0.9").status == 200
        proxy.wait_log("max_connections_per_ip (5) reached")
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 3
    while True:  # once they are gone, the address is served again
        try:
            assert request(pki, proxy.port, source="127.0.0.1", timeout=2).status == 200
            break
        except (OSError, ssl.SSLError):
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_at_max_connections_idle_connections_make_room_for_new_clients(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy(max_connections=30, max_connections_per_ip=0, tls_handshake_timeout=30)
    time.sleep(0.3)  # the start-up probe's connection is gone
    flood = [socket.create_connection(("127.0.0.1", proxy.port), source_address=(f"127.0.1.{i}", 0))
             for i in range(1, 41)]  # 40 connections that never start TLS: more than the limit
    try:
        time.sleep(0.3)
        answers = [request(pki, proxy.port, source="127.0.0.7", timeout=5).status for _ in range(5)]
        assert answers == [200] * 5
        # ten made room for the last ten of the flood, one for the first request (the others found room)
        assert sum(closed_within(s, 0.2) for s in flood) == 11
        proxy.wait_log("max_connections (30) reached")
    finally:
        for s in flood:
            s.close()


# -- header and log hygiene ---------------------------------------------------------------------------------------
def test_header_names_with_underscores_are_dropped(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy()
    seen = request(pki, proxy.port, headers={"X_Real_IP": "6.6.6.6", "X-Forwarded_Proto": "http",
                                             "Transfer_Encoding": "chunked", "Content_Length": "9",
                                             "X-Kept": "yes"}).json()["headers"]
    assert not [name for name in seen if "_" in name]
    assert seen["x-real-ip"] == ["127.0.0.1"] and seen["x-kept"] == ["yes"]


def test_access_log_scrubs_percent_encoded_secrets_and_the_referer(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy()
    request(pki, proxy.port, "GET", "/whoami?%74oken=SECRET1&PIN=SECRET2&st%61te=SECRET3&alias=visible",
            headers={"Referer": "https://meet.example.com/webapp/?conference=x&token=SECRET4"})
    proxy.wait_log("alias=visible")
    log = proxy.log()
    assert "%74oken=***&PIN=***&st%61te=***&alias=visible" in log
    assert 'referer="https://meet.example.com/webapp/?conference=x&token=***"' in log
    assert not re.search("SECRET[1-4]", log)


def test_a_control_byte_in_the_target_cannot_forge_a_log_line(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy()
    raw_exchange(pki, proxy.port, b"GET /whoami?a=\x85FORGED-LINE\x9b\xff HTTP/1.1\r\nHost: localhost\r\n"
                                  b"Connection: close\r\n\r\n")
    proxy.wait_log("FORGED-LINE")
    log = proxy.log()
    assert "/whoami?a=\\x85FORGED-LINE\\x9b\\xff" in log
    assert not any(line.startswith("FORGED-LINE") for line in log.splitlines())


# -- HTTP/1.0 and upgrades ----------------------------------------------------------------------------------------
def test_http_1_0_without_host_reaches_the_node_with_the_configured_hostname(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy()
    out = raw_exchange(pki, proxy.port, b"GET /whoami HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ")
    assert json.loads(out.split(b"\r\n\r\n", 1)[1])["headers"]["host"] == ["appliance.example.com"]


def test_an_h2c_upgrade_is_forwarded_as_a_plain_request_without_the_upgrade(shared, make_proxy):
    pki, _ = shared
    proxy = make_proxy()
    seen = request(pki, proxy.port, headers={"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
                                             "HTTP2-Settings": "AAMAAABkAAQAAP__"}).json()["headers"]
    assert not {"upgrade", "http2-settings", "connection"} & set(seen)


# -- the access log in a file of its own --------------------------------------------------------------------------
def test_access_log_to_a_file_of_its_own_reopened_on_sighup(shared, make_proxy, tmp_path):
    pki, _ = shared
    path = tmp_path / "access.log"
    proxy = make_proxy(access_log=str(path))
    request(pki, proxy.port, "GET", "/whoami?pin=1234&x=first")
    deadline = time.monotonic() + 3
    while "x=first" not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, "no access-log line in the file"
        time.sleep(0.05)
    assert "pin=***&x=first" in path.read_text() and "x=first" not in proxy.log()
    path.rename(tmp_path / "access.log.1")
    proxy.signal(signal.SIGHUP)
    proxy.wait_log("reloaded")
    request(pki, proxy.port, "GET", "/whoami?x=second")
    deadline = time.monotonic() + 3
    while "x=second" not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, "the access log was not reopened"
        time.sleep(0.05)
