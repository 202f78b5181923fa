"""The real `twistd relay` process on loopback, driven by real third-party clients: coturn's turnutils tools and aioice.

Figures (messages, loss, rtt) are printed with -s so CI logs carry them; the assertions are on exact counts.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time

import pytest

from tests.support.coturn import turn_peer_fixture, turnutils_uclient
from tests.support.relay_process import EchoPeer, RelayProcess, relay_fixture

relay = relay_fixture("relay")


turn_peer = turn_peer_fixture()  # coturn's turnutils_peer: a UDP echo peer on loopback


def run_uclient(relay: RelayProcess, peer_port: int, *flags: str, clients: int = 3, messages: int = 50,
                size: int = 200) -> dict:
    """turnutils_uclient through our relay (as alice) to the echo peer; its summary as numbers, round trips
    included."""
    figures = turnutils_uclient(relay.port, peer_port, "-u", "alice", "-w", "secret", *flags, clients=clients,
                                messages=messages, size=size)
    assert figures["rtt_ms"] is not None, figures["output"][-2000:]
    print(f"turnutils_uclient {' '.join(flags) or '(channels, UDP)'}: "
          f"{ {k: v for k, v in figures.items() if k != 'output'} }")
    return figures


def test_turnutils_stunclient_learns_its_reflexive_address(relay):
    result = subprocess.run(["turnutils_stunclient", "-p", str(relay.port), "127.0.0.1"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert re.search(r"UDP reflexive addr: 127\.0\.0\.1:\d+", result.stdout + result.stderr)


def test_turnutils_uclient_channels_over_udp_lose_nothing(relay, turn_peer):
    # uclient pairs its clients as RTP/RTCP allocations (EVEN-PORT with the R bit, then RESERVATION-TOKEN).
    figures = run_uclient(relay, turn_peer, clients=4, messages=100)
    assert figures["sent"] == 400
    assert figures["received"] == figures["sent"]
    assert figures["lost"] == 0
    assert figures["errors"] == []


def test_turnutils_uclient_send_indications_over_udp_lose_nothing(relay, turn_peer):
    figures = run_uclient(relay, turn_peer, "-s", clients=4, messages=100)
    assert figures["sent"] == 400
    assert figures["received"] == figures["sent"]
    assert figures["lost"] == 0


def test_turnutils_uclient_over_tcp_control_connection_loses_nothing(relay, turn_peer):
    figures = run_uclient(relay, turn_peer, "-t", clients=4, messages=100)
    assert figures["sent"] == 400
    assert figures["received"] == figures["sent"]
    assert figures["lost"] == 0


def test_turnutils_uclient_tcp_with_send_indications_and_padding(relay, turn_peer):
    figures = run_uclient(relay, turn_peer, "-t", "-s", "-D", clients=2, messages=50, size=101)
    assert figures["sent"] == 100
    assert figures["received"] == figures["sent"]
    assert figures["lost"] == 0


def test_turnutils_uclient_with_dont_fragment(relay, turn_peer):
    figures = run_uclient(relay, turn_peer, "-g", clients=2, messages=20)
    assert figures["received"] == figures["sent"] == 40
    assert figures["errors"] == []


def test_turnutils_uclient_wrong_password_allocates_nothing(relay, turn_peer):
    result = subprocess.run(
        ["turnutils_uclient", "-p", str(relay.port), "-u", "alice", "-w", "wrong", "-e", "127.0.0.1",
         "-r", str(turn_peer), "-m", "1", "-n", "5", "127.0.0.1"],
        capture_output=True, text=True, timeout=60,
    )
    assert "Cannot complete Allocation" in result.stdout + result.stderr


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_aioice_turn_client_relays_datagrams_to_an_echo_peer(relay, transport):
    from aioice.turn import create_turn_endpoint

    peer = EchoPeer()

    class Collect(asyncio.DatagramProtocol):
        def __init__(self):
            self.received: list[bytes] = []
            self.arrived = asyncio.Event()

        def datagram_received(self, data, addr):
            assert addr == peer.address
            self.received.append(data)
            if len(self.received) == 100:
                self.arrived.set()

    async def exchange():
        endpoint, collector = await create_turn_endpoint(
            Collect, server_addr=relay.address, username="alice", password="secret", transport=transport)
        try:
            relayed = endpoint.get_extra_info("sockname")
            assert relayed[0] == "127.0.0.1" and 40000 <= relayed[1] <= 44999
            started = time.monotonic()
            for i in range(100):
                endpoint.sendto(b"%05d" % i + b"x" * 500, peer.address)
                await asyncio.sleep(0.002)
            await asyncio.wait_for(collector.arrived.wait(), 10)
            return collector.received, time.monotonic() - started
        finally:
            endpoint.close()
            await asyncio.sleep(0.1)

    try:
        received, elapsed = asyncio.run(exchange())
    finally:
        peer.close()
    print(f"aioice over {transport}: 100 sent, {len(received)} received in {elapsed * 1000:.0f} ms")
    assert sorted(received) == [b"%05d" % i + b"x" * 500 for i in range(100)]
