"""TURN on the HTTPS port of the real `twistd rpturn` (`turn_on_https`): at the same time curl through the proxy,
coturn's turnutils_uclient over TCP (TURN in the clear on the HTTPS port) and over TLS, all without loss; headless
Chromium relay-only through `turns:` on the HTTPS port; the relay's tls_listen serving the proxy's certificate by
default; floods of garbage and half handshakes on the shared port bounded, with no traceback."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from relay import stun
from relay.restauth import make_credentials
from tests.support.appliance_process import ApplianceProcess
from tests.support.chromium import Chromium, relay_round_trip
from tests.support.coturn import turn_peer_fixture, turnutils_uclient
from tests.support.net import free_port, still_open_after
from tests.support.relay_process import RawTurnClient
from tests.support.revproxy_process import Nodes, Pki

BIN = Path(sys.executable).parent
SECRET = "turn-on-443-secret-0123456789"
HANDSHAKE_TIMEOUT = 2  # the proxy's tls_handshake_timeout in this config, so the flood test is quick


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApplianceProcess, Pki, int]]:
    where = tmp_path_factory.mktemp("turn443")
    pki = Pki(where)
    nodes = Nodes(where, names=("a",))
    tls_port = free_port()
    app = ApplianceProcess(where, relay={"tls_listen": [f"127.0.0.1:{tls_port}"], "auth_secrets": [SECRET]},
                           revproxy={"certificate": str(pki.bundle), "nodes": nodes.addresses("a"),
                                     "turn_on_https": True, "tls_handshake_timeout": HANDSHAKE_TIMEOUT},
                           users={"alice": "secret"})
    app.start()
    try:
        yield app, pki, tls_port
    finally:
        app.stop()
        nodes.close()
    assert "Traceback" not in app.log()


turn_peer = turn_peer_fixture()  # coturn's turnutils_peer: a UDP echo peer on loopback


def curl(app: ApplianceProcess, pki: Pki, count: int) -> list[str]:
    url = f"https://localhost:{app.https_port}/whoami"
    statuses = []
    for _ in range(count):
        done = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(pki.root),
                               "--resolve", f"localhost:{app.https_port}:127.0.0.1", url],
                              capture_output=True, text=True, timeout=30)
        statuses.append(done.stdout.strip() or done.stderr.strip())
    return statuses


def uclient(port: int, peer_port: int, *flags: str, messages: int = 100) -> dict:
    return turnutils_uclient(port, peer_port, "-u", "alice", "-w", "secret", *flags, clients=2, messages=messages)


def test_curl_turn_over_tcp_and_turn_over_tls_share_the_https_port(setup, turn_peer) -> None:
    app, pki, _ = setup
    with ThreadPoolExecutor(3) as pool:
        http = pool.submit(curl, app, pki, 30)
        tcp = pool.submit(uclient, app.https_port, turn_peer, "-t")
        tls = pool.submit(uclient, app.https_port, turn_peer, "-t", "-S")
        statuses, over_tcp, over_tls = http.result(), tcp.result(), tls.result()
    assert statuses == ["200"] * 30
    for figures in (over_tcp, over_tls):
        assert figures["sent"] >= 200 and figures["received"] == figures["sent"] and figures["lost"] == 0, \
            figures["output"][-1500:]
    log = app.log()
    assert re.search(rf"tcp 127\.0\.0\.1:\d+->127\.0\.0\.1:{app.https_port}", log)
    assert re.search(rf"tls 127\.0\.0\.1:\d+->127\.0\.0\.1:{app.https_port}", log)


def test_rest_credentials_work_on_the_https_port(setup) -> None:
    app, pki, _ = setup
    username, password = make_credentials(SECRET, "browser", 600, time.time())
    client = RawTurnClient(("127.0.0.1", app.https_port), username, password, transport="tls",
                           ca_file=str(pki.root))
    try:
        assert client.allocate().msg_class == stun.MessageClass.SUCCESS
    finally:
        client.close()


def test_tls_listen_serves_the_proxys_certificate_by_default(setup) -> None:
    _, pki, tls_port = setup
    done = subprocess.run([str(BIN / "rpturn-stunclient"), f"127.0.0.1:{tls_port}", "--tls", "--ca", str(pki.root),
                           "--server-name", "localhost"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_chromium_relays_through_turns_on_the_https_port(setup, tmp_path: Path) -> None:
    app, pki, _ = setup
    username, password = make_credentials(SECRET, "browser", 600, time.time())
    servers = [{"urls": [f"turns:localhost:{app.https_port}?transport=tcp"], "username": username,
                "credential": password}]
    with Chromium(tmp_path, trust=[pki.root]) as browser:
        result = relay_round_trip(browser, servers)
    assert result["echoes"] == [f"echo:message {i}" for i in range(5)], result
    assert result["local"]["candidateType"] == "relay" and result["remote"]["candidateType"] == "relay", result
    assert result["local"]["relayProtocol"] == "tls", result


def test_floods_of_garbage_and_half_handshakes_on_the_https_port_are_bounded(setup) -> None:
    app, pki, _ = setup
    kinds = [
        b"\xff" + os.urandom(99),  # neither TLS nor STUN: TLS refuses it at once
        b"\x00\x01\xff\xff" + os.urandom(60),  # looks like STUN, is not: the relay closes the unframeable stream
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a ClientHello that never ends
        b"\x00\x01\x00\x08\x21\x12\xa4\x42",  # a STUN header that never ends
    ]
    flood = []
    for i in range(400):
        sock = socket.create_connection(("127.0.0.1", app.https_port), timeout=5)
        sock.sendall(kinds[i % 4])
        flood.append(sock)
    # Meanwhile: HTTPS through the proxy, and TURN over TLS, from another address than the flood's.
    context = pki.client_context()
    with socket.create_connection(("127.0.0.1", app.https_port), timeout=5, source_address=("127.0.0.3", 0)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 200")
    # Every flood connection is closed by the server: at once for garbage, after the handshake timeout for the
    # rest (the relay's idle bound for a never-finished STUN header is longer: we close those ourselves).
    pending = still_open_after([s for i, s in enumerate(flood) if i % 4 != 3], HANDSHAKE_TIMEOUT + 5)
    for sock in flood:
        sock.close()
    assert not pending, f"{len(pending)} flood connections still open"
    assert curl(app, pki, 1) == ["200"]
    assert "Traceback" not in app.log()


@pytest.mark.parametrize("relay_workers, proxy_workers", [(1, 2), (2, 1)])
def test_turn_on_https_with_worker_processes(tmp_path: Path, turn_peer: int, relay_workers: int,
                                             proxy_workers: int) -> None:
    pki = Pki(tmp_path)
    nodes = Nodes(tmp_path, names=("a",))
    app = ApplianceProcess(tmp_path, relay={"workers": relay_workers, "auth_secrets": [SECRET]},
                           revproxy={"certificate": str(pki.bundle), "nodes": nodes.addresses("a"),
                                     "turn_on_https": True, "workers": proxy_workers},
                           users={"alice": "secret"})
    app.start()
    try:
        assert app.wait_log(lambda log: log.count("revproxy listening") >= proxy_workers, 20)
        # -c: no RTCP allocations. uclient pairs RTP/RTCP allocations with EVEN-PORT and RESERVATION-TOKEN over two
        # connections, which SO_REUSEPORT may give to two processes: a token is known only in the one that issued it
        # (as with the relay's own workers over TCP). Browsers do not reserve ports.
        with ThreadPoolExecutor(3) as pool:
            http = pool.submit(curl, app, pki, 10)
            tcp = pool.submit(uclient, app.https_port, turn_peer, "-t", "-c", messages=50)
            tls = pool.submit(uclient, app.https_port, turn_peer, "-t", "-S", "-c", messages=50)
            statuses, over_tcp, over_tls = http.result(), tcp.result(), tls.result()
        assert statuses == ["200"] * 10
        for figures in (over_tcp, over_tls):
            assert figures["sent"] == 100 and figures["received"] == figures["sent"] and figures["lost"] == 0, \
                figures["output"][-1500:]
        # A held allocation over TLS on the HTTPS port shows in /metrics, whichever process serves it.
        username, password = make_credentials(SECRET, "workers", 600, time.time())
        client = RawTurnClient(("127.0.0.1", app.https_port), username, password, transport="tls")
        try:
            assert client.allocate().msg_class == stun.MessageClass.SUCCESS
            assert wait_metric(app, "tls", 1)
        finally:
            client.close()
    finally:
        assert app.stop() == 0
        nodes.close()
    assert "Traceback" not in app.log()


def wait_metric(app: ApplianceProcess, transport: str, at_least: int, timeout: float = 10.0) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{app.management_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        found = re.search(rf'^rpturn_turn_allocations\{{transport="{transport}"\}} (\d+)', text, re.M)
        if found and int(found.group(1)) >= at_least:
            return True
        time.sleep(0.2)
    return False


def test_allocations_on_the_https_port_count_by_transport_in_metrics(setup) -> None:
    import urllib.request

    app, _, tls_port = setup
    username, password = make_credentials(SECRET, "metrics", 600, time.time())
    clients = [RawTurnClient(("127.0.0.1", app.https_port), username, password, transport="tls"),
               RawTurnClient(("127.0.0.1", tls_port), username, password, transport="tls"),
               RawTurnClient(("127.0.0.1", app.https_port), username, password, transport="tcp")]
    try:
        for client in clients:
            assert client.allocate().msg_class == stun.MessageClass.SUCCESS
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{app.management_port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
            tls = re.search(r'^rpturn_turn_allocations\{transport="tls"\} (\d+)', text, re.M)
            tcp = re.search(r'^rpturn_turn_allocations\{transport="tcp"\} (\d+)', text, re.M)
            if (tls and int(tls.group(1)) >= 2 and tcp and int(tcp.group(1)) >= 1) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert tls and int(tls.group(1)) >= 2, text
        assert tcp and int(tcp.group(1)) >= 1, text
    finally:
        for client in clients:
            client.close()
