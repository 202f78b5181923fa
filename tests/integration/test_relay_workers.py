"""`workers = 2`: two relay processes share the port; allocations relay, quotas hold, a dead worker is replaced."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from relay import stun
from relay.stun import Attr, Method
from tests.support.relay_process import EchoPeer, RawTurnClient, RelayProcess, error_code


def worker_pids(relay: RelayProcess) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(relay.process.pid)], capture_output=True, text=True).stdout
    return sorted(int(pid) for pid in out.split())


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def relay(tmp_path):
    process = RelayProcess(tmp_path, workers=2, user_quota=30).start()
    assert wait_for(lambda: len(worker_pids(process)) == 2)
    # Both workers must have bound the port before the test spreads clients over them.
    assert wait_for(lambda: process.log().count("relay ready") == 2)
    yield process
    assert process.stop() == 0
    assert wait_for(lambda: not worker_pids(process), 5), "workers outlived the supervisor"


def bind_channel(turn: RawTurnClient, peer: tuple[str, int], channel: int = 0x4000) -> None:
    response = turn.request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, channel), (Attr.XOR_PEER_ADDRESS, peer)])
    assert error_code(response) is None, response


def echo_round(turn: RawTurnClient, count: int, channel: int = 0x4000) -> int:
    """Send `count` ChannelData messages to the echo peer; how many came back."""
    for i in range(count):
        turn.send_bytes(stun.encode_channel_data(channel, b"%06d" % i + b"m" * 160))
    received = set()
    turn.sock.settimeout(2)
    try:
        while len(received) < count:
            frame = turn.recv_frame()
            if stun.is_channel_data(frame):
                received.add(stun.parse_channel_data(frame)[1][:6])
    except TimeoutError:
        pass
    return len(received)


def test_two_workers_share_the_port_and_relay_without_loss(relay):
    peer = EchoPeer()
    clients = [RawTurnClient(relay.address) for _ in range(24)]
    try:
        for turn in clients:
            assert error_code(turn.allocate()) is None
            bind_channel(turn, peer.address)
        received = sum(echo_round(turn, 50) for turn in clients)
        assert received == 24 * 50
        # The kernel spread the clients over both workers.
        creators = {line.split("worker ")[1].split(":")[0] for line in relay.log().splitlines()
                    if "TURN allocation created" in line}
        assert creators == {"0", "1"}
    finally:
        peer.close()
        for turn in clients:
            turn.close()


def test_user_quota_holds_across_workers(relay):
    clients = [RawTurnClient(relay.address) for _ in range(32)]
    try:
        codes = [error_code(turn.allocate()) for turn in clients]
        assert codes.count(None) == 30
        assert codes.count(486) == 2
    finally:
        for turn in clients:
            turn.close()


def test_killed_worker_is_replaced_and_the_other_keeps_its_allocations(relay):
    peer = EchoPeer()
    clients = [RawTurnClient(relay.address) for _ in range(12)]
    try:
        for turn in clients:
            assert error_code(turn.allocate()) is None
            bind_channel(turn, peer.address)
        before = worker_pids(relay)
        os.kill(before[0], signal.SIGKILL)
        assert wait_for(lambda: len(worker_pids(relay)) == 2 and worker_pids(relay) != before)
        assert re.search(r"relay worker \d ended .*; starting a new one", relay.log())

        survivors = [turn for turn in clients
                     if error_code(turn.request(Method.REFRESH, [(Attr.LIFETIME, 600)])) is None]
        assert 0 < len(survivors) < len(clients)
        assert sum(echo_round(turn, 20) for turn in survivors) == 20 * len(survivors)
        # Clients of the dead worker can allocate again (on whichever worker now owns their 5-tuple).
        orphans = [turn for turn in clients if turn not in survivors]
        assert all(error_code(turn.allocate()) is None for turn in orphans)
    finally:
        peer.close()
        for turn in clients:
            turn.close()


def test_sighup_reaches_every_worker(relay):
    relay.signal(signal.SIGHUP)
    assert wait_for(lambda: relay.log().count("configuration reloaded") == 2)
