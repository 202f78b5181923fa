"""The real `twistd relay` under an unauthenticated UDP flood from hundreds of loopback sources, each held by its
per-source bucket to 10 requests a second: with the global budget the flood is shed before any parsing, and a
browser-like client and a Conferencing Node opening a couple of hundred allocations from one address are answered
every time. The flood is of `costly_binding()`s (a few hundred µs of parsing each), so a flood CI's two cores can
send (800 sources at 30 a second; 10 a second each = 8,000 costly requests a second past the buckets) overwhelms
a relay that parses what its buckets let through; the test's budget is small (50 a second) and its burst 10 for
the same reason: each new flooding source gets a few requests parsed before it is shed, so the flood's first
second may still put the relay behind, and the test waits (bounded) for it to catch up."""

from __future__ import annotations

import time

from appliance.limits import raise_open_files_limit
from tests.support.flood import Flood, costly_binding, one_binding, one_challenge
from tests.support.relay_process import RawTurnClient, RelayProcess, error_code

SOURCES = 800
FLOOD_PPS = 24_000  # 30 a second from each source: three times its rate, and little enough to leave CI a core
FLOOD_SECONDS = 9.0
NODE_ALLOCATIONS = 200
LIMITS = {"unauthenticated_rate": 10, "unauthenticated_burst": 10, "unauthenticated_budget": 50}
PACE = 0.25  # between the browser's requests: a quiet client at this burst sends one every 0.2 s or less often


def node_allocations(target: tuple[str, int], source: str, count: int) -> int:
    """A Conferencing Node: `count` allocations from one address, each from its own port (a new 5-tuple whose
    first request is unauthenticated), one try each. How many were made."""
    made = 0
    clients = []
    try:
        for _ in range(count):
            client = RawTurnClient(target, timeout=1.0, source=source)
            clients.append(client)
            try:
                if error_code(client.allocate()) is None:
                    made += 1
            except TimeoutError:
                pass
    finally:
        for client in clients:
            client.close()
    return made


def caught_up(target: tuple[str, int], deadline: float) -> bool:
    """Wait (until `deadline`, monotonic) for the relay to answer a Binding from a source of its own again: it has
    worked off the parses the flood's first second cost it."""
    while time.monotonic() < deadline:
        if one_binding(target, "127.0.0.8", timeout=0.5):
            return True
    return False


def test_a_browser_and_a_conferencing_node_are_answered_through_a_costly_flood(tmp_path):
    raise_open_files_limit()  # a socket per flood source and per node allocation
    relay = RelayProcess(tmp_path, **LIMITS).start()
    try:
        with Flood(relay.address, sources=SOURCES, seconds=FLOOD_SECONDS, request=costly_binding(),
                   pps=FLOOD_PPS) as flood:
            time.sleep(1.0)
            assert caught_up(relay.address, flood.started + 5.0), "the relay never caught up with the flood"
            browser = []
            for _ in range(4):
                browser.append(one_binding(relay.address, "127.0.0.9"))
                time.sleep(PACE)
                browser.append(one_challenge(relay.address, "127.0.0.9"))
                time.sleep(PACE)
            made = node_allocations(relay.address, "127.0.0.10", NODE_ALLOCATIONS)
            during = time.monotonic() - flood.started < FLOOD_SECONDS
        assert during, "the clients finished after the flood: nothing was shown (a machine too slow for the test)"
        assert flood.rate > 0.8 * FLOOD_PPS, f"the flood offered only {flood.rate:.0f} packets a second"
        assert browser == [True] * 8, f"the browser's Bindings and 401s answered: {browser}"
        assert made == NODE_ALLOCATIONS, f"the node made {made} of {NODE_ALLOCATIONS} allocations"
        assert relay.process.poll() is None
    finally:
        relay.stop()
