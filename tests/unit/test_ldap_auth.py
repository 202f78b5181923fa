"""The LDAP layer's pure parts: Basic credentials, RFC 4515/4514 escaping, protected prefixes, the success cache and
the `[revproxy.ldap]` table."""

from __future__ import annotations

import base64

import pytest

from revproxy.ldap_auth import (
    SuccessCache,
    basic_credentials,
    escape_dn,
    escape_filter,
    protected,
    settings_from_table,
)


def header(text: str) -> bytes:
    return b"Basic " + base64.b64encode(text.encode())


def test_basic_credentials():
    assert basic_credentials(header("alice:pa:ss")) == ("alice", "pa:ss")
    assert basic_credentials(b"basic " + base64.b64encode(b"bob:x")) == ("bob", "x")
    for bad in (None, b"", b"Bearer abc", b"Basic !!!", header("alice"), header("alice:"), header(":pw"),
                b"Basic " + base64.b64encode(b"\xff:x")):
        assert basic_credentials(bad) is None


def test_escaping_keeps_user_input_out_of_the_filter_and_the_dn():
    assert escape_filter("alice*)(uid=*") == "alice\\2a\\29\\28uid=\\2a"
    assert escape_filter("a\\b\0") == "a\\5cb\\00"
    assert escape_dn("Smith, John+x") == "Smith\\, John\\+x"
    assert escape_dn("#lead ") == "\\#lead\\ "


def test_protected_prefixes():
    s = settings_from_table({"url": "ldap://127.0.0.1", "user_dn_template": "uid={user},dc=x"})
    assert protected(s, b"/api/client/v2/conferences/x/info?a=b")
    assert not protected(s, b"/webapp/index.html") and not protected(s, b"/api/client/v1/")


def test_cache_expires_and_is_per_password():
    now = [0.0]
    cache = SuccessCache(lambda: now[0])
    cache.add("alice", "pw", 10)
    assert cache.hit("alice", "pw") and not cache.hit("alice", "other") and not cache.hit("bob", "pw")
    now[0] = 10.0
    assert not cache.hit("alice", "pw")
    cache.add("alice", "pw", 0)  # ttl 0: no caching
    assert not cache.hit("alice", "pw")


@pytest.mark.parametrize("table, problem", [
    ({"user_dn_template": "uid={user}"}, "url: missing"),
    ({"url": "ldap://x"}, "user_dn_template: set it"),
    ({"url": "ldap://x", "user_dn_template": "uid=alice"}, "must contain {user}"),
    ({"url": "ldap://x", "search_base": "dc=x", "search_filter": "(uid=alice)"}, "search_filter: must contain"),
    ({"url": "ldap://x", "user_dn_template": "{user}", "paths": "/api/"}, "paths: expected a list"),
    ({"url": "ldap://x", "user_dn_template": "{user}", "timeout": -1}, "timeout: expected seconds"),
    ({"url": "ldap://x", "user_dn_template": "{user}", "colour": 1}, "colour: unknown key"),
])
def test_bad_tables(table, problem):
    with pytest.raises(ValueError, match=problem.replace("{", r"\{").replace("}", r"\}")):
        settings_from_table(table)
