"""The plain-HTTP listener: every request gets a 301 to the same host, path and query on HTTPS."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet.protocol import Protocol, ServerFactory

from revproxy import acme, http1
from revproxy.heads import simple_response
from revproxy.http1 import MAX_HEAD, HeadBuffer, HTTPError
from revproxy.timers import Deadline

if TYPE_CHECKING:
    from revproxy.context import ProxyContext

_HOST = re.compile(rb"(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")


def location(head: http1.Head, hostname: str, https_port: int) -> bytes:
    """Where a plain-HTTP request is sent: its Host when it is a plain name or address, else `hostname`."""
    host = head.get(b"host") or b""
    if not _HOST.match(host):
        host = hostname.encode("idna")
    host = host[: host.index(b"]") + 1] if host.startswith(b"[") else host.split(b":", 1)[0]
    if https_port != 443:
        host += b":%d" % https_port
    return b"https://" + host + (head.target if head.target.startswith(b"/") else b"/")


class RedirectConnection(Deadline, Protocol):
    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.heads: HeadBuffer | None = HeadBuffer(MAX_HEAD)

    def connectionMade(self) -> None:
        self.set_deadline(self.ctx.config.client_timeout)

    def dataReceived(self, data: bytes) -> None:
        heads = self.heads
        if heads is None:
            return
        heads.append(data, skip_blank_lines=True)
        try:
            raw = heads.pop()
            if raw is None:
                return
            head = http1.parse_request(raw)
        except HTTPError as e:
            self.answer(simple_response(e.status, e.detail.encode() + b"\n"))
            return
        cfg = self.ctx.config
        if cfg.acme is not None and head.target.startswith(acme.CHALLENGE_PREFIX):  # HTTP-01 validation
            body = acme.challenge_response(cfg.acme.challenges_dir, head.target)
            self.answer(simple_response(404, b"no such challenge\n") if body is None else
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                        b"Connection: close\r\n\r\n%s" % (len(body), body))
            return
        self.ctx.stats.redirects += 1
        target = location(head, cfg.hostname, cfg.https.port if cfg.https else 443)
        self.answer(b"HTTP/1.1 301 Moved Permanently\r\nLocation: %s\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n" % target)

    def answer(self, response: bytes) -> None:
        self.heads = None
        self.cancel_deadline()
        self.transport.write(response)
        self.transport.loseConnection()

    def _on_deadline(self) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.cancel_deadline()


class RedirectFactory(ServerFactory):
    noisy = False

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx

    def buildProtocol(self, addr: Any) -> RedirectConnection:
        return RedirectConnection(self.ctx)
