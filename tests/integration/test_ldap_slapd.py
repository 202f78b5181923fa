"""LDAP authentication on the proxy against a real slapd (started by the test with a small directory), through the
real `twistd rpturn` with real HTTPS requests: good user, wrong password, user not in the group, no credentials,
slapd down (503, never a pass), failed binds counting toward the PIN guard, and the search mode after a reload."""

from __future__ import annotations

import base64
import socket
import time

import pytest

from tests.support.appliance_process import ApplianceProcess, self_signed_site
from tests.support.revproxy_process import Nodes, Pki, request
from tests.support.slapd import GROUP, PEOPLE, Slapd

API = "/api/client/v2/conferences/meet.alice/info"
TOKEN = "/api/client/v2/conferences/meet.alice/request_token"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    where = tmp_path_factory.mktemp("ldap")
    pki = Pki(where)
    slapd = Slapd(where / "slapd")
    nodes = Nodes(where, names=("a",))
    app = ApplianceProcess(where, revproxy={
        **self_signed_site(where), "certificate": str(pki.bundle), "nodes": nodes.addresses(),
        "pin_guard": {"enabled": True, "max_failures": 3, "window": 60, "ban": 60},
        "ldap": {"url": slapd.url, "user_dn_template": f"uid={{user}},{PEOPLE}", "group": GROUP, "cache_ttl": 60,
                 "timeout": 2}}).start()
    yield app, pki, app.https_port, slapd
    app.stop()
    nodes.close()
    slapd.stop()


def test_good_user_passes_and_the_node_answers(site):
    _, pki, port, _ = site
    reply = request(pki, port, "GET", API, headers=basic("alice", "alice-pw"))
    assert reply.status == 200 and reply.json()["node"] == "a"


def test_no_credentials_get_a_basic_challenge_and_other_paths_are_open(site):
    _, pki, port, _ = site
    reply = request(pki, port, "GET", API)
    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"] == 'Basic realm="rpturn", charset="UTF-8"'
    assert request(pki, port, "GET", "/whoami").status == 200  # not under a protected prefix
    assert request(pki, port, "GET", API, headers={"Authorization": "Basic !!!"}).status == 401
    assert request(pki, port, "GET", API, headers=basic("alice", "")).status == 401  # never an anonymous bind


def test_wrong_password_unknown_user_and_not_in_group(site):
    _, pki, port, _ = site
    assert request(pki, port, "GET", API, headers=basic("alice", "wrong"), source="127.0.0.11").status == 401
    assert request(pki, port, "GET", API, headers=basic("mallory", "x"), source="127.0.0.12").status == 401
    reply = request(pki, port, "GET", API, headers=basic("bob", "bob-pw"))
    assert reply.status == 403 and b"not a member of the required group" in reply.body
    assert request(pki, port, "GET", API, headers=basic("alice*)(uid=*", "x"), source="127.0.0.13").status == 401


def test_failed_binds_count_toward_the_pin_guard(site):
    _, pki, port, _ = site
    source = "127.0.0.21"
    for _ in range(3):
        assert request(pki, port, "GET", API, headers=basic("alice", "guess"), source=source).status == 401
    good = basic("alice", "alice-pw")
    assert request(pki, port, "POST", TOKEN, body=b"{}", headers={**good, "pin": "1234"}, source=source).status == 429
    assert request(pki, port, "GET", "/api/client/v2/conferences/x/info", headers=basic("alice", "other"),
                   source=source).status == 429  # no more binds from a banned address
    assert request(pki, port, "GET", API, headers=good, source="127.0.0.22").status == 200


def test_slapd_down_gives_503_never_a_pass_and_cached_successes_hold(site):
    app, pki, port, slapd = site
    assert request(pki, port, "GET", API, headers=basic("alice", "alice-pw")).status == 200
    slapd.stop()
    try:
        assert request(pki, port, "GET", API, headers=basic("alice", "alice-pw")).status == 200  # cached
        for user, password in (("bob", "bob-pw"), ("alice", "wrong-now"), ("carol", "carol-pw")):
            reply = request(pki, port, "GET", API, headers=basic(user, password), source="127.0.0.31")
            assert reply.status == 503 and b"authentication service unavailable" in reply.body, user
        assert "ldap: " + slapd.url + " unavailable, answering 503" in app.log()
    finally:
        slapd.start()
    assert request(pki, port, "GET", API, headers=basic("bob", "bob-pw")).status == 403


def test_search_mode_with_a_service_account_after_a_reload(site):
    app, pki, port, slapd = site
    app.proxy_table["ldap"] = {"url": slapd.url, "bind_dn": "cn=reader,dc=example,dc=com",
                               "bind_password": "reader-pw", "search_base": PEOPLE, "search_filter": "(uid={user})",
                               "group": GROUP, "timeout": 2}
    app.write()
    app.reload()
    assert request(pki, port, "GET", API, headers=basic("alice", "alice-pw")).status == 200
    assert request(pki, port, "GET", API, headers=basic("alice", "nope"), source="127.0.0.41").status == 401
    assert request(pki, port, "GET", API, headers=basic("nobody", "x"), source="127.0.0.42").status == 401
    assert request(pki, port, "GET", API, headers=basic("bob", "bob-pw")).status == 403


def test_a_directory_that_accepts_but_never_answers_gives_503_after_the_timeout(site):
    app, pki, port, _ = site
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nothing ever answers
        app.proxy_table["ldap"] = {"url": f"ldap://127.0.0.1:{silent.getsockname()[1]}",
                                   "user_dn_template": f"uid={{user}},{PEOPLE}", "timeout": 1}
        app.write()
        app.reload()
        started = time.monotonic()
        reply = request(pki, port, "GET", API, headers=basic("alice", "alice-pw"))
        assert reply.status == 503 and 0.9 < time.monotonic() - started < 5


def test_ldaps_and_starttls_verify_the_directory_certificate(tmp_path):
    """The same checks over TLS: ldaps:// and StartTLS, the directory's certificate verified against `ca_file`
    (a directory whose certificate is not trusted is unavailable: 503)."""
    pki = Pki(tmp_path)
    cert, key = pki.issue(("localhost",))
    tls = (pki.root, pki.write("slapd-cert.pem", cert, pki.intermediate_pem), pki.write("slapd-key.pem", key))
    slapd = Slapd(tmp_path / "slapd", tls=tls)
    nodes = Nodes(tmp_path, names=("a",))
    other = Pki(tmp_path / "other") if (tmp_path / "other").mkdir() is None else None
    ldap = {"url": slapd.tls_url, "ca_file": str(pki.root), "user_dn_template": f"uid={{user}},{PEOPLE}",
            "group": GROUP, "timeout": 2}
    app = ApplianceProcess(tmp_path, revproxy={**self_signed_site(tmp_path), "certificate": str(pki.bundle),
                                               "nodes": nodes.addresses(), "ldap": ldap}).start()
    port = app.https_port
    try:
        assert request(pki, port, "GET", API, headers=basic("alice", "alice-pw")).status == 200
        assert request(pki, port, "GET", API, headers=basic("alice", "wrong")).status == 401
        assert request(pki, port, "GET", API, headers=basic("bob", "bob-pw")).status == 403
        for changed in ({"url": f"ldap://localhost:{slapd.port}", "starttls": True},  # StartTLS on the plain port
                        {"ca_file": str(other.root)}):  # a CA that did not sign the directory's certificate
            app.proxy_table["ldap"] = {**ldap, **changed}
            app.write()
            app.reload()
            expected = 200 if "starttls" in changed else 503
            assert request(pki, port, "GET", API, headers=basic("alice", "alice-pw")).status == expected, changed
        assert "certificate verify failed" in app.log()  # the 503 was the untrusted certificate
    finally:
        app.stop()
        nodes.close()
        slapd.stop()
