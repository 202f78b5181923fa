"""`rpturn check`, the real console script: the sample config passes; each bad value, certificate, userdb line,
port in use and foreign relay_ip gives its one `FILE: [table] key: problem` line and exit 1; garbage files never
give a traceback; ports held by the running appliance are warnings. Binding only: nothing is sent anywhere."""

from __future__ import annotations

import contextlib
import datetime
import io
import re
import socket
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from appliance import cli
from tests.support.net import free_port, wait_for_port
from tests.support.processes import ROOT, RPTURN, stop_process, toml_value, twistd_command
from tests.support.revproxy_process import Pki

SAMPLE = ROOT / "conf" / "rpturn.toml"
DAY = datetime.timedelta(days=1)
ONE_YEAR = (datetime.timedelta(hours=-1), 365 * DAY)


def sample_text(ports: dict[str, int]) -> str:
    """The sample config as shipped, listening on free loopback ports instead of the public ones."""
    text = SAMPLE.read_text()
    text = text.replace('"0.0.0.0:3478"', f'"127.0.0.1:{ports["relay"]}"')
    text = text.replace('https = "0.0.0.0:443"', f'https = "127.0.0.1:{ports["https"]}"')
    text = text.replace('http = "0.0.0.0:80"', f'http = "127.0.0.1:{ports["http"]}"')
    management = f'listen = "127.0.0.1:{ports["management"]}"'
    if re.search(r"^\[management\]", text, re.M):
        text = re.sub(r'^listen = "127\.0\.0\.1:9641"', management, text, flags=re.M)
    else:
        text += f"\n[management]\n{management}\n"
    return text


def dump(document: dict[str, Any]) -> str:
    out = []
    for name, table in document.items():
        out.append(f"[{name}]")
        out += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    return "\n".join(out) + "\n"


class Setup:
    """A temp directory with the sample config on free ports; `write(**changes)` makes variants of it."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.ports = {name: free_port() for name in ("relay", "https", "http", "management")}
        self.sample = where / "rpturn.toml"
        self.sample.write_text(sample_text(self.ports))
        self.document = tomllib.loads(self.sample.read_text())

    def write(self, name: str = "c.toml", drop: tuple[tuple[str, str], ...] = (), **tables: dict[str, Any]) -> Path:
        document = {table: dict(values) for table, values in self.document.items()}
        for table, values in tables.items():
            document.setdefault(table, {}).update(values)
        for table, key in drop:
            document[table].pop(key, None)
        path = self.where / name
        path.write_text(dump(document))
        return path


def check_here(path: Path) -> subprocess.CompletedProcess:
    """The same command in this process (no interpreter start-up): for the many one-value cases."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["check", "--config", str(path), "--pidfile", str(path.parent / "none.pid")])
    return subprocess.CompletedProcess([], status, out.getvalue(), "")


def check(path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    if "--pidfile" not in args:
        args = ("--pidfile", str(path.parent / "none.pid"), *args)
    r = subprocess.run([RPTURN, "check", "--config", str(path), *args],
                       capture_output=True, text=True, timeout=30, cwd=str(cwd or path.parent))
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


def test_sample_config_passes(setup):
    r = check(setup.sample)
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[-1].startswith(f"{setup.sample}: OK")
    assert all(line.startswith("warning: ") for line in r.stdout.splitlines()[:-1]), r.stdout


@pytest.mark.parametrize(("tables", "line"), [
    ({"relay": {"listen": ["127.0.0.1:99999"]}}, "[relay] listen: '127.0.0.1:99999'"),
    ({"relay": {"realm": ""}}, "[relay] realm: must be a non-empty string"),
    ({"relay": {"min_port": 60000, "max_port": 50000}}, "[relay] min_port: 60000 is above max_port 50000"),
    ({"relay": {"colour": "red"}}, "[relay] colour: unknown key"),
    ({"relay": {"nonce_secret": "abc"}}, "[relay] nonce_secret: must be at least 32 hex digits"),
    ({"relay": {"workers": 0}}, "[relay] workers: "),
    ({"revproxy": {"nodes": []}}, "[revproxy] nodes: expected a non-empty list"),
    ({"revproxy": {"balance": "random"}}, "[revproxy] balance: expected one of round_robin, client_ip"),
    ({"revproxy": {"connect_timeout": 0}}, "[revproxy] connect_timeout: expected a positive number"),
    ({"revproxy": {"https": "localhost:443"}}, "[revproxy] https: "),
    ({"management": {"listen": "nope"}}, "[management] listen: "),
    ({"management": {"allow": 5}}, "[management] allow: expected a list of CIDRs"),
])
def test_each_bad_value_is_one_line_naming_file_table_and_key(setup, tables, line):
    path = setup.write(**tables)
    r = check_here(path)
    assert r.returncode == 1
    assert f"{path}: {line}" in r.stdout, r.stdout


def test_every_problem_is_reported_not_just_the_first(setup):
    path = setup.write(relay={"realm": "", "max_port": 70000, "colour": 1},
                       revproxy={"balance": "random", "workers": 0}, management={"allow": 5})
    r = check(path)
    assert r.returncode == 1
    keys = re.findall(rf"^{re.escape(str(path))}: (\[\w+\] \w+):", r.stdout, re.M)
    assert keys == ["[relay] realm", "[relay] max_port", "[relay] colour", "[revproxy] balance",
                    "[revproxy] workers", "[management] allow"], r.stdout
    assert r.stdout.splitlines()[-1] == f"{path}: 6 errors, 1 warning"


@pytest.mark.parametrize(("content", "words"), [
    (b"[relay\nlisten = ", "not valid TOML"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary junk", "not valid TOML"),
    (b"relay = 5\nrevproxy = \"x\"\n", "[relay] -: must be a table, got 5"),
    (b"[relay]\nlisten = 3478\nusers = \"pexip\"\n[revproxy]\nnodes = \"10.0.0.1\"\nhttps = 443\n", "[relay] listen"),
])
def test_garbage_files_give_lines_not_tracebacks(tmp_path, content, words):
    path = tmp_path / "garbage.toml"
    path.write_bytes(content)
    r = check(path)
    assert r.returncode == 1 and words in r.stdout, r.stdout
    assert r.stderr == ""


def test_missing_file_and_directory(tmp_path):
    r = check(tmp_path / "nope.toml")
    assert r.returncode == 1 and f"{tmp_path / 'nope.toml'}: cannot read the file: No such file" in r.stdout
    r = check(tmp_path)
    assert r.returncode == 1 and f"{tmp_path}: is a directory, not a config file" in r.stdout


# -- certificates ----------------------------------------------------------------------------------------------


def bundle_case(pki: Pki, case: str) -> tuple[bytes, ...]:
    cert, key = pki.issue(("meet.example.com",), valid=ONE_YEAR)
    if case == "good":
        return cert, key, pki.intermediate_pem
    if case == "order":
        return key, cert, pki.intermediate_pem
    if case == "mismatch":
        return cert, pki.other_key_pem, pki.intermediate_pem
    if case == "encrypted":
        return pki.leaf_pem, pki.encrypted_key_pem, pki.intermediate_pem
    if case == "expired":
        return (*pki.issue(("meet.example.com",), valid=(-30 * DAY, -DAY)), pki.intermediate_pem)
    if case == "expiring":
        return (*pki.issue(("meet.example.com",), valid=(-30 * DAY, 10 * DAY)), pki.intermediate_pem)
    if case == "hostname":
        return (*pki.issue(("other.example.com",), valid=ONE_YEAR), pki.intermediate_pem)
    if case == "intermediate":
        return cert, key
    raise ValueError(case)


@pytest.mark.parametrize(("case", "words"), [
    ("order", "wrong order (PRIVATE KEY, CERTIFICATE, CERTIFICATE)"),
    ("mismatch", "the private key does not match the server certificate"),
    ("encrypted", "the private key is encrypted"),
    ("expired", "the server certificate expired on"),
    ("hostname", "hostname 'meet.example.com' is not among the certificate's names (other.example.com)"),
    ("intermediate", "the issuer of the server certificate (CN=rpturn test intermediate) is not in the bundle"),
])
def test_bad_certificate_bundle_is_an_error(setup, pki, case, words):
    bundle = pki.write(f"{case}.pem", *bundle_case(pki, case))
    path = setup.write(revproxy={"certificate": str(bundle), "hostname": "meet.example.com"})
    r = check_here(path)
    assert r.returncode == 1, r.stdout
    assert f"{path}: [revproxy] certificate: {bundle}: {words}" in r.stdout


def test_good_and_expiring_certificates_pass(setup, pki):
    for case, expected in (("good", ""), ("expiring", "warning: ")):
        bundle = pki.write(f"{case}.pem", *bundle_case(pki, case))
        path = setup.write(revproxy={"certificate": str(bundle), "hostname": "meet.example.com"})
        r = check(path)
        assert r.returncode == 0, r.stdout
        lines = [x for x in r.stdout.splitlines() if "[revproxy] certificate" in x]
        assert lines == ([f"warning: {path}: [revproxy] certificate: {bundle}: the server certificate expires in 9 "
                          "days" + lines[0].split("expires in 9 days")[1]] if expected else []), r.stdout


def test_unreadable_certificate(setup, tmp_path):
    path = setup.write(revproxy={"certificate": str(tmp_path / "nope.pem")})
    r = check(path)
    assert r.returncode == 1 and f"[revproxy] certificate: {tmp_path / 'nope.pem'}: file not found" in r.stdout


# -- userdb ----------------------------------------------------------------------------------------------------


def test_every_bad_userdb_line_is_listed_with_its_number(setup, tmp_path):
    userdb = tmp_path / "turnuserdb.conf"
    userdb.write_text("# users\nalice:0x0123456789abcdef0123456789abcdef\nbob:0x1234\ncarol\nalice:secret\n")
    path = setup.write(relay={"userdb": str(userdb)})
    r = check(path)
    assert r.returncode == 1
    assert re.findall(r"\[relay\] userdb: .*", r.stdout) == [
        f"[relay] userdb: {userdb}:3: user 'bob': a key must be 0x and 32 hex digits, got 4",
        f"[relay] userdb: {userdb}:4: expected user:0x<32 hex digits> or user:password",
        f"[relay] userdb: {userdb}:5: user 'alice' already on line 2"], r.stdout


def test_missing_userdb(setup, tmp_path):
    path = setup.write(relay={"userdb": str(tmp_path / "nope")})
    r = check(path)
    assert r.returncode == 1 and f"[relay] userdb: {tmp_path / 'nope'}: cannot read" in r.stdout


# -- binding ---------------------------------------------------------------------------------------------------


def test_port_in_use_by_another_process_is_an_error(setup):
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", setup.ports["https"]))
        tcp.listen()
        udp.bind(("127.0.0.1", setup.ports["relay"]))
        r = check(setup.sample)
    assert r.returncode == 1
    assert (f"{setup.sample}: [revproxy] https: 127.0.0.1:{setup.ports['https']} (TCP) is already in use by another "
            "process") in r.stdout
    assert (f"{setup.sample}: [relay] listen: 127.0.0.1:{setup.ports['relay']} (UDP) is already in use by another "
            "process") in r.stdout
    assert f"[relay] listen: 127.0.0.1:{setup.ports['relay']} (TCP)" not in r.stdout


def test_relay_ip_not_on_this_host_is_an_error(setup):
    path = setup.write(relay={"relay_ip": "192.0.2.1"})  # TEST-NET-1: only bound (which fails), never sent to
    r = check(path)
    assert r.returncode == 1
    assert f"{path}: [relay] relay_ip: cannot bind 192.0.2.1: it is not an address of this host" in r.stdout
    assert check(setup.write(relay={"relay_ip": "127.0.0.1"})).returncode == 0


def test_listen_address_not_on_this_host_is_an_error(setup):
    path = setup.write(revproxy={"https": "192.0.2.1:8443"})
    r = check(path)
    assert r.returncode == 1
    assert f"{path}: [revproxy] https: cannot listen on 192.0.2.1:8443 (TCP): not an address of this host" in r.stdout


def test_ports_held_by_the_running_appliance_are_warnings(setup, tmp_path):
    """Next to the real `twistd rpturn`: its own ports are warnings (exit 0); a port someone else holds is not."""
    pidfile = tmp_path / "rpturn.pid"
    log = (tmp_path / "twistd.log").open("wb")
    proc = subprocess.Popen(twistd_command("rpturn", setup.sample, pidfile=pidfile), cwd=str(tmp_path), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for_port("127.0.0.1", setup.ports["management"], 20, proc)
        wait_for_port("127.0.0.1", setup.ports["https"], 20, proc)
        r = check(setup.sample, "--pidfile", str(pidfile))
        assert r.returncode == 0, r.stdout
        for table, key, port, kind in (("relay", "listen", "relay", "UDP"), ("relay", "listen", "relay", "TCP"),
                                       ("revproxy", "https", "https", "TCP"), ("revproxy", "http", "http", "TCP"),
                                       ("management", "listen", "management", "TCP")):
            assert (f"warning: {setup.sample}: [{table}] {key}: 127.0.0.1:{setup.ports[port]} ({kind}) is in use by "
                    f"the running rpturn (pid {proc.pid}): fine for a reload") in r.stdout, r.stdout
        # A new https port that another process holds is an error, even while rpturn runs.
        with socket.socket() as other:
            other.bind(("127.0.0.1", 0))
            other.listen()
            taken = other.getsockname()[1]
            path = setup.write(revproxy={"https": f"127.0.0.1:{taken}"})
            r = check(path, "--pidfile", str(pidfile))
        assert r.returncode == 1
        assert f"{path}: [revproxy] https: 127.0.0.1:{taken} (TCP) is already in use by another process" in r.stdout
    finally:
        stop_process(proc, 30)
        log.close()


def test_service_option_checks_one_service_and_no_bind_skips_binding(setup):
    path = setup.write(revproxy={"balance": "random"})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", setup.ports["relay"]))
        assert check(path, "--service", "relay").returncode == 1  # the relay's port in use
        r = check(path, "--service", "relay", "--no-bind")
    assert r.returncode == 0 and "[revproxy]" not in r.stdout, r.stdout
    assert check(path, "--service", "revproxy", "--no-bind").returncode == 1
