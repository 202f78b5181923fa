"""The PIN guard in the real `twistd rpturn` with real HTTPS requests: a node answers 403 to a wrong PIN; after
`max_failures` the client address gets 429 on the token request without the node seeing it, other addresses and
other paths are unaffected, X-Forwarded-For changes nothing, the ban ends, and it is logged and in /metrics."""

from __future__ import annotations

import http.client
import time

import pytest

from tests.support.appliance_process import ApplianceProcess, self_signed_site
from tests.support.revproxy_process import Nodes, Pki, request

TOKEN = "/api/client/v2/conferences/meet.alice/request_token"


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):
    where = tmp_path_factory.mktemp("pinguard")
    pki = Pki(where)
    nodes = Nodes(where, names=("a",))
    guard = {"enabled": True, "max_failures": 3, "window": 60, "ban": 3}
    app = ApplianceProcess(where, revproxy={**self_signed_site(where), "certificate": str(pki.bundle),
                                            "nodes": nodes.addresses(), "pin_guard": guard}).start()
    yield app, pki, app.https_port, nodes, app.management_port
    app.stop()
    nodes.close()


def pin(pki, port, value, source="127.0.0.1", headers=None):
    return request(pki, port, "POST", TOKEN, body=b"{}", source=source,
                   headers={"pin": value, "content-type": "application/json", **(headers or {})})


def metrics(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_wrong_pins_ban_the_address_for_the_token_request_only(appliance):
    app, pki, port, nodes, management = appliance
    assert pin(pki, port, "1234").status == 200
    for _ in range(3):
        assert pin(pki, port, "0000").status == 403
    seen = nodes.stats("a")["requests"]
    banned = pin(pki, port, "1234")
    assert banned.status == 429 and b"too many failed attempts" in banned.body
    assert pin(pki, port, "1234", headers={"X-Forwarded-For": "127.0.0.9"}).status == 429  # not trusted
    assert nodes.stats("a")["requests"] == seen + 1  # the 429s never reached the node (+1: the /stats call)
    assert pin(pki, port, "1234", source="127.0.0.5").status == 200  # another address is unaffected
    assert request(pki, port, "GET", "/whoami").status == 200  # another path from the banned address too
    assert request(pki, port, "GET", TOKEN).status != 429  # only POST is the PIN check
    deadline = time.monotonic() + 10
    while "banned for 3 s after 3 failed attempts" not in app.log():
        assert time.monotonic() < deadline, app.log()[-2000:]
        time.sleep(0.1)
    deadline = time.monotonic() + 10
    while True:
        text = metrics(management)
        if 'rpturn_proxy_pin_guard_events_total{event="ban"} 1.0' in text:
            break
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert 'rpturn_proxy_pin_guard_events_total{event="failure"} 3.0' in text
    assert 'rpturn_proxy_pin_guard_events_total{event="blocked"} 2.0' in text
    time.sleep(3.2)
    assert pin(pki, port, "1234").status == 200  # the ban ended


def test_failures_from_other_addresses_do_not_add_up(appliance):
    _, pki, port, _, _ = appliance
    for i in range(4):
        assert pin(pki, port, "0000", source=f"127.0.0.{20 + i}").status == 403
        assert pin(pki, port, "0000", source=f"127.0.0.{20 + i}").status == 403
    assert all(pin(pki, port, "1234", source=f"127.0.0.{20 + i}").status == 200 for i in range(4))
