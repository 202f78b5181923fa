"""appliance.lean_dispatch: the epoll reactor's readable-only events go to doRead without the log context, and
everything else (errors, disconnects, other events) still ends where Twisted's own dispatch takes it."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import epollreactor, error, main
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.internet.testing import MemoryReactorClock
from twisted.python import log
from zope.interface import implementer

from appliance import lean_dispatch


class Readable:
    """A selectable on one end of a socket pair; `answer` is what doRead returns (or raises)."""

    def __init__(self, sock: socket.socket, answer: object = None) -> None:
        self.sock = sock
        self.answer = answer
        self.reads = 0
        self.prefixes = 0
        self.lost: list[object] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        self.prefixes += 1
        return "Readable,7"

    def doRead(self) -> object:
        self.reads += 1
        self.sock.recv(100)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def connectionLost(self, reason: object) -> None:
        self.lost.append(reason)


@pytest.fixture
def epoll():
    reactor = epollreactor.EPollReactor()
    yield reactor
    reactor._poller.close()
    if reactor.waker is not None:  # (its pipe: the reactor never ran, so nothing else closes it)
        reactor.waker.connectionLost(None)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_installed_only_on_twisted_epoll_reactor(epoll) -> None:
    assert lean_dispatch.install(MemoryReactorClock()) is False
    assert lean_dispatch.install(epoll) is True
    assert lean_dispatch.install(epoll) is True  # once is enough: a second call changes nothing
    assert epoll.doIteration.__name__ == "<lambda>"


def test_readable_goes_straight_to_do_read(epoll, pair) -> None:
    a, b = pair
    sel = Readable(b)
    epoll.addReader(sel)
    lean_dispatch.install(epoll)
    a.send(b"x")
    epoll.doIteration(1.0)
    assert sel.reads == 1
    assert sel.prefixes == 0  # no log context built for the usual event
    assert sel.lost == []


def test_do_read_saying_done_disconnects(epoll, pair) -> None:
    a, b = pair
    sel = Readable(b, main.CONNECTION_DONE)
    epoll.addReader(sel)
    lean_dispatch.install(epoll)
    a.send(b"x")
    epoll.doIteration(1.0)
    assert len(sel.lost) == 1 and sel.lost[0].check(main.CONNECTION_DONE.__class__)
    assert sel not in epoll.getReaders()


def read_once(epoll, sel, peer: socket.socket) -> list[dict]:
    """`sel` watched through the lean dispatch, one byte from `peer`, one reactor turn: the log events it made."""
    epoll.addReader(sel)
    lean_dispatch.install(epoll)
    events: list[dict] = []
    log.addObserver(events.append)
    try:
        peer.send(b"x")
        epoll.doIteration(1.0)
    finally:
        log.removeObserver(events.append)
    return events


def test_do_read_raising_is_logged_with_the_selectables_prefix_and_disconnects(epoll, pair) -> None:
    a, b = pair
    sel = Readable(b, ZeroDivisionError("boom"))
    events = read_once(epoll, sel, a)
    failures = [e for e in events if e.get("isError")]
    assert len(failures) == 1
    assert failures[0]["failure"].check(ZeroDivisionError)
    assert failures[0].get("system") == "Readable,7"  # as Twisted's own dispatch would have logged it
    assert len(sel.lost) == 1 and sel.lost[0].check(ZeroDivisionError)
    assert sel not in epoll.getReaders()


def test_other_events_take_twisteds_way(epoll, pair) -> None:
    a, b = pair
    sel = Readable(b)
    epoll.addReader(sel)
    lean_dispatch.install(epoll)
    a.close()  # the peer hangs up: EPOLLIN | EPOLLHUP or EPOLLRDHUP, not a readable-only event
    b.shutdown(socket.SHUT_WR)
    epoll.doIteration(1.0)
    assert sel.prefixes >= 1  # went through callWithLogger


@implementer(IHalfCloseableDescriptor)
class HalfCloseable(Readable):
    """doRead raises ConnectionDone (`raised`) or answers it."""

    def __init__(self, sock: socket.socket, raised: bool) -> None:
        super().__init__(sock)
        self.raised = raised

    def doRead(self) -> object:
        self.sock.recv(100)
        if self.raised:
            raise error.ConnectionDone()
        return main.CONNECTION_DONE

    def readConnectionLost(self, reason: object) -> None:
        self.lost.append(("read", reason))


@pytest.mark.parametrize("raised", [False, True])
def test_a_half_closeable_selectable_ends_as_under_twisteds_dispatch(epoll, pair, raised) -> None:
    """A read's end (doRead answering ConnectionDone) closes only the reading side; the same error raised by doRead
    is a failure, and the whole connection is lost."""
    a, b = pair
    sel = HalfCloseable(b, raised)
    read_once(epoll, sel, a)
    assert len(sel.lost) == 1
    if raised:
        assert not isinstance(sel.lost[0], tuple) and sel.lost[0].check(error.ConnectionDone)
    else:
        assert sel.lost[0][0] == "read"
