"""The console scripts rpturn-stunclient, rpturn-peer and rpturn-uclient, run as subprocesses against coturn's
turnserver on loopback (tests/coturn.py). The same tools run against our relay in the relay's own tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.harness.common import udp_socket_drops
from relay.harness.load import RunResult
from relay.harness.uclient import CLIENT_DROPS, HELD, LOST, SHORT, Step, parse_args, search_max_pps
from tests.support.coturn import Coturn, free_port, running_coturn

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
    assert done.returncode == 2 and "the port must be 0-65535" in done.stderr


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


def test_uclient_max_pps_reports_the_best_held_steps_figures(coturn: Coturn, peer: Peer) -> None:
    result = uclient_json(coturn, peer, "--max-pps", "--clients", "2", "--start-rate", "2000",
                          "--step-duration", "0.2", "--refine", "1", "--max-time", "5")
    assert result["max_pps"] >= 0.95 * 2000
    assert result["steps"] and result["steps"][0]["rate"] == 2000
    held = [step for step in result["steps"] if step["verdict"] in (HELD, SHORT)]
    best = max(held, key=lambda step: step["offered_pps"])
    assert result["max_pps"] == result["offered_pps"] == best["offered_pps"]
    assert result["best_rate"] == best["rate"]
    assert (result["sent"], result["received"], result["achieved_pps"]) == \
        (best["sent"], best["received"], best["achieved_pps"])
    assert result["offered_pps"] <= 1.05 * best["rate"]  # a rate the search asked for, not a sum over steps
    assert result["search_sent"] == sum(step["sent"] for step in result["steps"])
    assert result["search_received"] == sum(step["received"] for step in result["steps"])
    assert all(step["client_drops"] is not None for step in result["steps"])  # UDP on Linux: counted


# -- the --max-pps search, on scripted steps: a "server" that holds up to a rate, with bursts of loss ------------


def scripted_server(limit: float, bursts: dict[int, float] | None = None, client_ceiling: float = 1e9,
                    client_drops: bool = False):
    """A step runner: loses 5 % above `limit`; step numbers in `bursts` lose that share whatever the rate; the
    client offers at most `client_ceiling`. With `client_drops` the loss is in the client's own sockets."""
    bursts = bursts or {}

    def run_step(rate: float, number: int) -> RunResult:
        offered = min(rate, client_ceiling)
        sent = int(offered)  # one second's worth
        loss = bursts.get(number, 0.05 if offered > limit else 0.0)
        received = sent - int(sent * loss)
        return RunResult(sent=sent, received=received, send_seconds=1.0, seconds=1.0,
                         client_drops=sent - received if client_drops else 0)

    return run_step


def search_args(*extra: str):
    return parse_args(["127.0.0.1", "-u", "u", "-w", "p", "--max-pps", "--start-rate", "1000",
                       "--step-factor", "2", "--refine", "3", *extra])


def test_max_pps_search_retries_a_step_lost_to_a_burst_and_goes_on() -> None:
    search = search_max_pps(scripted_server(50_000, bursts={2: 0.3}), search_args())
    second, retry = search.steps[1], search.steps[2]
    assert (second.rate, second.attempt, second.verdict(0.1)) == (2000, 1, LOST)
    assert (retry.rate, retry.attempt, retry.verdict(0.1)) == (2000, 2, HELD)
    assert 40_000 <= search.max_pps <= 50_000 and not search.client_limited


def test_max_pps_search_without_retries_ends_low_on_a_burst() -> None:
    search = search_max_pps(scripted_server(50_000, bursts={2: 0.3}), search_args("--retries", "0"))
    assert search.max_pps < 2000
    assert all(step.attempt == 1 for step in search.steps)


def test_max_pps_search_counts_a_step_lost_twice_as_lost() -> None:
    search = search_max_pps(scripted_server(50_000, bursts={2: 0.3, 3: 0.3}), search_args())
    assert [(s.rate, s.attempt) for s in search.steps[:3]] == [(1000, 1), (2000, 1), (2000, 2)]
    assert search.max_pps < 2000


def test_max_pps_search_credits_what_a_short_client_offered_and_says_client_limited() -> None:
    search = search_max_pps(scripted_server(1e9, client_ceiling=30_000), search_args())
    assert search.max_pps == 30_000 and search.client_limited
    assert search.best is not None and search.best.verdict(0.1) == SHORT


def test_max_pps_search_server_loss_is_not_client_limited_even_when_short() -> None:
    search = search_max_pps(scripted_server(20_000, client_ceiling=30_000), search_args())
    assert 16_000 <= search.max_pps <= 20_000 and not search.client_limited


def test_max_pps_search_loss_in_the_clients_own_sockets_is_client_limited() -> None:
    search = search_max_pps(scripted_server(20_000, client_drops=True), search_args())
    assert search.client_limited
    assert CLIENT_DROPS in {step.verdict(0.1) for step in search.steps}


def test_step_verdicts() -> None:
    def step(sent: int, received: int, seconds: float = 1.0, drops: int | None = 0) -> Step:
        return Step(1000, RunResult(sent=sent, received=received, send_seconds=seconds, client_drops=drops))

    assert step(1000, 1000).verdict(0.1) == HELD
    assert step(1000, 999).verdict(0.1) == HELD  # 0.1 % is allowed
    assert step(900, 900).verdict(0.1) == SHORT  # 900 pps offered of 1000
    assert step(1000, 900).verdict(0.1) == LOST
    assert step(1000, 900, drops=100).verdict(0.1) == CLIENT_DROPS
    assert step(1000, 900, drops=None).verdict(0.1) == LOST
    assert step(0, 0).verdict(0.1) == LOST


def test_udp_socket_drops_counts_datagrams_a_full_socket_dropped() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(("127.0.0.1", 0))
        inode = os.fstat(receiver.fileno()).st_ino
        assert udp_socket_drops({inode}) == 0
        for _ in range(200):
            sender.sendto(bytes(100), receiver.getsockname())
        dropped = udp_socket_drops({inode})
        queued = 0
        receiver.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while receiver.recv(200):
                queued += 1
    assert dropped is not None and dropped > 0 and queued + dropped == 200
    assert udp_socket_drops({inode + 10**9}) == 0  # not ours: not counted


def test_uclient_rejects_negative_retries() -> None:
    done = run(UCLIENT, "127.0.0.1:3478", "-u", "u", "-w", "p", "--max-pps", "--retries", "-1")
    assert done.returncode == 2 and "--retries" in done.stderr


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
from relay.harness.twisted_client import connect

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
