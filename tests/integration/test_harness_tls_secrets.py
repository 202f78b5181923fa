"""rpturn-stunclient --tls and rpturn-uclient --tls/--secret against coturn's turnserver with TLS and the TURN REST
API (`--use-auth-secret --static-auth-secret`): the harness speaks the transports and credentials that browsers
behind strict firewalls use. The same flags run against our relay in its TLS tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.coturn import Coturn, running_coturn
from tests.support.net import free_port
from tests.support.revproxy_process import Pki

BIN = Path(sys.executable).parent
STUNCLIENT = str(BIN / "rpturn-stunclient")
PEER = str(BIN / "rpturn-peer")
UCLIENT = str(BIN / "rpturn-uclient")
SECRET = "coturn-shared-secret-0123456789"


@pytest.fixture(scope="module")
def coturn(pki: Pki) -> Iterator[Coturn]:
    with running_coturn(tls_bundle=pki.bundle, auth_secret=SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def peer() -> Iterator[str]:
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen([PEER, "--listen", address], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and "listening on" in process.stdout.readline()
    yield address
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=5)


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_stunclient_tls_verifies_the_server_against_the_ca(coturn: Coturn, pki: Pki) -> None:
    done = run(STUNCLIENT, f"127.0.0.1:{coturn.tls_port}", "--tls", "--ca", str(pki.root), "--server-name",
               "localhost")
    assert done.returncode == 0, done.stderr
    assert "mapped address: 127.0.0.1:" in done.stdout and "software: Coturn" in done.stdout


def test_stunclient_tls_refuses_a_certificate_for_another_name(coturn: Coturn, pki: Pki) -> None:
    done = run(STUNCLIENT, f"127.0.0.1:{coturn.tls_port}", "--tls", "--ca", str(pki.root), "--server-name",
               "not-the-server.example", "--timeout", "3")
    assert done.returncode == 1
    assert "mapped address" not in done.stdout


@pytest.mark.parametrize("mode", ["--channels", "--indications"])
def test_uclient_tls_with_rest_credentials_relays_every_message(coturn: Coturn, peer: str, mode: str) -> None:
    done = run(UCLIENT, f"127.0.0.1:{coturn.tls_port}", "--tls", "-u", "alice", "--secret", SECRET, "--peer", peer,
               "--clients", "3", "--messages", "100", mode, "--json", "--quiet")
    assert done.returncode == 0, done.stderr + done.stdout
    result = json.loads(done.stdout)
    assert result["transport"] == "tls"
    assert result["allocations"] == 3
    assert result["sent"] == 300 and result["received"] == 300, result


def test_uclient_with_a_wrong_secret_gets_401(coturn: Coturn, peer: str) -> None:
    done = run(UCLIENT, f"127.0.0.1:{coturn.tls_port}", "--tls", "-u", "alice", "--secret", "not-" + SECRET,
               "--peer", peer, "--json", "--quiet")
    assert done.returncode == 1
    assert json.loads(done.stdout)["errors"] == {"401": 1}


def test_uclient_needs_a_password_or_a_secret() -> None:
    done = run(UCLIENT, "127.0.0.1:3478", "-u", "alice")
    assert done.returncode == 2 and "--password" in done.stderr
