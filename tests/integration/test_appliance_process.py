"""The real `twistd rpturn`: one SIGHUP reloads both services without dropping anything, every worker of both
services gets it, a killed worker of either service is replaced within 2 s, SIGTERM stops the whole tree."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from relay import stun
from relay.stun import Attr, Method
from tests.support.appliance_process import ApplianceProcess
from tests.support.net import free_port
from tests.support.relay_process import EchoPeer, RawTurnClient, error_code, udp_binding
from tests.support.revproxy_process import Nodes, Pki, read_event, request


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    where = tmp_path_factory.mktemp("appliance")
    nodes = Nodes(where)
    yield Pki(where), nodes
    nodes.close()


@pytest.fixture
def appliance(shared, tmp_path):
    pki, nodes = shared
    made: list[ApplianceProcess] = []

    def make(relay: dict | None = None, revproxy: dict | None = None, env: dict | None = None) -> ApplianceProcess:
        process = ApplianceProcess(tmp_path, relay or {}, {"certificate": str(pki.bundle),
                                                           "nodes": nodes.addresses("a"), **(revproxy or {})},
                                   users={"alice": "secret"}, env=env)
        made.append(process.start())
        return process

    yield make
    for process in made:
        assert process.stop() == 0, process.log()[-3000:]
        assert "Traceback" not in process.log()


def open_events(pki: Pki, port: int):
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    stream = pki.client_context().wrap_socket(raw, server_hostname="localhost")
    stream.sendall(b"GET /api/client/v2/conferences/x/events?interval=0.1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return stream


class PingPong(threading.Thread):
    """ChannelData through an allocation to an echo peer, one at a time, until stopped: every ping must return."""

    def __init__(self, turn: RawTurnClient, channel: int = 0x4000) -> None:
        super().__init__(daemon=True)
        self.turn, self.channel = turn, channel
        self.sent = self.received = 0
        self.running = True

    def run(self) -> None:
        self.turn.sock.settimeout(1.0)
        while self.running:
            payload = b"%08d" % self.sent
            self.turn.send_bytes(stun.encode_channel_data(self.channel, payload))
            self.sent += 1
            try:
                while True:
                    frame = self.turn.recv_frame()
                    if stun.is_channel_data(frame) and stun.parse_channel_data(frame)[1] == payload:
                        self.received += 1
                        break
            except TimeoutError:
                pass
            time.sleep(0.002)

    def stop(self) -> None:
        self.running = False
        self.join(5)


def allocate_with_channel(port: int, peer: EchoPeer, username: str = "alice", password: str = "secret"):
    turn = RawTurnClient(("127.0.0.1", port), username=username, password=password)
    assert error_code(turn.allocate()) is None
    response = turn.request(Method.CHANNEL_BIND, [(Attr.CHANNEL_NUMBER, 0x4000),
                                                  (Attr.XOR_PEER_ADDRESS, peer.address)])
    assert error_code(response) is None
    return turn


def permission_code(turn: RawTurnClient, peer: tuple[str, int]) -> int | None:
    return error_code(turn.request(Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, peer)]))


def test_sighup_reloads_both_services_and_drops_no_allocation_request_or_stream(shared, appliance, tmp_path):
    """Nodes, certificate, users and peer policy change on one SIGHUP; an /events stream, an allocation relaying
    ChannelData and everything else open carry on."""
    pki, nodes = shared
    process = appliance()
    assert {request(pki, process.https_port).json()["node"] for _ in range(3)} == {"a"}
    stream = open_events(pki, process.https_port)
    read_event(stream)
    peer = EchoPeer()
    turn = allocate_with_channel(process.relay_port, peer)
    assert permission_code(turn, ("127.0.0.9", 5000)) is None  # allowed_peers 127.0.0.0/8
    pings = PingPong(turn)
    pings.start()
    (tmp_path / "new-pki").mkdir()
    new_pki = Pki(tmp_path / "new-pki")
    try:
        time.sleep(0.3)
        process.proxy_table["nodes"] = nodes.addresses("b", "c")
        process.proxy_table["certificate"] = str(new_pki.bundle)
        process.users["bob"] = "hunter2"
        process.relay_table["allowed_peers"] = ["127.0.0.1/32"]
        process.write()
        process.signal(signal.SIGHUP)
        assert process.wait_log(lambda log: "] reloaded " in log and "configuration reloaded" in log), process.log()
        time.sleep(0.3)
    finally:
        pings.stop()
    assert pings.sent > 50 and pings.received == pings.sent
    # The proxy uses the new nodes and certificate (a client trusting only the new root connects) ...
    assert {request(new_pki, process.https_port).json()["node"] for _ in range(6)} == {"b", "c"}
    # ... the relay knows the new user and the new peer policy, and the old allocation still works ...
    bob = RawTurnClient(("127.0.0.1", process.relay_port), username="bob", password="hunter2")
    assert error_code(bob.allocate()) is None
    assert permission_code(turn, ("127.0.0.9", 5000)) == 403
    assert error_code(turn.request(Method.REFRESH, [(Attr.LIFETIME, 600)])) is None
    # ... and the stream opened before the reload still flows, on the old certificate.
    for _ in range(3):
        assert b"event: tick" in read_event(stream)
    stream.close()
    for closing in (turn, bob, peer):
        closing.close()


def test_reload_that_changes_listen_port_range_or_relay_ip_says_it_needs_a_restart(appliance):
    process = appliance()
    process.relay_table["max_port"] = 45498
    process.relay_table["relay_ip"] = "127.0.0.2"
    process.write()
    process.signal(signal.SIGHUP)
    assert process.wait_log(lambda log: "needs a restart" in log)
    line = next(line for line in process.log().splitlines() if "needs a restart" in line)
    assert "max_port" in line and "relay_ip" in line


def wait_replaced(process: ApplianceProcess, slot: tuple[str, int], old_pid: int, ready: str, timeout: float):
    """Seconds until a new worker in `slot` has logged `ready`, or None."""
    started = time.monotonic()
    before = process.log().count(ready)
    while time.monotonic() - started < timeout:
        if process.workers().get(slot, old_pid) != old_pid and process.log().count(ready) > before:
            return time.monotonic() - started
        time.sleep(0.01)
    return None


def test_workers_of_both_services_get_sighup_and_a_killed_one_is_replaced_within_2_s(shared, appliance):
    pki, _nodes = shared
    process = appliance(relay={"workers": 2}, revproxy={"workers": 2})
    assert process.wait_log(lambda log: log.count("relay ready") == 2 and log.count("revproxy listening") == 2)
    workers = process.workers()
    assert sorted(workers) == [("relay", 0), ("relay", 1), ("revproxy", 0), ("revproxy", 1)]

    process.signal(signal.SIGHUP)
    assert process.wait_log(lambda log: log.count("configuration reloaded") == 2 and log.count("] reloaded ") == 2)

    peer = EchoPeer()
    survivors = [allocate_with_channel(process.relay_port, peer) for _ in range(6)]
    try:
        for slot, ready in ((("relay", 1), "relay ready"), (("revproxy", 0), "revproxy listening")):
            os.kill(workers[slot], signal.SIGKILL)
            took = wait_replaced(process, slot, workers[slot], ready, timeout=5)
            assert took is not None and took < 2.0, (slot, took, process.log()[-3000:])
            print(f"{slot[0]} worker replaced in {took:.2f} s")
            assert f"{slot[0]} worker {slot[1]} ended" in process.log()
        # The proxy answers on its shared port throughout, and the relay's other worker kept its allocations.
        assert all(request(pki, process.https_port).status == 200 for _ in range(10))
        kept = [turn for turn in survivors if error_code(turn.request(Method.REFRESH, [(Attr.LIFETIME, 600)])) is None]
        assert kept
    finally:
        peer.close()
        for turn in survivors:
            turn.close()
    pids = set(process.workers().values())
    assert process.stop() == 0
    for pid in pids:  # SIGTERM stopped the whole tree
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_systemd_hears_ready_once_listening_reloading_around_a_reload_and_stopping(appliance, tmp_path):
    notify_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(10)
        process = appliance(relay={"workers": 2}, env={"NOTIFY_SOCKET": notify_path})
        assert notify.recv(1024) == b"READY=1"
        # READY=1 waits for the workers, not only for the listeners: both relay workers had started serving (each
        # said so before the supervisor's line), so the relay answers at once and the proxy accepts.
        log = process.log()
        assert log.count("worker ready: serving") == 2 and "every worker is serving" in log
        assert log.index("every worker is serving") > max(log.index("relay worker 0: worker ready"),
                                                            log.index("relay worker 1: worker ready"))
        assert udp_binding("127.0.0.1", process.relay_port, timeout=0.5) is not None
        socket.create_connection(("127.0.0.1", process.https_port), timeout=2).close()
        process.signal(signal.SIGHUP)
        assert notify.recv(1024).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert notify.recv(1024) == b"READY=1"
        assert process.stop() == 0
        assert notify.recv(1024) == b"STOPPING=1"
        notify.settimeout(0.5)
        with pytest.raises(TimeoutError):  # the workers never speak to systemd themselves
            notify.recv(1024)


def test_sigterm_lets_the_proxy_workers_drain_a_request_in_flight(shared, appliance):
    pki, _nodes = shared
    process = appliance(relay={"workers": 2}, revproxy={"workers": 2, "drain_timeout": 5})
    assert process.wait_log(lambda log: log.count("relay ready") == 2 and log.count("revproxy listening") == 2)
    result = {}
    slow = threading.Thread(target=lambda: result.setdefault(
        "reply", request(pki, process.https_port, "GET", "/slow?delay=1.5", timeout=10)))
    slow.start()
    time.sleep(0.5)
    process.signal(signal.SIGTERM)
    assert process.wait_log(lambda log: "draining" in log)
    slow.join(10)
    assert result["reply"].status == 200
    assert process.process.wait(15) in (0, -signal.SIGTERM)
    assert "workers stopped" in process.log()


def test_a_worker_replaced_after_a_reload_keeps_the_listeners_and_ports_it_was_started_with(shared, appliance):
    pki, _nodes = shared
    process = appliance(relay={"workers": 2}, revproxy={"workers": 2})
    assert process.wait_log(lambda log: log.count("relay ready") == 2 and log.count("revproxy listening") == 2)
    process.relay_table["max_port"] = 45400
    process.proxy_table["http"] = f"127.0.0.1:{free_port()}"  # no socket was bound for it
    process.write()
    process.signal(signal.SIGHUP)
    assert process.wait_log(lambda log: log.count("needs a restart") == 4)
    workers = process.workers()
    for slot, ready in ((("relay", 1), "relay ready"), (("revproxy", 1), "revproxy listening")):
        os.kill(workers[slot], signal.SIGKILL)
        assert wait_replaced(process, slot, workers[slot], ready, timeout=5) is not None, process.log()[-3000:]
    assert process.log().count("ports 45300-45499") == 2  # the slice of the range it started with
    assert all(request(pki, process.https_port).status == 200 for _ in range(6))
    assert "Traceback" not in process.log()
