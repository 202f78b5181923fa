"""The access log: one pre-built line per request, secrets scrubbed and every value made safe for one line.

Formatting ten fields through the logger's format string cost ~5 % of the CPU; the line is one f-string and the
logger gets it as a single field. Query parameters named `token`, `pin`, `code`, `state` or `data` have their value
shown as `***`, in the request target and in the Referer, matched on the name as a node decodes it (percent-decoded,
`+` as space, any case: `?%74oken=` is a token too). Every byte that is not printable ASCII is escaped as `\\xNN`
(`appliance.logsafe`), so a request cannot forge a second log line.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.logger import Logger

from appliance.logsafe import escape_bytes
from revproxy.exchange import Exchange

log = Logger(namespace="revproxy")

SECRET_PARAMETERS = frozenset({b"token", b"pin", b"code", b"state", b"data"})
_SEPARATORS = re.compile(rb"([&;])")
# The usual methods as logged (printable ASCII: nothing to escape), looked up instead of escaped per request.
_METHODS = {m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")}


def scrub(target: bytes) -> str:
    """A request target or URL for the log: secret query values replaced by `***`, then escaped."""
    q = target.find(b"?")
    if q < 0:
        return escape_bytes(target)
    end = target.find(b"#", q)
    query, tail = (target[q + 1:], b"") if end < 0 else (target[q + 1: end], target[end:])
    parts = _SEPARATORS.split(query)
    for i in range(0, len(parts), 2):
        name, eq, _ = parts[i].partition(b"=")
        if eq and unquote_to_bytes(name.replace(b"+", b" ")).lower() in SECRET_PARAMETERS:
            parts[i] = name + b"=***"
    return escape_bytes(target[: q + 1] + b"".join(parts) + tail)


def line(ex: Exchange, now: float) -> str:
    head, node = ex.head, ex.node
    referer = head.get(b"referer")
    method = _METHODS.get(head.method) or escape_bytes(head.method)
    return (f'{ex.client_ip} "{method} {scrub(head.target)}" {ex.status} {ex.sent} '
            f'node={node.key if node else "-"} node_status={ex.node_status} {(now - ex.began) * 1000:.1f}ms'
            + (f' referer="{scrub(referer)}"' if referer is not None else ""))


class AccessLogFile:
    """`access_log = "PATH"`: the lines go to a file of their own, as nginx's do, not through twistd's log.

    Through twistd's text observer a line costs a timestamp formatted from scratch, a format string parsed and a
    flush — a write syscall — per request, about as much CPU as proxying the request. Here lines are buffered and
    written together (`FLUSH_DELAY` after the first, or at `FLUSH_BYTES`), with the timestamp formatted once a
    second. The file is opened for appending (workers share it safely: each write is whole lines, O_APPEND) and
    reopened on reload, so logrotate's `postrotate` sends SIGHUP."""

    FLUSH_DELAY = 0.2
    FLUSH_BYTES = 64 * 1024

    def __init__(self, path: str, reactor: Any) -> None:
        self.path = path
        self.reactor = reactor
        self.fd = self._open()
        self.pending: list[str] = []
        self.size = 0
        self.flush_call: Any = None
        self.second = -1
        self.stamp = ""
        reactor.addSystemEventTrigger("after", "shutdown", self.close)

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def __call__(self, text: str) -> None:
        now = self.reactor.seconds()
        second = int(now)
        if second != self.second:
            self.second = second
            self.stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z ", time.localtime(second))
        entry = self.stamp + text + "\n"
        self.pending.append(entry)
        self.size += len(entry)
        if self.size >= self.FLUSH_BYTES:
            self.flush()
        elif self.flush_call is None:
            self.flush_call = self.reactor.callLater(self.FLUSH_DELAY, self.flush)

    def flush(self) -> None:
        if self.flush_call is not None:
            if self.flush_call.active():
                self.flush_call.cancel()
            self.flush_call = None
        if not self.pending or self.fd < 0:
            return
        data = "".join(self.pending).encode("utf-8", "replace")
        self.pending, self.size = [], 0
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as e:
            log.error("access log {path}: {error}; lines dropped", path=self.path, error=e.strerror)

    def reopen(self) -> None:
        """After a reload: the file may have been rotated away."""
        self.flush()
        try:
            fd = self._open()
        except OSError as e:
            log.error("access log {path}: cannot reopen ({error}); still writing to the old file", path=self.path,
                      error=e.strerror)
            return
        os.close(self.fd)
        self.fd = fd

    def close(self) -> None:
        self.flush()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def sink(config_value: bool | str, reactor: Any, current: AccessLogFile | None = None) -> Any:
    """Where access-log lines go for an `access_log` setting: None (off), the twistd log (True), or a file; a file
    already open for the same path is reopened rather than opened twice."""
    if current is not None:
        if current.path == config_value:
            current.reopen()
            return current
        current.close()
    if config_value is False:
        return None
    if config_value is True:
        return _to_twistd_log
    return AccessLogFile(config_value, reactor)


def _to_twistd_log(text: str) -> None:
    log.info("{line}", line=text)
