"""Our harness tools against our own relay (the same tools run against coturn in test_harness_tools.py)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.relay_process import RelayProcess, relay_fixture

BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)


relay = relay_fixture("harness")


@pytest.fixture(scope="module")
def peer():
    process = subprocess.Popen([str(BIN / "rpturn-peer"), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                               text=True)
    address = process.stdout.readline().split()[-1]
    yield address
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=5)


def uclient(relay: RelayProcess, peer: str, *args: str) -> dict:
    done = run(str(BIN / "rpturn-uclient"), f"127.0.0.1:{relay.port}", "-u", "alice", "-w", "secret",
               "--peer", peer, "--json", "--quiet", *args)
    assert done.returncode == 0, done.stderr + done.stdout
    result = json.loads(done.stdout)
    print(f"rpturn-uclient {' '.join(args)}: sent {result['sent']} received {result['received']} "
          f"loss {result['loss_percent']}% rtt p50 {result['rtt_ms']['p50']} ms p99 {result['rtt_ms']['p99']} ms")
    return result


@pytest.mark.parametrize("transport", [[], ["--tcp"]])
def test_stunclient_gets_its_mapped_address_from_our_relay(relay, transport):
    done = run(str(BIN / "rpturn-stunclient"), f"127.0.0.1:{relay.port}", *transport)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^mapped address: 127\.0\.0\.1:\d+$", done.stdout, re.M)
    assert "software: rpturn" in done.stdout


@pytest.mark.parametrize("mode", ["--channels", "--indications"])
@pytest.mark.parametrize("transport", [[], ["--tcp"]])
def test_uclient_relays_everything_through_our_relay(relay, peer, mode, transport):
    result = uclient(relay, peer, mode, *transport, "--clients", "8", "--messages", "200", "--rate", "4000")
    assert result["allocations"] == 8
    assert result["sent"] == result["received"] == 8 * 200
    assert result["loss_percent"] == 0.0 and result["errors"] == {}


def test_uclient_wrong_password_against_our_relay_reports_401(relay, peer):
    done = run(str(BIN / "rpturn-uclient"), f"127.0.0.1:{relay.port}", "-u", "alice", "-w", "nope",
               "--peer", peer, "--json", "--quiet", "--clients", "2")
    assert done.returncode == 1
    assert json.loads(done.stdout)["errors"] == {"401": 2}


def test_uclient_max_pps_against_our_relay(relay, peer):
    result = uclient(relay, peer, "--max-pps", "--clients", "4", "--start-rate", "2000", "--step-duration", "0.3",
                     "--refine", "1", "--max-time", "8")
    assert result["max_pps"] >= 2000
