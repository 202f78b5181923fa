"""Start-up errors an operator can act on, through the real `twistd relay`, `twistd revproxy` and `twistd rpturn`:
one line `FILE: [table] key: problem` on stderr, a non-zero exit, no traceback and no usage text."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.processes import ROOT, run_until_exit, write_tables

KEY = "0x" + "ab" * 16  # a well-formed userdb key


def write_config(tmp_path: Path, relay: dict | None = None, revproxy: dict | None = None,
                 drop: tuple[str, ...] = ()) -> tuple[Path, dict]:
    """A config good for both services on free loopback ports, with `relay` / `revproxy` keys changed."""
    ports = {"relay": free_port(), "https": free_port(), "http": free_port()}
    tables = {
        "relay": {"listen": [f"127.0.0.1:{ports['relay']}"], "realm": "rpturn.test", "min_port": 45000,
                  "max_port": 45099, "relay_ip": "127.0.0.1", "allowed_peers": ["127.0.0.0/8"],
                  **(relay or {})},
        "revproxy": {"https": f"127.0.0.1:{ports['https']}", "http": f"127.0.0.1:{ports['http']}",
                     "nodes": ["127.0.0.2:443"], "self_signed": str(tmp_path / "selfsigned.pem"),
                     **(revproxy or {})},
        # its own port: the default 127.0.0.1:9641 may be taken by another appliance on this machine
        "management": {"listen": f"127.0.0.1:{free_port()}"},
    }
    tables = {name: {k: v for k, v in table.items() if f"{name}.{k}" not in drop} for name, table in tables.items()}
    path = write_tables(tmp_path / "rpturn.toml", {**tables, "relay.users": {"alice": "secret"}})
    return path, ports


def run(plugin: str, path: Path) -> subprocess.CompletedProcess:
    return run_until_exit(plugin, path, cwd=ROOT)


def assert_one_line(result: subprocess.CompletedProcess, expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in result.stderr, output
    assert "Traceback" not in output and "Usage:" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output


def userdb(tmp_path: Path, text: str) -> str:
    path = tmp_path / "turnuserdb.conf"
    path.write_text(text)
    return str(path)


RELAY_CASES = {
    "bad value": (lambda t: {"min_port": "abc"}, "[relay] min_port: must be an integer"),
    "bad listen": (lambda t: {"listen": ["127.0.0.1:99999"]}, "[relay] listen: '127.0.0.1:99999': the port"),
    "unknown key": (lambda t: {"relaip": "127.0.0.1"}, "[relay] relaip: unknown key"),
    "missing userdb": (lambda t: {"userdb": str(t / "nope.conf")},
                       "[relay] userdb: {t}/nope.conf: cannot read: No such file or directory"),
    "malformed userdb": (lambda t: {"userdb": userdb(t, f"# users\nalice:{KEY}\nbob\n")},
                         "[relay] userdb: {t}/turnuserdb.conf:3: expected user:0x<32 hex digits> or user:password"),
    "short 0x key": (lambda t: {"userdb": userdb(t, f"alice:{KEY}\nbob:0x1234abcd\n")},
                     "[relay] userdb: {t}/turnuserdb.conf:2: user 'bob': a key must be 0x and 32 hex digits, got 8"),
    "relay_ip not ours": (lambda t: {"relay_ip": "192.0.2.77"},
                          "[relay] relay_ip: cannot bind 192.0.2.77: it is not an address of this host"),
}

PROXY_CASES = {
    "bad value": (lambda t: {"balance": "random"}, "[revproxy] balance: expected one of round_robin, client_ip"),
    "bad https": (lambda t: {"https": "localhost:443"}, "[revproxy] https: expected \"address:port\""),
    "unreadable certificate": (lambda t: {"certificate": str(t / "missing.pem")},
                               "[revproxy] certificate: {t}/missing.pem"),
    "bad workers": (lambda t: {"workers": 0}, "[revproxy] workers: expected 1-256 or \"auto\", got 0"),
}


# (table, its cases, the plugins that read that table): each bad value under each plugin, named table-plugin-case
START_ERRORS = [pytest.param(table, plugin, change, expected, id=f"{table}-{plugin}-{case}")
                for table, cases, plugins in (("relay", RELAY_CASES, ("relay", "rpturn")),
                                              ("revproxy", PROXY_CASES, ("revproxy", "rpturn")))
                for case, (change, expected) in sorted(cases.items()) for plugin in plugins]


@pytest.mark.parametrize(("table", "plugin", "change", "expected"), START_ERRORS)
def test_start_error_is_one_line(tmp_path, table, plugin, change, expected):
    path, _ = write_config(tmp_path, **{table: change(tmp_path)})
    assert_one_line(run(plugin, path), f"{path}: " + expected.format(t=tmp_path))


@pytest.mark.parametrize("plugin", ["relay", "revproxy", "rpturn"])
def test_missing_or_invalid_file_is_one_line(tmp_path, plugin):
    missing = tmp_path / "missing.toml"
    assert_one_line(run(plugin, missing), f"{missing}: [")
    assert "cannot read the file: No such file or directory" in run(plugin, missing).stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[relay\n")
    assert_one_line(run(plugin, broken), "not valid TOML")


@pytest.mark.parametrize(("plugin", "kind"), [("relay", socket.SOCK_DGRAM), ("relay", socket.SOCK_STREAM),
                                              ("rpturn", socket.SOCK_STREAM)])
def test_relay_port_in_use_names_the_service_and_address(tmp_path, plugin, kind):
    path, ports = write_config(tmp_path)
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", ports["relay"]))
        if kind == socket.SOCK_STREAM:
            holder.listen(1)
        proto = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
        assert_one_line(run(plugin, path), f"{path}: [relay] listen: the relay cannot listen on "
                                           f"127.0.0.1:{ports['relay']} ({proto}): already in use")


@pytest.mark.parametrize(("plugin", "key"), [("revproxy", "https"), ("rpturn", "https"), ("rpturn", "http")])
def test_proxy_port_in_use_names_the_service_and_address(tmp_path, plugin, key):
    path, ports = write_config(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[key]))
        holder.listen(1)
        assert_one_line(run(plugin, path), f"{path}: [revproxy] {key}: the revproxy cannot listen on "
                                           f"127.0.0.1:{ports[key]} (TCP): already in use")


@pytest.mark.parametrize("plugin", ["relay", "rpturn"])
def test_relay_port_in_use_with_workers_is_one_line_too(tmp_path, plugin):
    path, ports = write_config(tmp_path, relay={"workers": 2})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", ports["relay"]))
        assert_one_line(run(plugin, path), f"[relay] listen: the relay cannot listen on 127.0.0.1:{ports['relay']}")
