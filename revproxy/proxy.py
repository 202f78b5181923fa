"""The Twisted shell of the proxy: client connections in, node connections out, bytes moved both ways.

`ClientConnection` (one per client TLS connection) parses request heads with `http1`, runs one `Exchange` at a
time and re-frames what it forwards. An `Exchange` asks the `NodePool` for an attempt order, borrows a keep-alive
connection from `Upstreams` (or opens one), streams the request body to the node while keeping it (memory, then a
temporary file) until the node answers so a failover can resend it, and streams the response back with
backpressure both ways. After a 101 both connections become a raw tunnel.

Timers are lazy deadlines: moving one is a float assignment; the single DelayedCall per connection only
reschedules itself when it fires early.
"""

from __future__ import annotations

import mimetypes
import os
import re
import tempfile
from typing import Any
from urllib.parse import unquote

from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from zope.interface import implementer

from revproxy import http1
from revproxy.config import ProxyConfig
from revproxy.http1 import CHUNKED, IDEMPOTENT, LAST_CHUNK, LENGTH, MAX_HEAD, NONE, UNTIL_CLOSE, HTTPError
from revproxy.pool import Node, NodePool
from revproxy.stdtls import TLSFactory

log = Logger(namespace="revproxy")

REASONS = {101: b"Switching Protocols", 200: b"OK", 301: b"Moved Permanently", 400: b"Bad Request",
           404: b"Not Found", 405: b"Method Not Allowed", 413: b"Content Too Large", 417: b"Expectation Failed",
           431: b"Request Header Fields Too Large", 502: b"Bad Gateway", 504: b"Gateway Timeout",
           505: b"HTTP Version Not Supported"}
# RFC 9110 7.6.1 hop-by-hop fields, plus the ones the proxy sets itself.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization"})
_REQUEST_DROP = HOP_BY_HOP | {b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
                              b"x-real-ip"}
_SECRET_QUERY = re.compile(r"([?&;](?:token|pin|code|state|data)=)[^&;#]*", re.I)
_HOST = re.compile(rb"(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?\Z")
MEMORY_BODY = 64 * 1024  # request bodies beyond this are kept in a temporary file
MAX_RESPONSE_HEAD = 64 * 1024
UPSTREAM_IDLE = 30.0


def scrub(target: bytes) -> str:
    """The request target for the access log, with secrets in the query replaced by `***`."""
    text = target.decode("latin-1")
    return _SECRET_QUERY.sub(r"\1***", text) if "?" in text else text


def simple_response(status: int, body: bytes = b"", close: bool = True, extra: bytes = b"") -> bytes:
    return b"".join((b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Error")), extra,
                     b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body),
                     b"Connection: close\r\n\r\n" if close else b"\r\n", body))


class BodyStore:
    """The request body kept until the node has answered: bytes in memory, then a temporary file."""

    __slots__ = ("file", "mem", "size")

    def __init__(self) -> None:
        self.mem = bytearray()
        self.file: Any = None
        self.size = 0

    def append(self, data: bytes) -> None:
        if self.file is None and self.size + len(data) > MEMORY_BODY:
            self.file = tempfile.TemporaryFile(prefix="revproxy-body-")  # noqa: SIM115 (closed by close())
            self.file.write(self.mem)
            self.mem = bytearray()
        if self.file is None:
            self.mem += data
        else:
            self.file.seek(0, os.SEEK_END)
            self.file.write(data)
        self.size += len(data)

    def read(self, offset: int, n: int) -> bytes:
        if self.file is None:
            return bytes(self.mem[offset: offset + n])
        self.file.seek(offset)
        return self.file.read(n)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.mem = bytearray()


class ProxyContext:
    """What every connection shares: the current config, the node pool, the upstream connections, counters.

    A reload replaces `config` (and the pool's node list); exchanges in flight keep the config they began with."""

    def __init__(self, config: ProxyConfig, pool: NodePool, reactor: Any, creators: dict[str, object]) -> None:
        self.config = config
        self.pool = pool
        self.reactor = reactor
        self.creators = creators  # node key -> TLS client connection creator
        self.upstreams = Upstreams(self)
        self.connections: set[ClientConnection] = set()
        self.active = 0
        self.draining = False
        self.webapp = StaticFiles(config.webapp_dir) if config.webapp_dir else None

    def apply(self, config: ProxyConfig, nodes: list[Node], creators: dict[str, object]) -> None:
        self.config = config
        self.creators = creators
        self.pool.fail_timeout, self.pool.balance = config.fail_timeout, config.balance
        self.pool.replace(nodes)
        self.webapp = StaticFiles(config.webapp_dir) if config.webapp_dir else None
        self.upstreams.close_idle(keep={n.key for n in nodes})


class _Deadline:
    """Mixin: one lazy DelayedCall per connection; `_on_deadline` runs once `deadline` has passed."""

    deadline: float | None = None
    _timer: Any = None

    def set_deadline(self, delay: float | None, exact: bool = True) -> None:
        """`exact=False` for idle timeouts, where closing a little late is harmless: no timer churn per request."""
        if delay is None:
            self.deadline = None
            return
        reactor = self.ctx.reactor  # type: ignore[attr-defined]
        when = reactor.seconds() + delay
        self.deadline = when
        if self._timer is None:
            self._timer = reactor.callLater(delay, self._fire)
        elif exact and self._timer.getTime() > when:
            self._timer.reset(delay)

    def _fire(self) -> None:
        self._timer = None
        if self.deadline is None:
            return
        left = self.deadline - self.ctx.reactor.seconds()  # type: ignore[attr-defined]
        if left > 0:
            self._timer = self.ctx.reactor.callLater(left, self._fire)  # type: ignore[attr-defined]
        else:
            self.deadline = None
            self._on_deadline()

    def cancel_deadline(self) -> None:
        self.deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_deadline(self) -> None:
        raise NotImplementedError


class ClientConnection(_Deadline, Protocol):
    """One client connection: request heads parsed here, one Exchange at a time, pipelined bytes held back."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.buf = b""
        self.scan = 0
        self.exchange: Exchange | None = None
        self.body: http1.BodyReader | None = None
        self.tunnel: Any = None
        self.head_started = False
        self.closing = False
        self.held = False
        self.client_ip = ""
        self.client_ip_bytes = b""

    def connectionMade(self) -> None:
        # Responses go out as a head write then body writes: with Nagle on, the second small TLS record waits
        # for the client's delayed ACK (40 ms per 64 KiB response).
        self.transport.setTcpNoDelay(True)
        host = self.transport.getPeer().host
        self.client_ip = host[7:] if host.startswith("::ffff:") else host
        self.client_ip_bytes = self.client_ip.encode()
        self.ctx.connections.add(self)
        self.set_deadline(self.ctx.config.keepalive_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
        elif self.body is not None:
            self.feed_body(data)
        elif self.closing:
            return
        elif self.exchange is not None:  # pipelined: hold until the current response is done
            self.buf += data
            if len(self.buf) > MAX_HEAD and not self.held:
                self.held = True
                self.transport.pauseProducing()
        else:
            self.buf = self.buf + data if self.buf else data
            self.parse_heads()

    def parse_heads(self) -> None:
        while self.buf and self.exchange is None and not self.closing:
            if not self.head_started:
                self.buf = self.buf.lstrip(b"\r\n")  # RFC 9112 2.2: ignore blank lines before a request
                if not self.buf:
                    return
            end = self.buf.find(b"\r\n\r\n", max(0, self.scan - 3))
            if end < 0 or end > MAX_HEAD:
                if len(self.buf) > MAX_HEAD:
                    self.refuse(HTTPError(431, "request head over 16 KiB"))
                    return
                self.scan = len(self.buf)
                if not self.head_started:  # a head in pieces: it must be complete within client_timeout
                    self.head_started = True
                    self.set_deadline(self.ctx.config.client_timeout)
                return
            raw, rest = self.buf[:end], self.buf[end + 4:]
            self.buf, self.scan = b"", 0
            try:
                head = http1.parse_request(raw)
            except HTTPError as e:
                self.refuse(e)
                return
            self.start(head, rest)

    def start(self, head: http1.Head, rest: bytes) -> None:
        ex = Exchange(self, head)
        self.exchange = ex
        if head.framing == NONE:
            self.set_deadline(None)
            self.buf = rest
            ex.start()
        else:
            self.body = http1.BodyReader(head.framing, head.length)
            ex.start()
            if rest and self.body is not None:
                self.feed_body(rest)

    def feed_body(self, data: bytes) -> None:
        ex = self.exchange
        body = self.body
        try:
            pieces, rest = body.feed(data)  # type: ignore[union-attr]
        except HTTPError as e:
            self.body = None
            if ex is not None and not ex.finished:
                ex.fail(e.status, e.detail)
            else:
                self.refuse(e)
            return
        if ex is not None and not ex.finished:
            for piece in pieces:
                ex.request_data(piece)
        if self.body is None:
            return
        if body.done:  # type: ignore[union-attr]
            self.body = None
            self.set_deadline(None)
            if self.exchange is not None:
                self.buf = rest
                self.exchange.request_complete()
            elif rest and not self.closing:  # the answer went out before the body ended (413, 502)
                self.buf = rest
                self.parse_heads()
        else:
            self.set_deadline(self.ctx.config.client_timeout)

    def response_done(self, keep_alive: bool) -> None:
        """The Exchange wrote its last byte."""
        self.exchange = None
        if not keep_alive or self.ctx.draining:
            self.closing = True
            self.transport.loseConnection()
            return
        if self.body is not None:  # answered before the request body ended: read it through to stay in sync
            return
        self.head_started = False
        self.set_deadline(self.ctx.config.keepalive_timeout, exact=False)
        if self.held:
            self.held = False
            self.transport.resumeProducing()
        if self.buf:
            self.parse_heads()

    def refuse(self, error: HTTPError) -> None:
        """Answer a bad request ourselves and close: the byte stream can no longer be trusted."""
        log.info("{client} refused: {status} {detail}", client=self.client_ip, status=error.status,
                 detail=error.detail)
        self.closing = True
        self.body = None
        self.transport.write(simple_response(error.status, error.detail.encode() + b"\n"))
        self.transport.loseConnection()

    def _on_deadline(self) -> None:
        if self.exchange is None or self.body is not None:
            if self.head_started or self.body is not None:
                log.info("{client} closed: request did not finish arriving within client_timeout",
                         client=self.client_ip)
            self.closing = True
            self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.ctx.connections.discard(self)
        self.cancel_deadline()
        self.closing = True
        if self.tunnel is not None:
            self.tunnel.loseConnection()
        if self.exchange is not None:
            self.exchange.client_gone()


@implementer(IPushProducer)
class Exchange:
    """One request: node choice, failover, request body kept and streamed, response streamed back, access log."""

    def __init__(self, conn: ClientConnection, head: http1.Head) -> None:
        self.conn = conn
        self.head = head
        self.ctx = ctx = conn.ctx
        self.config = ctx.config
        self.began = ctx.reactor.seconds()
        self.store = BodyStore() if head.framing != NONE else None
        self.request_done = head.framing == NONE
        self.upgrade = bool(head.upgrade) and b"upgrade" in head.connection
        self.idempotent = head.method in IDEMPOTENT
        self.plan: list[Node] = []
        self.attempt = 0
        self.node: Node | None = None
        self.node_status = "-"
        self.upstream: UpstreamConnection | None = None
        self.connecting: _Connect | None = None
        self.upstream_head = b""
        self.body_sent = 0
        self.request_sent = False
        self.paused = False
        self.stale_retry = False
        self.response_started = False
        self.to_client_chunked = False
        self.keep_alive = head.keep_alive
        self.status = 0
        self.sent = 0
        self.finished = False
        self.last_failure = ""
        self.out: list[bytes] = []  # response bytes from one read of the node, written to the client as one

    # -- request side ----------------------------------------------------------------------------------------
    def start(self) -> None:
        ctx, head, cfg = self.ctx, self.head, self.config
        ctx.active += 1
        if head.framing == LENGTH and head.length > cfg.max_body_size:
            return self.fail(413, "request body over max_body_size")
        expect = head.get(b"expect")
        if expect is not None:
            if expect.lower() != b"100-continue":
                return self.fail(417, "only Expect: 100-continue")
            if head.framing != NONE:  # we read the body now, so tell the client to send it
                self.conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        webapp = ctx.webapp
        if webapp is not None and head.target.startswith(cfg.webapp_path.encode()) and not self.upgrade:
            return webapp.serve(self, head.target[len(cfg.webapp_path):])
        self.plan = ctx.pool.plan(self.conn.client_ip)
        if not self.plan:
            return self.fail(502, "no node available")
        self.upstream_head = self.build_upstream_head()
        self.try_node()

    def build_upstream_head(self) -> bytes:
        head = self.head
        parts = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
        forwarded_for: list[bytes] = []
        named = head.connection - {b"host"}
        for lname, name, value in head.fields:
            if lname in _REQUEST_DROP or lname in named:
                if lname == b"x-forwarded-for":
                    forwarded_for.append(value)
                continue
            parts += (name, b": ", value, b"\r\n")
        forwarded_for.append(self.conn.client_ip_bytes)
        parts += (b"X-Forwarded-For: ", b", ".join(forwarded_for), b"\r\nX-Forwarded-Proto: https\r\nX-Real-IP: ",
                  self.conn.client_ip_bytes, b"\r\n")
        if self.upgrade:
            parts += (b"Connection: upgrade\r\nUpgrade: ", head.upgrade, b"\r\n")
        if head.framing == LENGTH:
            parts.append(b"Content-Length: %d\r\n" % head.length)
        elif head.framing == CHUNKED:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def try_node(self) -> None:
        if self.attempt >= len(self.plan):
            return self.fail(504 if self.last_failure == "timeout" else 502, "no node answered")
        node = self.plan[self.attempt]
        self.node = node
        cfg = self.config
        timeout = cfg.api_connect_timeout if self.head.target.startswith(b"/api/") else cfg.connect_timeout
        self.ctx.upstreams.acquire(node, self, timeout, fresh=self.upgrade or self.stale_retry)

    def upstream_ready(self, up: UpstreamConnection) -> None:
        self.connecting = None
        self.upstream = up
        self.body_sent = 0
        self.resume_client()
        up.transport.write(self.upstream_head)
        if self.store is None:
            self.request_sent = True
        else:
            self.request_sent = False
            up.transport.registerProducer(self, True)
            self.pump()
        up.set_deadline(self.config.upstream_read_timeout)

    def pump(self) -> None:
        """Write the kept body to the node from where it got to, as far as its transport accepts."""
        up, store = self.upstream, self.store
        if up is None or store is None or self.request_sent:
            return
        chunked = self.head.framing == CHUNKED
        while not self.paused and self.body_sent < store.size:
            data = store.read(self.body_sent, MEMORY_BODY)
            self.body_sent += len(data)
            if chunked:
                up.transport.writeSequence(http1.chunk(data))
            else:
                up.transport.write(data)
            if self.upstream is not up:
                return
        if self.request_done and self.body_sent == store.size:
            if chunked:
                up.transport.write(LAST_CHUNK)
            self.request_sent = True
            up.transport.unregisterProducer()
            self.resume_client()  # the last write may have paused us: nobody would resume the client then

    def request_data(self, piece: bytes) -> None:
        store = self.store
        if store is None:
            return
        store.append(piece)
        if store.size > self.config.max_body_size:
            return self.fail(413, "request body over max_body_size")
        if self.upstream is not None and not self.paused:
            self.pump()

    def request_complete(self) -> None:
        self.request_done = True
        if self.upstream is not None:
            self.pump()

    # IPushProducer, registered on the node's transport: its backpressure pauses reading from the client
    def pauseProducing(self) -> None:
        self.paused = True
        if self.conn.transport is not None:
            self.conn.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.conn.transport is not None:
            self.conn.transport.resumeProducing()
        self.pump()

    def stopProducing(self) -> None:
        self.paused = True

    def resume_client(self) -> None:
        """Undo a pause from a node connection this exchange no longer writes to (failover, abandon)."""
        if self.paused:
            self.paused = False
            if self.conn.transport is not None and not self.finished:
                self.conn.transport.resumeProducing()

    # -- response side ---------------------------------------------------------------------------------------
    def upstream_head_received(self, up: UpstreamConnection, head: http1.Head) -> bool:
        """Returns False when the response is abandoned for the next node."""
        node = self.node
        self.node_status = str(head.status)
        if head.status in (502, 503, 504) and self.idempotent and self.attempt + 1 < len(self.plan):
            log.warn("node {node} answered {status}; retrying {method} on the next node", node=node.key,
                     status=head.status, method=self.head.method.decode())
            self.upstream = None
            up.abandon()
            self.attempt += 1
            self.try_node()
            return False
        if node.down_until:
            self.ctx.pool.mark_ok(node)
        if head.status == 101:
            if not self.upgrade:
                self.upstream = None
                up.abandon()
                self.fail(502, "unexpected 101 from the node")
                return False
            self.start_tunnel(up, head)
            return True
        self.response_started = True
        self.status = head.status
        names, framing = head.names, head.framing
        drop = HOP_BY_HOP | head.connection if head.connection else HOP_BY_HOP
        extra = []
        if b"content-length" in names and (framing in (CHUNKED, UNTIL_CLOSE) or not head.clean_length):
            drop = drop | {b"content-length"}  # replaced by our chunked framing, or by its one valid value
            if framing in (LENGTH, NONE):
                extra.append(b"\r\nContent-Length: %s" % http1.field_values(head, b"content-length")[0]
                             .split(b",")[0].strip())
        streaming = b"content-type" in names and any(
            v.startswith(b"text/event-stream") for v in http1.field_values(head, b"content-type"))
        parts = [b"HTTP/1.1 %d " % head.status, head.reason, http1.block_without(head, drop), *extra]
        if framing in (CHUNKED, UNTIL_CLOSE):
            if self.head.version == b"1.1":
                self.to_client_chunked = True
                parts.append(b"\r\nTransfer-Encoding: chunked")
            else:
                self.keep_alive = False
        if not self.keep_alive or not self.request_done or self.ctx.draining:
            self.keep_alive = False
            parts.append(b"\r\nConnection: close")
        parts.append(b"\r\n\r\n")
        self.out += parts
        conn = self.conn
        if streaming:  # /events: no read timeout; its own keep-alive events keep it honest
            up.cancel_deadline()  # and no timers held for the life of the stream
            if self.request_done:  # (a request body still arriving keeps its client_timeout)
                conn.cancel_deadline()
        if framing != NONE:
            conn.transport.registerProducer(up.transport, True)
        return True

    def upstream_body(self, pieces: list[bytes]) -> None:
        out = self.out
        if self.to_client_chunked:
            for p in pieces:
                out += http1.chunk(p)
                self.sent += len(p)
        else:
            for p in pieces:
                out.append(p)
                self.sent += len(p)

    def flush(self) -> None:
        """Write what one read from the node produced as one TLS write: head, body and last chunk share records,
        with no per-write cost and no reactor round trip (Twisted's small-write aggregation) in between."""
        out, self.out = self.out, []
        if out and self.conn.transport is not None:
            self.conn.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def upstream_end(self, up: UpstreamConnection, reusable: bool) -> None:
        self.upstream = None
        transport = self.conn.transport
        if self.to_client_chunked:
            self.out.append(LAST_CHUNK)
        self.flush()
        if transport.producer is not None:
            transport.unregisterProducer()
        if reusable and self.request_sent:
            # The client's backpressure may have paused reading from the node, and unregistering does not resume
            # it: a pooled connection that never reads would hang the next request on it.
            up.transport.resumeProducing()
            self.ctx.upstreams.release(up)
        else:
            up.transport.loseConnection()
        self.finish(self.keep_alive)

    def upstream_failed(self, up: UpstreamConnection | None, kind: str, detail: str = "") -> None:
        """kind: connect (connect error/timeout, TLS failure), stale (reused keep-alive connection closed before
        answering), lost (closed after the request), timeout (no answer in upstream_read_timeout), bad (garbage)."""
        self.upstream = None
        self.connecting = None
        if self.finished:
            return
        node = self.node
        self.last_failure = kind
        if self.response_started:
            log.warn("node {node} failed mid-response ({kind}); closing the client connection", node=node.key,
                     kind=kind)
            self.keep_alive = False
            self.conn.transport.abortConnection()
            self.finish(False)
            return
        if kind == "stale" and not self.stale_retry:
            self.stale_retry = True
            return self.try_node()
        self.stale_retry = False
        if kind == "connect" or (self.idempotent and kind in ("lost", "timeout", "stale")):
            self.ctx.pool.mark_failed(node)
            log.warn("node {node} failed ({kind}{detail}); marked down for {t}s, trying the next node",
                     node=node.key, kind=kind, detail=f": {detail}" if detail else "", t=self.config.fail_timeout)
            self.attempt += 1
            return self.try_node()
        log.warn("node {node} failed ({kind}) on a non-idempotent request", node=node.key, kind=kind)
        self.fail(504 if kind == "timeout" else 502, f"node failed: {kind}")

    def start_tunnel(self, up: UpstreamConnection, head: http1.Head) -> None:
        self.status = 101
        self.response_started = True
        parts = [b"HTTP/1.1 101 ", head.reason, http1.block_without(head, HOP_BY_HOP),
                 b"\r\nConnection: upgrade\r\nUpgrade: ", head.upgrade or self.head.upgrade, b"\r\n\r\n"]
        conn = self.conn
        conn.transport.write(b"".join(parts))
        up.set_deadline(None)
        conn.set_deadline(None)
        up.tunnel = conn.transport
        conn.tunnel = up.transport
        conn.transport.registerProducer(up.transport, True)
        up.transport.registerProducer(conn.transport, True)
        if conn.buf:
            pending, conn.buf = conn.buf, b""
            up.transport.write(pending)

    def tunnel_closed(self) -> None:
        self.finish(False)

    # -- endings ---------------------------------------------------------------------------------------------
    def fail(self, status: int, detail: str) -> None:
        """Answer with an error ourselves (nothing sent yet), or cut the client off (response under way)."""
        if self.finished:
            return
        self.release_upstream()
        if self.response_started:
            self.conn.transport.abortConnection()
            self.finish(False)
            return
        self.status = status
        keep = self.request_done and self.keep_alive and status < 500 and status != 413
        body = detail.encode() + b"\n"
        self.sent = len(body)
        self.conn.transport.write(simple_response(status, body, close=not keep))
        self.finish(keep)

    def release_upstream(self) -> None:
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        up, self.upstream = self.upstream, None
        if up is not None:
            up.abandon()
        self.resume_client()

    def client_gone(self) -> None:
        """The client went away: close the node's connection at once (a half-read response cannot be reused)."""
        if self.finished:
            return
        if not self.response_started:
            self.status = 499
        self.release_upstream()
        self.finish(False)

    def finish(self, keep_alive: bool) -> None:
        if self.finished:
            return
        self.finished = True
        self.out = []  # a response cut off mid-way: nothing more goes to the client
        self.ctx.active -= 1
        if self.store is not None:
            self.store.close()
        if self.config.access_log:
            # One pre-built line: formatting ten fields through the logger's format string cost ~5 % of the CPU.
            head, node = self.head, self.node
            log.info("{line}", line=f'{self.conn.client_ip} "{head.method.decode("latin-1")} {scrub(head.target)}" '
                     f'{self.status} {self.sent} node={node.key if node else "-"} node_status={self.node_status} '
                     f'{(self.ctx.reactor.seconds() - self.began) * 1000:.1f}ms')
        if self.conn.transport is not None and self.conn.exchange is self:
            self.conn.response_done(keep_alive)


@implementer(IHandshakeListener)
class UpstreamConnection(_Deadline, Protocol):
    """One TLS connection to a node: writes an Exchange's request, parses the response, then idles in the pool."""

    def __init__(self, ctx: ProxyContext, node: Node, pending: Exchange | None) -> None:
        self.ctx = ctx
        self.node = node
        self.pending = pending
        self.exchange: Exchange | None = None
        self.buf = b""
        self.head: http1.Head | None = None
        self.reader: http1.BodyReader | None = None
        self.reused = False
        self.handshaken = False
        self.got_any = False
        self.timed_out = False
        self.idle = False
        self.tunnel: Any = None
        self.connector: _Connect | None = None

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)  # the request head and body are separate writes: no Nagle stall
        ex, self.pending = self.pending, None
        self.ctx.upstreams.all.add(self)
        if ex is None or ex.finished:
            self.transport.abortConnection()
            return
        self.attach(ex)

    def handshakeCompleted(self) -> None:
        self.handshaken = True
        if self.connector is not None:
            self.connector.connected()
            self.connector = None

    def attach(self, ex: Exchange) -> None:
        self.exchange = ex
        self.got_any = False
        self.idle = False
        ex.upstream_ready(self)

    def abandon(self) -> None:
        """Drop this connection mid-exchange: it cannot be reused."""
        self.exchange = None
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        ex = self.exchange
        self.received(ex, data)
        if ex is not None and ex.out:
            ex.flush()

    def received(self, ex: Exchange | None, data: bytes) -> None:
        if ex is None:  # bytes on an idle connection: the node broke framing; never reuse it
            self.transport.abortConnection()
            return
        self.got_any = True
        if self.deadline is not None:
            self.set_deadline(ex.config.upstream_read_timeout)
        if self.reader is None:
            self.buf = self.buf + data if self.buf else data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buf) > MAX_RESPONSE_HEAD:
                        return self.broken(ex, "response head too large")
                    return
                raw, data = self.buf[:end], self.buf[end + 4:]
                self.buf = b""
                try:
                    head = http1.parse_response(raw, ex.head.method)
                except HTTPError as e:
                    return self.broken(ex, e.detail)
                if 100 <= head.status < 200 and head.status != 101:
                    self.buf = data  # interim response (100, 103): not forwarded
                    if not data:
                        return
                    continue
                break
            self.head = head
            if not ex.upstream_head_received(self, head):
                return
            if self.tunnel is not None:
                if data:
                    self.tunnel.write(data)
                return
            self.reader = http1.BodyReader(head.framing, head.length)
            if self.reader.done:
                return self.end(data)
            if not data:
                return
        try:
            pieces, rest = self.reader.feed(data)
        except HTTPError as e:
            return self.broken(ex, e.detail)
        if pieces:
            ex.upstream_body(pieces)
        if self.reader.done and self.exchange is ex:
            self.end(rest)

    def broken(self, ex: Exchange, detail: str) -> None:
        log.warn("node {node} sent a malformed response: {detail}", node=self.node.key, detail=detail)
        self.exchange = None
        self.transport.abortConnection()
        ex.upstream_failed(self, "bad", detail)

    def end(self, rest: bytes) -> None:
        ex, head = self.exchange, self.head
        self.exchange, self.head, self.reader = None, None, None
        reusable = not rest and head.keep_alive and head.framing != UNTIL_CLOSE  # type: ignore[union-attr]
        self.set_deadline(None)
        ex.upstream_end(self, reusable)  # type: ignore[union-attr]

    def _on_deadline(self) -> None:
        if self.idle:
            self.transport.loseConnection()
            return
        self.timed_out = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.cancel_deadline()
        self.ctx.upstreams.discard(self)
        if self.connector is not None:
            self.connector.lost(self)
            self.connector = None
            return
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.loseConnection()
        ex, self.exchange = self.exchange, None
        if ex is None:
            return
        if ex.status == 101:
            ex.tunnel_closed()
            return
        if self.reader is not None and self.head is not None and self.head.framing == UNTIL_CLOSE:
            self.reader = None
            ex.upstream_end(self, False)
            return
        if self.timed_out:
            kind = "timeout"
        elif self.got_any:
            kind = "lost"
        else:
            kind = "stale" if self.reused else "lost"
        ex.upstream_failed(self, kind)


class _Connect(ClientFactory):
    """One connection attempt to a node, bounded as a whole (TCP and TLS handshake) by the connect timeout."""

    noisy = False

    def __init__(self, ctx: ProxyContext, node: Node, ex: Exchange, timeout: float) -> None:
        self.ctx, self.node, self.exchange = ctx, node, ex
        self.protocol_instance: UpstreamConnection | None = None
        self.timer = ctx.reactor.callLater(timeout, self.timed_out)
        creator = ctx.creators.get(node.key)
        wrapper = TLSFactory(creator, self)
        self.connector = ctx.reactor.connectTCP(node.host, node.port, wrapper, timeout=timeout + 1)

    def buildProtocol(self, addr: Any) -> UpstreamConnection:
        p = UpstreamConnection(self.ctx, self.node, self.exchange)
        p.connector = self
        self.protocol_instance = p
        return p

    def connected(self) -> None:
        if self.timer.active():
            self.timer.cancel()

    def timed_out(self) -> None:
        if self.protocol_instance is not None:
            self.protocol_instance.transport.abortConnection()
        else:
            self.connector.stopConnecting()

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.report(reason.getErrorMessage())

    def lost(self, p: UpstreamConnection) -> None:
        """The connection closed before its TLS handshake finished: a connect failure."""
        p.exchange = None
        self.report("closed during the TLS handshake")

    def report(self, detail: str) -> None:
        if self.timer.active():
            self.timer.cancel()
            detail = detail or "refused"
        else:
            detail = "connect timeout"
        ex, self.exchange = self.exchange, None
        if ex is not None and not ex.finished:
            ex.upstream_failed(None, "connect", detail)

    def cancel(self) -> None:
        self.exchange = None
        if self.timer.active():
            self.timer.cancel()
        if self.protocol_instance is not None:
            self.protocol_instance.pending = None
            self.protocol_instance.exchange = None
            if self.protocol_instance.transport is not None:
                self.protocol_instance.transport.abortConnection()
        else:
            self.connector.stopConnecting()


class Upstreams:
    """Keep-alive connections to the nodes: idle ones per node (most recent first), at most upstream_keepalive."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.idle: dict[str, list[UpstreamConnection]] = {}
        self.all: set[UpstreamConnection] = set()

    def acquire(self, node: Node, ex: Exchange, timeout: float, fresh: bool = False) -> None:
        idle = self.idle.get(node.key)
        while idle and not fresh:
            up = idle.pop()
            if up.transport is None or up.transport.disconnecting:
                continue
            up.reused = True
            up.attach(ex)
            return
        ex.connecting = _Connect(self.ctx, node, ex, timeout)

    def release(self, up: UpstreamConnection) -> None:
        cfg = self.ctx.config
        idle = self.idle.setdefault(up.node.key, [])
        if self.ctx.draining or len(idle) >= cfg.upstream_keepalive or up.node not in self.ctx.pool.nodes:
            up.transport.loseConnection()
            return
        up.idle = True
        idle.append(up)
        up.set_deadline(UPSTREAM_IDLE, exact=False)

    def discard(self, up: UpstreamConnection) -> None:
        self.all.discard(up)
        idle = self.idle.get(up.node.key)
        if idle and up in idle:
            idle.remove(up)

    def close_idle(self, keep: set[str] | None = None) -> None:
        for key, idle in list(self.idle.items()):
            if keep is None or key not in keep:
                for up in idle:
                    up.transport.loseConnection()
                del self.idle[key]


class StaticFiles:
    """`webapp_dir`: a customised web app served from disk (GET/HEAD), never outside its directory."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def serve(self, ex: Exchange, rel: bytes) -> None:
        if ex.head.method not in (b"GET", b"HEAD"):
            return ex.fail(405, "only GET and HEAD here")
        text = unquote(rel.split(b"?", 1)[0].decode("latin-1"))
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if any(p == ".." or "\\" in p or "\x00" in p for p in parts):
            return ex.fail(404, "not found")
        path = os.path.realpath(os.path.join(self.root, *parts))
        if path != self.root and not path.startswith(self.root + os.sep):
            return ex.fail(404, "not found")
        if os.path.isdir(path):
            path = os.path.join(path, "index.html")
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed when the transfer ends)
            size = os.fstat(f.fileno()).st_size
        except OSError:
            return ex.fail(404, "not found")
        ctype = (mimetypes.guess_type(path)[0] or "application/octet-stream").encode()
        ex.status, ex.node_status = 200, "static"
        ex.response_started = True
        close = not (ex.request_done and ex.keep_alive)
        transport = ex.conn.transport
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
                        % (ctype, size, b"Connection: close\r\n" if close else b""))
        if ex.head.method == b"HEAD":
            f.close()
            return ex.finish(not close)
        ex.sent = size

        def done(result: object) -> None:
            f.close()
            ex.finish(not close)

        FileSender().beginFileTransfer(f, transport).addBoth(done)


class ProxyFactory(ServerFactory):
    noisy = False
    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx

    def buildProtocol(self, addr: Any) -> ClientConnection:
        return ClientConnection(self.ctx)


class RedirectConnection(_Deadline, Protocol):
    """The plain-HTTP listener: every request gets a 301 to the same host, path and query on HTTPS."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.buf = b""

    def connectionMade(self) -> None:
        self.set_deadline(self.ctx.config.client_timeout)

    def dataReceived(self, data: bytes) -> None:
        if self.buf is None:
            return
        self.buf += data.lstrip(b"\r\n") if not self.buf else data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self.answer(simple_response(431))
            return
        try:
            head = http1.parse_request(self.buf[:end])
        except HTTPError as e:
            self.answer(simple_response(e.status, e.detail.encode() + b"\n"))
            return
        cfg = self.ctx.config
        host = head.get(b"host") or b""
        if not _HOST.match(host):
            host = cfg.hostname.encode("idna")
        host = host[: host.index(b"]") + 1] if host.startswith(b"[") else host.split(b":", 1)[0]
        port = cfg.https.port if cfg.https else 443
        if port != 443:
            host += b":%d" % port
        location = b"https://" + host + (head.target if head.target.startswith(b"/") else b"/")
        self.answer(b"HTTP/1.1 301 Moved Permanently\r\nLocation: %s\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n" % location)

    def answer(self, response: bytes) -> None:
        self.buf = None  # type: ignore[assignment]
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
