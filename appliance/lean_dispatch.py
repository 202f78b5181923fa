"""The epoll reactor's per-event dispatch, without the legacy log context on the usual event (readable, nothing else).

Twisted's `EPollReactor.doPoll` hands every event to `log.callWithLogger(selectable, _doReadOrWrite, ...)`: the
selectable's `logPrefix()`, a copy of the legacy log context with {"system": prefix} pushed on a per-thread stack,
then `_doReadOrWrite` — nine Python calls and two dicts per event before `doRead` is reached, that is per read of a
proxied connection (two per proxied request). The context only names the `system` of legacy log events emitted
during the call (`twisted.python.log.err` on an unhandled exception); `twisted.logger` events do not read it.

`install(reactor)` replaces the reactor's `doIteration` with `lean_poll`, which for an event that is only EPOLLIN
does what `_doReadOrWrite` does for it (`fileno()` checked, `doRead()`, disconnect on its answer) directly, and
re-enters the log context only when there is something to log or to disconnect: an exception is logged with the
selectable's prefix as before, and `_disconnectSelectable` runs under it as before. Every other event (writable,
hang-up, error, mixed) goes the usual way. Installed only on Twisted's own epoll reactor, recognised exactly;
anything else (tests' memory reactors, another reactor chosen with `--reactor`) is left alone.
"""

from __future__ import annotations

import select
from typing import Any

from twisted.internet import epollreactor
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log
from twisted.python.failure import Failure

_IN = select.EPOLLIN


def install(reactor: Any) -> bool:
    """Whether `reactor` now dispatches through `lean_poll` (True also when it already did)."""
    if type(reactor) is not epollreactor.EPollReactor or not isinstance(getattr(reactor, "_poller", None),
                                                                         select.epoll):
        return False
    if getattr(reactor, "lean_dispatch", False):
        return True
    reactor.doIteration = lambda timeout: lean_poll(reactor, timeout)
    reactor.lean_dispatch = True
    return True


def lean_poll(reactor: Any, timeout: float | None) -> None:
    """`EPollReactor.doPoll`, the EPOLLIN-only event dispatched without the log context (see the module doc)."""
    if timeout is None:
        timeout = -1
    selectables = reactor._selectables
    try:
        events = reactor._poller.poll(timeout, len(selectables))
    except InterruptedError:
        return
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        if event != _IN:
            log.callWithLogger(selectable, reactor._doReadOrWrite, selectable, fd, event)
            continue
        try:
            why = _NO_FILEDESC if selectable.fileno() == -1 else selectable.doRead()
        except BaseException:
            log.callWithLogger(selectable, _read_failed, reactor, selectable, Failure())
            continue
        if why:
            log.callWithLogger(selectable, reactor._disconnectSelectable, selectable, why, True)


def _read_failed(reactor: Any, selectable: Any, failure: Failure) -> None:
    """What `_doReadOrWrite` does when `doRead` raises: log it, disconnect the selectable (not as a read's end:
    a half-closeable one gets connectionLost, as there)."""
    log.err(failure)
    reactor._disconnectSelectable(selectable, failure.value, False)
