"""`workers = 2`: two relay processes share the port; allocations relay, quotas hold, a dead worker is replaced."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from relay import stun
from relay.stun import Attr, Method
from tests.support.relay_process import EchoPeer, RawTurnClient, RelayProcess, error_code, turn_clients


def child_pids(relay: RelayProcess) -> list[int]:
    """Every process the supervisor runs: its workers and the spare waiting to replace one."""
    out = subprocess.run(["pgrep", "-P", str(relay.process.pid)], capture_output=True, text=True).stdout
    return sorted(int(pid) for pid in out.split())


def worker_pids(relay: RelayProcess) -> list[int]:
    """The live worker in each slot, from the supervisor's "relay worker N started (pid P)" lines."""
    slots = {m[1]: int(m[2]) for m in re.finditer(r"relay worker (\d+) started \(pid (\d+)", relay.log())}
    return sorted(pid for pid in slots.values() if pid in child_pids(relay))


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited child of a dead parent may wait a while to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


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
    try:
        assert wait_for(lambda: len(worker_pids(process)) == 2)
        # Both workers must have bound the port before the test spreads clients over them.
        assert wait_for(lambda: process.log().count("relay ready") == 2, 20)
        children = child_pids(process)
        assert len(children) == 3  # and the spare
    except AssertionError:
        process.stop()
        raise
    yield process
    assert process.stop() == 0
    assert wait_for(lambda: not any(running(pid) for pid in children), 5), "workers outlived the supervisor"


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


@contextlib.contextmanager
def bound_clients(relay: RelayProcess, count: int) -> Iterator[list[RawTurnClient]]:
    """`count` clients, each with an allocation and channel 0x4000 to one echo peer; all closed at the end."""
    with EchoPeer() as peer, turn_clients(relay.address, count) as clients:
        for turn in clients:
            assert error_code(turn.allocate()) is None
            bind_channel(turn, peer.address)
        yield clients


def test_two_workers_share_the_port_and_relay_without_loss(relay):
    with bound_clients(relay, 24) as clients:
        received = sum(echo_round(turn, 50) for turn in clients)
        assert received == 24 * 50
        # The kernel spread the clients over both workers.
        creators = {line.split("worker ")[1].split(":")[0] for line in relay.log().splitlines()
                    if "TURN allocation created" in line}
        assert creators == {"0", "1"}


def test_user_quota_holds_across_workers(relay):
    with turn_clients(relay.address, 32) as clients:
        codes = [error_code(turn.allocate()) for turn in clients]
        assert codes.count(None) == 30
        assert codes.count(486) == 2


def test_killed_worker_is_replaced_and_the_other_keeps_its_allocations(relay):
    with bound_clients(relay, 12) as clients:
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


def test_sighup_reaches_every_worker(relay):
    relay.signal(signal.SIGHUP)
    assert wait_for(lambda: relay.log().count("configuration reloaded") == 2)
