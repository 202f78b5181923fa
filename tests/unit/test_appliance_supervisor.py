"""The supervisor's bookkeeping and the SIGHUP dispatcher, on a fake clock and fake processes (no real workers:
those are in tests/integration/test_appliance_process.py)."""

from __future__ import annotations

import json
import os
import socket

import pytest
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from appliance import sdnotify
from appliance.config import ConfigError
from appliance.signals import Signals
from appliance.sockets import Listener
from appliance.startup import ServicePlan, build_process
from appliance.supervisor import (
    MAX_RESTART_DELAY,
    RESTART_DELAY,
    SPARE_DELAY,
    STABLE_AFTER,
    Supervisor,
    WorkerGroup,
)
from appliance.worker import READY_LINE


class FakeTransport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.written = b""
        self.signals: list = []

    def write(self, data: bytes) -> None:
        self.written += data

    def closeStdin(self) -> None:
        pass

    def signalProcess(self, signum) -> None:
        self.signals.append(signum)


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list = []  # (protocol, argv, childFDs)

    def spawnProcess(self, protocol, executable, args, env, childFDs):
        protocol.makeConnection(FakeTransport(1000 + len(self.spawned)))
        self.spawned.append((protocol, args, childFDs, env))
        return protocol.transport


def group(count: int = 2, **kwargs) -> WorkerGroup:
    return WorkerGroup("relay", count, "relay.workers", "x.toml",
                       [Listener("udp", "127.0.0.1", 0, "relay", "listen"),
                        Listener("tcp", "127.0.0.1", 0, "relay", "listen")], {"secret": "s"}, **kwargs)


def die(protocol) -> None:
    protocol.processEnded(Failure(ProcessTerminated(signal=9)))


@pytest.fixture
def running():
    reactor = FakeReactor()
    supervisor = Supervisor([group()], reactor)
    supervisor.startService()
    yield reactor, supervisor
    supervisor._close_sockets()


def test_each_worker_gets_the_groups_sockets_and_a_spec_naming_its_own(running):
    reactor, supervisor = running
    assert len(reactor.spawned) == 3  # two workers and the group's spare
    all_fds = [s.fileno() for index in (0, 1) for s in supervisor.sockets["relay", index]]
    assert len(set(all_fds)) == 4  # two workers, two sockets each, all in one SO_REUSEPORT group
    for _protocol, argv, child_fds, _env in reactor.spawned:
        assert argv[1:] == ["-m", "appliance.worker", "relay.workers", str(os.getpid())]
        assert [child_fds[fd] for fd in (3, 4, 5, 6)] == all_fds
    for index in (0, 1):
        spec = json.loads(supervisor.workers["relay", index].transport.written)
        assert (spec["service"], spec["worker"], spec["workers"], spec["spec"]) == ("relay", index, 2, {"secret": "s"})
        assert spec["fds"] == [3 + 2 * index, 4 + 2 * index]
        assert spec["listeners"] == [["udp", "127.0.0.1", 0], ["tcp", "127.0.0.1", 0]]
    assert supervisor.spares["relay"].transport.written == b""  # the spare waits for a slot


def test_a_dead_workers_slot_goes_to_the_spare_and_a_new_spare_starts(running):
    reactor, supervisor = running
    spare = supervisor.spares["relay"]
    die(supervisor.workers["relay", 1])
    reactor.advance(RESTART_DELAY)
    assert supervisor.workers["relay", 1] is spare and spare.index == 1
    assert json.loads(spare.transport.written)["fds"] == [5, 6]
    assert len(reactor.spawned) == 3 and "relay" not in supervisor.spares  # not competing with the new worker
    reactor.advance(SPARE_DELAY)
    assert supervisor.spares["relay"] is reactor.spawned[-1][0] is not spare
    assert len(reactor.spawned) == 4


def test_a_dead_spare_is_replaced_with_back_off_and_takes_no_slot(running):
    reactor, supervisor = running
    die(supervisor.spares["relay"])
    assert "relay" not in supervisor.spares
    reactor.advance(RESTART_DELAY)
    assert supervisor.spares["relay"] is reactor.spawned[-1][0]
    die(supervisor.spares["relay"])
    reactor.advance(RESTART_DELAY)
    assert "relay" not in supervisor.spares  # the second time it waits twice as long
    reactor.advance(RESTART_DELAY)
    assert supervisor.spares["relay"] is reactor.spawned[-1][0]
    assert sorted(w.index for w in supervisor.workers.values()) == [0, 1]


def test_a_spare_that_waited_a_while_is_replaced_without_back_off(running):
    reactor, supervisor = running
    for _ in range(4):  # a spare that keeps dying at once backs off further each time ...
        die(supervisor.spares["relay"])
        reactor.advance(MAX_RESTART_DELAY)
    reactor.advance(STABLE_AFTER + 1)
    die(supervisor.spares["relay"])  # ... but one that had been waiting fine starts the next at once
    reactor.advance(RESTART_DELAY)
    assert "relay" in supervisor.spares


def test_workers_do_not_inherit_the_notify_socket(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    reactor = FakeReactor()
    supervisor = Supervisor([group(1)], reactor)
    supervisor.startService()
    assert "NOTIFY_SOCKET" not in reactor.spawned[0][3]
    supervisor._close_sockets()


def test_a_dead_worker_is_replaced_with_a_doubling_back_off(running):
    reactor, supervisor = running
    delays = []
    for _ in range(12):
        reactor.advance(SPARE_DELAY)  # let the spare be replaced: only the restart is pending
        dead = supervisor.workers["relay", 1]
        die(dead)
        [restart] = reactor.getDelayedCalls()
        delays.append(restart.getTime() - reactor.seconds())
        reactor.advance(delays[-1] - 0.001)
        assert supervisor.workers["relay", 1] is dead  # not before its time
        reactor.advance(restart.getTime() - reactor.seconds())
        assert supervisor.workers["relay", 1] is not dead
    assert delays[:3] == pytest.approx([RESTART_DELAY, 2 * RESTART_DELAY, 4 * RESTART_DELAY])
    assert max(delays) == pytest.approx(MAX_RESTART_DELAY) == delays[-1]
    # The replacement runs in the same slot, on the same sockets.
    assert json.loads(supervisor.workers["relay", 1].transport.written)["fds"] == [5, 6]


def test_a_worker_that_ran_a_while_restarts_without_back_off(running):
    reactor, supervisor = running
    for _ in range(3):
        die(supervisor.workers["relay", 0])
        reactor.advance(MAX_RESTART_DELAY)
    reactor.advance(STABLE_AFTER + 1)
    dead = supervisor.workers["relay", 0]
    die(dead)
    reactor.advance(RESTART_DELAY)
    assert supervisor.workers["relay", 0] is not dead


def test_reload_signals_every_worker(running):
    import signal

    reactor, supervisor = running
    supervisor.reload()
    assert [p.transport.signals for p, *_ in reactor.spawned] == [[signal.SIGHUP], [signal.SIGHUP], []]


def test_stop_terms_all_kills_stragglers_and_restarts_nobody(running):
    import signal

    reactor, supervisor = running
    stopped = supervisor.stopService()
    first, second, spare = (p for p, *_ in reactor.spawned)
    assert first.transport.signals == [signal.SIGTERM] == second.transport.signals == spare.transport.signals
    die(first)
    die(spare)
    reactor.advance(10.0)  # the group's stop_timeout
    assert second.transport.signals == [signal.SIGTERM, "KILL"]
    die(second)
    assert stopped.called and len(reactor.spawned) == 3 and supervisor.sockets == {}


def test_a_port_in_use_is_a_config_error_and_nothing_stays_bound():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        taken = WorkerGroup("relay", 2, "relay.workers", "x.toml",
                            [Listener("tcp", "127.0.0.1", port, "relay", "listen"),
                             Listener("udp", "127.0.0.1", port, "relay", "listen")])
        with pytest.raises(ConfigError) as raised:
            Supervisor([taken], FakeReactor())
    assert str(raised.value) == (f"x.toml: [relay] listen: the relay cannot listen on 127.0.0.1:{port} (UDP): "
                                 "already in use (another process listens there)")


def test_sighup_runs_every_reload_even_after_one_fails(tmp_path, monkeypatch):
    notify_path = str(tmp_path / "notify")
    calls = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(1)
        monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
        signals = Signals(Clock())
        signals.on_reload("relay", lambda: calls.append("relay"))
        signals.on_reload("revproxy", lambda: 1 / 0)
        signals.on_reload("workers", lambda: calls.append("workers"))
        signals.reload()
        assert calls == ["relay", "workers"]
        assert notify.recv(100).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert notify.recv(100) == b"READY=1"


def test_sd_notify_does_nothing_outside_systemd(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify(sdnotify.READY) is False


def say(worker, *lines: str) -> None:
    worker.outReceived("".join(line + "\n" for line in lines).encode())


def test_ready_waits_for_every_slots_worker_to_serve_and_a_spare_does_not_count(running):
    reactor, supervisor = running
    assert not supervisor.ready.called
    say(supervisor.spares["relay"], READY_LINE)  # a spare cannot serve: it has no slot
    say(supervisor.workers["relay", 0], "relay ready", READY_LINE, "something else")
    assert not supervisor.ready.called
    die(supervisor.workers["relay", 1])  # a slot whose first worker died before serving is still waited for
    reactor.advance(RESTART_DELAY)
    say(supervisor.workers["relay", 1], "relay ready")
    assert not supervisor.ready.called
    say(supervisor.workers["relay", 1], READY_LINE)
    assert supervisor.ready.called


def test_systemd_hears_ready_only_once_the_workers_serve(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(sdnotify, "notify", sent.append)
    reactor = FakeReactor()
    when_running: list = []
    reactor.callWhenRunning = lambda f, *args: when_running.append(f)
    top = build_process([ServicePlan("relay", group=group(1))], reactor)
    top.startService()
    assert sdnotify.notify not in when_running  # the reactor running is not enough with workers
    assert sent == []
    say(top.supervisor.workers["relay", 0], READY_LINE)
    assert sent == [sdnotify.READY]
    top.supervisor._close_sockets()
