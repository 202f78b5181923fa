"""The appliance's shared config pieces: the one error line, the one host:port syntax, the `workers` key."""

from __future__ import annotations

import os

import pytest

from appliance.config import ConfigError, checked, format_hostport, load_table, parse_hostport, parse_workers


def test_config_error_is_exactly_file_table_key_problem():
    error = ConfigError("conf/x.toml", "relay", "min_port", "must be an integer")
    assert str(error) == "conf/x.toml: [relay] min_port: must be an integer"
    assert (error.path, error.table, error.key, error.problem) == ("conf/x.toml", "relay", "min_port",
                                                                    "must be an integer")


@pytest.mark.parametrize(("text", "default", "expected"), [
    ("1.2.3.4:3478", None, ("1.2.3.4", 3478)),
    ("[::1]:5000", None, ("::1", 5000)),
    ("[2001:DB8::1]:443", None, ("2001:db8::1", 443)),  # canonical form
    ("10.0.0.1", 3478, ("10.0.0.1", 3478)),
    ("[::]", 3478, ("::", 3478)),
    ("::", 3478, ("::", 3478)),  # a bare IPv6 address takes the default port
    ("node.example.com:8443", None, ("node.example.com", 8443)),
    ("node.example.com", 443, ("node.example.com", 443)),
    (" 127.0.0.1:80 ", None, ("127.0.0.1", 80)),
])
def test_hostport_parses(text, default, expected):
    assert parse_hostport(text, default) == expected


@pytest.mark.parametrize(("text", "default", "numeric", "words"), [
    ("1.2.3.4", None, False, "has no port"),
    ("1.2.3.4:0", None, False, "1-65535"),
    ("1.2.3.4:65536", None, False, "1-65535"),
    ("1.2.3.4:http", None, False, "1-65535"),
    ("::1:443", None, False, "brackets"),
    ("[::1", None, False, "[IPv6 address]:port"),
    ("[::1]443", None, False, "[IPv6 address]:port"),
    ("[1.2.3.4]:443", None, False, "only an IPv6 address"),
    (":443", None, False, "no address"),
    ("node.example.com:443", None, True, "is not an IP address"),
    ("bad host:443", None, False, "not a host name"),
    (443, None, False, "string"),
])
def test_bad_hostport_says_why(text, default, numeric, words):
    with pytest.raises(ValueError) as raised:
        parse_hostport(text, default, numeric=numeric)
    assert words in str(raised.value)


@pytest.mark.parametrize(("host", "port"), [("1.2.3.4", 1), ("::", 3478), ("2001:db8::7", 443), ("node.test", 80)])
def test_format_is_what_parse_reads_back(host, port):
    assert parse_hostport(format_hostport(host, port)) == (host, port)


def test_port_zero_only_where_asked_for():
    assert parse_hostport("127.0.0.1:0", port_zero=True) == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match="1-65535"):
        parse_hostport("127.0.0.1:0")


def test_format_brackets_ipv6():
    assert format_hostport("::1", 443) == "[::1]:443"
    assert format_hostport("10.0.0.1", 443) == "10.0.0.1:443"


@pytest.mark.parametrize("value", [0, 257, -1, True, "4", 1.5, None])
def test_bad_workers_values(value):
    with pytest.raises(ValueError, match="1-256"):
        parse_workers(value)


def test_workers_auto_is_one_per_core_and_numbers_pass():
    assert parse_workers("auto") == (os.cpu_count() or 1)
    assert parse_workers(1) == 1 and parse_workers(256) == 256


def test_checked_names_file_table_and_key():
    with pytest.raises(ConfigError) as raised:
        checked("a.toml", "revproxy", "workers", parse_workers, 0)
    assert str(raised.value).startswith("a.toml: [revproxy] workers: expected 1-256")


def test_load_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[relay]\nrealm = "x"\n')
    assert load_table(str(path), "relay") == {"realm": "x"}
    assert load_table(str(path), "revproxy") == {}
    with pytest.raises(ConfigError, match=r"c\.toml: \[revproxy\] -: no \[revproxy\] table"):
        load_table(str(path), "revproxy", required=True)


def test_unreadable_or_invalid_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.toml: \[relay\] -: cannot read the file: No such file"):
        load_table(str(tmp_path / "missing.toml"), "relay")
    broken = tmp_path / "broken.toml"
    broken.write_text("[relay\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: \[relay\] -: not valid TOML"):
        load_table(str(broken), "relay")
    scalar = tmp_path / "scalar.toml"
    scalar.write_text("relay = 5\n")
    with pytest.raises(ConfigError, match=r"\[relay\] -: must be a table"):
        load_table(str(scalar), "relay")
