"""The console scripts rpturn-stunclient, rpturn-peer and rpturn-uclient, run as subprocesses against coturn's
turnserver on loopback (tests/coturn.py). The same tools run against our relay in the relay's own tests."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.coturn import Coturn, free_port, running_coturn

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
STUNCLIENT = str(BIN / "rpturn-stunclient")
PEER = str(BIN / "rpturn-peer")
UCLIENT = str(BIN / "rpturn-uclient")


@pytest.fixture(scope="module")
def coturn() -> Iterator[Coturn]:
    with running_coturn() as server:
        yield server


class Peer:
    def __init__(self) -> None:
        self.process = subprocess.Popen([PEER, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        self.address = line.split()[-1]
        self.port = int(self.address.rsplit(":", 1)[1])

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=5)
        return out


@pytest.fixture(scope="module")
def peer() -> Iterator[Peer]:
    echo = Peer()
    yield echo
    echo.stop()


def run(*command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def uclient(coturn: Coturn, peer: Peer, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(UCLIENT, coturn.address, "-u", coturn.username, "-w", password or coturn.password,
               "--peer", peer.address, *args)


def uclient_json(coturn: Coturn, peer: Peer, *args: str) -> dict:
    done = uclient(coturn, peer, "--json", "--quiet", *args)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


# -- rpturn-stunclient ----------------------------------------------------------------------------------------------


def test_stunclient_udp_prints_mapped_address_software_and_rtt(coturn: Coturn) -> None:
    done = run(STUNCLIENT, coturn.address)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^mapped address: 127\.0\.0\.1:\d+$", done.stdout, re.M)
    assert "software: Coturn" in done.stdout
    assert re.search(r"^rtt: \d+\.\d+ ms$", done.stdout, re.M)


def test_stunclient_tcp_prints_mapped_address(coturn: Coturn) -> None:
    done = run(STUNCLIENT, "--tcp", coturn.address)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^mapped address: 127\.0\.0\.1:\d+$", done.stdout, re.M)


def test_stunclient_to_closed_udp_port_fails_fast_with_refusal() -> None:
    started = time.monotonic()
    done = run(STUNCLIENT, f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "connection refused" in done.stderr
    assert time.monotonic() - started < 5


def test_stunclient_to_closed_tcp_port_fails_with_refusal() -> None:
    done = run(STUNCLIENT, "--tcp", f"127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "refused" in done.stderr


def test_stunclient_to_silent_port_times_out_with_clear_message() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        started = time.monotonic()
        done = run(STUNCLIENT, "--timeout", "1", f"127.0.0.1:{silent.getsockname()[1]}")
        elapsed = time.monotonic() - started
        assert silent.recv(100)  # the request (and its retransmissions) did arrive
    assert done.returncode == 1
    assert "no response" in done.stderr and "timeout" in done.stderr
    assert elapsed < 4


def test_stunclient_rejects_bad_address_as_usage_error() -> None:
    done = run(STUNCLIENT, "127.0.0.1:99999")
    assert done.returncode == 2 and "port out of range" in done.stderr


# -- rpturn-peer ------------------------------------------------------------------------------------------------


def test_peer_echoes_counts_and_stops_on_sigterm() -> None:
    echo = Peer()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for i in range(3):
            sock.sendto(b"ping %d" % i, ("127.0.0.1", echo.port))
            assert sock.recvfrom(100) == (b"ping %d" % i, ("127.0.0.1", echo.port))
    out = echo.stop()
    assert echo.process.returncode == 0
    assert f"{echo.address} echoed 3 datagrams (18 bytes)" in out


def test_peer_stops_on_sigint() -> None:
    echo = Peer()
    echo.process.send_signal(signal.SIGINT)
    out, _ = echo.process.communicate(timeout=5)
    assert echo.process.returncode == 0 and "echoed 0 datagrams" in out


# -- rpturn-uclient -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [[], ["--tcp"]], ids=["udp", "tcp"])
@pytest.mark.parametrize("mode", ["--channels", "--indications"])
def test_uclient_relays_every_message_through_coturn(coturn: Coturn, peer: Peer, mode: str,
                                                     transport: list[str]) -> None:
    result = uclient_json(coturn, peer, mode, *transport, "--clients", "4", "--messages", "50", "--rate", "2000")
    assert result["allocations"] == 4
    assert result["sent"] == result["received"] == 4 * 50
    assert result["loss_percent"] == 0.0 and result["errors"] == {}
    assert result["mode"] == mode.removeprefix("--")
    assert result["transport"] == ("tcp" if transport else "udp")
    assert 0 < result["rtt_ms"]["p50"] <= result["rtt_ms"]["p99"] <= result["rtt_ms"]["max"]


def test_uclient_spreads_clients_over_processes(coturn: Coturn, peer: Peer) -> None:
    result = uclient_json(coturn, peer, "--clients", "6", "--processes", "2", "--messages", "30", "--rate", "3000")
    assert result["processes"] == 2 and result["allocations"] == 6
    assert result["sent"] == result["received"] == 6 * 30


def test_uclient_duration_sends_at_the_rate_for_that_long(coturn: Coturn, peer: Peer) -> None:
    result = uclient_json(coturn, peer, "--rate", "500", "--duration", "0.5")
    assert 200 <= result["sent"] <= 260 and result["received"] == result["sent"]


def test_uclient_report_shows_figures_and_progress(coturn: Coturn, peer: Peer) -> None:
    done = uclient(coturn, peer, "--clients", "2", "--messages", "20")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^allocations: 2 of 2 in \d+\.\d+ s", done.stdout, re.M)
    assert "sent: 40  received: 40  loss: 0.000 %" in done.stdout
    assert re.search(r"^rtt: p50 \d+\.\d+ ms  p99 \d+\.\d+ ms  max \d+\.\d+ ms$", done.stdout, re.M)
    assert re.search(r"^achieved: \d+ pps", done.stdout, re.M)
    assert "errors: none" in done.stdout
    assert re.search(r"sent 40 received 40", done.stderr)  # the progress line


def test_uclient_wrong_password_reports_401_and_fails(coturn: Coturn, peer: Peer) -> None:
    done = uclient(coturn, peer, "--json", "--quiet", "--clients", "2", password="wrong")
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["errors"] == {"401": 2} and result["allocations"] == 0


def test_uclient_allocate_only_makes_and_times_allocations(coturn: Coturn, peer: Peer) -> None:
    result = uclient_json(coturn, peer, "--clients", "20", "--messages", "0")
    assert result["allocations"] == 20 and result["allocation_seconds"] > 0 and result["sent"] == 0


def test_uclient_max_pps_finds_a_positive_rate(coturn: Coturn, peer: Peer) -> None:
    result = uclient_json(coturn, peer, "--max-pps", "--clients", "2", "--start-rate", "2000",
                          "--step-duration", "0.2", "--refine", "1", "--max-time", "5")
    assert result["max_pps"] >= 2000
    assert result["steps"] and result["steps"][0]["rate"] == 2000
    assert result["sent"] == sum(step["sent"] for step in result["steps"])


def test_uclient_rejects_too_small_payload() -> None:
    done = run(UCLIENT, "127.0.0.1:3478", "-u", "u", "-w", "p", "--size", "4")
    assert done.returncode == 2 and "--size" in done.stderr


def test_uclient_raw_echo_measures_the_client_alone(peer: Peer) -> None:
    done = run(UCLIENT, peer.address, "-u", "-", "-w", "-", "--raw-echo", "--json", "--quiet", "--clients", "2",
               "--messages", "100", "--rate", "5000")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["sent"] == result["received"] == 200 and result["allocations"] == 0


DRIVER_SCRIPT = """
import sys
from twisted.internet import defer, task
from relay.client import Credentials
from relay.tools.twisted_client import connect

@defer.inlineCallbacks
def main(reactor, host, port, peer_host, peer_port, tcp):
    client = yield connect(reactor, host, int(port), tcp=tcp == "tcp", credentials=Credentials("u", "p"))
    allocation = yield client.allocate()
    peer = (peer_host, int(peer_port))
    yield client.channel_bind(peer)
    echoed = defer.Deferred()
    client.on_data = lambda event: echoed.callback(event) if not echoed.called else None
    client.send(peer, b"through the relay")
    event = yield echoed
    yield client.refresh(0)
    client.close()
    print(allocation.relayed[0], event.channel, event.payload.decode())

task.react(main, sys.argv[1:])
"""


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_twisted_driver_allocates_binds_and_relays(coturn: Coturn, peer: Peer, transport: str) -> None:
    host, port = coturn.address.rsplit(":", 1)
    peer_host, peer_port = peer.address.rsplit(":", 1)
    done = run(sys.executable, "-c", DRIVER_SCRIPT, host, port, peer_host, peer_port, transport, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=2) == ["127.0.0.1", str(0x4000), "through the relay\n"]
