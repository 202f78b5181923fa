"""Server-sent-event load for the benchmark: an upstream that emits timestamped events, and a client that holds
thousands of streams. Both are one selectors loop over non-blocking `ssl` sockets (no framework per connection,
so thousands of streams stay cheap), run as subprocesses:

    python revproxy_bench_sse.py emit <host> <port> <cert> <key> <interval>
    python revproxy_bench_sse.py client <proxy host> <proxy port> <source address> <streams> <path>

The emitter answers `.../events` with a chunked `text/event-stream` and then sends each stream one event every
`interval` seconds, spread evenly over the interval: `data: <seq> <unix time>`. Any other path gets a small JSON.

The client opens its streams (a bounded number of handshakes at a time), prints `{"established": n, "failed": m}`
once all are open or failed, then obeys stdin: `measure` starts recording event lag (receive time minus the
event's timestamp, same host clock), `report` prints the lags and per-stream counts as one JSON line, `quit` ends.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import ssl
import sys
import time

from appliance.limits import raise_open_files_limit
from appliance.sockets import bind_tcp

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
JSON_BODY = b'{"status": "success"}'
JSON_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(JSON_BODY), JSON_BODY))


def raise_nofile() -> int:
    return raise_open_files_limit()[0]


# -- emitter ------------------------------------------------------------------------------------------------------
class _Upstream:
    __slots__ = ("buf", "dead", "out", "seq", "sock", "streaming", "tls_done")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.tls_done = False
        self.buf = b""
        self.out = b""
        self.streaming = False
        self.dead = False
        self.seq = 0


def emit(host: str, port: int, cert: str, key: str, interval: float) -> None:
    raise_nofile()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = bind_tcp(host, port)
    sel = selectors.DefaultSelector()
    sel.register(listener, READ, None)
    streams: list[_Upstream] = []
    cursor, owed, last = 0, 0.0, time.monotonic()

    def close(c: _Upstream) -> None:
        if not c.dead:
            c.dead = True
            sel.unregister(c.sock)
            c.sock.close()

    def send(c: _Upstream, data: bytes) -> None:
        if c.out:  # still blocked: keep order
            c.out += data
            return
        try:
            n = c.sock.send(data)
        except ssl.SSLWantWriteError:
            n = 0
        except OSError:
            return close(c)
        if n < len(data):
            c.out = data[n:]
            sel.modify(c.sock, READ | WRITE, c)

    def event(c: _Upstream) -> None:
        payload = b"data: %d %.6f\n\n" % (c.seq, time.time())
        c.seq += 1
        send(c, b"%x\r\n%s\r\n" % (len(payload), payload))

    def readable(c: _Upstream) -> None:
        if not c.tls_done:
            try:
                c.sock.do_handshake()
                c.tls_done = True
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                sel.modify(c.sock, READ | WRITE, c)
                return
            except OSError:
                return close(c)
        while True:
            try:
                data = c.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError:
                return close(c)
            if not data:
                return close(c)
            if c.streaming:
                continue
            c.buf += data
            while b"\r\n\r\n" in c.buf:
                head, c.buf = c.buf.split(b"\r\n\r\n", 1)
                target = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
                if target.split(b"?")[0].endswith(b"/events"):
                    c.streaming = True
                    send(c, SSE_HEAD)
                    event(c)
                    streams.append(c)
                    break
                send(c, JSON_RESPONSE)

    while True:
        now = time.monotonic()
        live = len(streams)
        # Each stream gets one event per interval: send to the share of the list that is due since last time.
        owed += (now - last) * live / interval if live else 0.0
        last = now
        while owed >= 1 and streams:
            if cursor >= len(streams):
                cursor = 0
                if sum(c.dead for c in streams) > len(streams) // 4:  # compact now and then
                    streams[:] = [c for c in streams if not c.dead]
                    if not streams:
                        break
            c = streams[cursor]
            cursor += 1
            owed -= 1
            if not c.dead and not c.out:
                event(c)
        for key, mask in sel.select(timeout=0.005):
            c = key.data
            if c is None:
                for _ in range(256):
                    try:
                        sock, _addr = listener.accept()
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno in (errno.EMFILE, errno.ENFILE):
                            print(f"emitter {host}:{port}: out of file descriptors", file=sys.stderr, flush=True)
                        break
                    sock.setblocking(False)
                    s = ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                    c = _Upstream(s)
                    sel.register(s, READ, c)
                continue
            if c.dead:
                continue
            if mask & WRITE:
                if not c.tls_done:
                    sel.modify(c.sock, READ, c)
                    readable(c)
                    continue
                out, c.out = c.out, b""
                sel.modify(c.sock, READ, c)
                send(c, out)
            if mask & READ and not c.dead:
                readable(c)


# -- client -------------------------------------------------------------------------------------------------------
class _Stream:
    __slots__ = ("buf", "chunk_left", "dead", "events", "head_done", "phase", "raw", "sock", "text")

    def __init__(self, raw: socket.socket) -> None:
        self.raw = raw
        self.sock: ssl.SSLSocket | None = None
        self.phase = "connect"  # connect -> tls -> head -> stream
        self.buf = b""
        self.text = b""
        self.chunk_left = -1  # -1: expecting a chunk-size line; n >= 0: bytes of chunk data (+ CRLF) left
        self.head_done = False
        self.events = 0
        self.dead = False


def client(host: str, port: int, source: str, count: int, path: str, inflight_max: int = 64) -> None:
    raise_nofile()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    request = b"GET %s HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n" % path.encode()
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.fileno(), READ, "stdin")
    established = failed = opened = inflight = 0
    measuring = False
    lags: list[float] = []
    streams: list[_Stream] = []
    announced = False
    errors: dict[str, int] = {}

    def fail(s: _Stream, why: str) -> None:
        nonlocal failed, inflight
        if s.dead:
            return
        s.dead = True
        errors[why] = errors.get(why, 0) + 1
        if s.phase != "stream":
            failed += 1
            inflight -= 1
        sel.unregister(s.sock or s.raw)
        (s.sock or s.raw).close()

    def open_one() -> None:
        nonlocal opened, inflight
        raw = socket.socket()
        raw.setblocking(False)
        raw.bind((source, 0))
        s = _Stream(raw)
        opened += 1
        inflight += 1
        streams.append(s)
        rc = raw.connect_ex((host, port))
        if rc not in (0, errno.EINPROGRESS):
            sel.register(raw, WRITE, s)
            return fail(s, os.strerror(rc))
        sel.register(raw, WRITE, s)

    def on_events(s: _Stream, data: bytes, now: float) -> None:
        """Chunked body in; complete `data:` lines out."""
        s.buf += data
        while s.buf:
            if s.chunk_left < 0:
                end = s.buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(s.buf[:end].split(b";")[0], 16)
                s.buf = s.buf[end + 2:]
                if size == 0:
                    return fail(s, "stream ended")
                s.chunk_left = size + 2
            take = s.buf[: s.chunk_left]
            s.buf = s.buf[s.chunk_left:]
            s.chunk_left -= len(take)
            s.text += take[:-2] if s.chunk_left == 0 else take
            if s.chunk_left == 0:
                s.chunk_left = -1
        while b"\n\n" in s.text:
            ev, s.text = s.text.split(b"\n\n", 1)
            for line in ev.split(b"\n"):
                if line.startswith(b"data: "):
                    s.events += 1
                    if measuring:
                        lags.append(now - float(line.split()[2]))

    def step(s: _Stream, mask: int) -> None:
        nonlocal established, inflight
        if s.phase == "connect":
            err = s.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                return fail(s, os.strerror(err))
            sel.unregister(s.raw)
            s.sock = ctx.wrap_socket(s.raw, server_hostname="localhost", do_handshake_on_connect=False)
            sel.register(s.sock, READ, s)
            s.phase = "tls"
        if s.phase == "tls":
            try:
                s.sock.do_handshake()
            except ssl.SSLWantReadError:
                sel.modify(s.sock, READ, s)
                return
            except ssl.SSLWantWriteError:
                sel.modify(s.sock, WRITE, s)
                return
            except OSError as e:
                return fail(s, f"tls: {e.__class__.__name__}")
            sel.modify(s.sock, READ, s)
            s.sock.send(request)
            s.phase = "head"
            return
        while True:
            try:
                data = s.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError as e:
                return fail(s, f"recv: {e.__class__.__name__}")
            if not data:
                return fail(s, "closed by the proxy")
            now = time.time()
            if s.phase == "head":
                s.buf += data
                end = s.buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                head, rest = s.buf[:end], s.buf[end + 4:]
                if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
                    return fail(s, f"bad head: {head[:40]!r}")
                s.buf = b""
                s.phase = "stream"
                established += 1
                inflight -= 1
                data = rest
                if not data:
                    continue
            on_events(s, data, now)

    started = time.monotonic()
    while True:
        while opened < count and inflight < inflight_max:
            open_one()
        if not announced and established + failed >= count:
            announced = True
            print(json.dumps({"established": established, "failed": failed, "errors": errors,
                              "seconds": round(time.monotonic() - started, 2)}), flush=True)
        for key, mask in sel.select(timeout=0.5):
            if key.data == "stdin":
                line = sys.stdin.readline().strip()
                if line == "measure":
                    measuring = True
                    for s in streams:
                        s.events = 0
                elif line == "report":
                    measuring = False
                    alive = [s for s in streams if not s.dead and s.phase == "stream"]
                    print(json.dumps({"lags": [round(x, 5) for x in lags], "alive": len(alive),
                                      "silent": sum(1 for s in alive if s.events == 0), "errors": errors}),
                          flush=True)
                elif line in ("quit", ""):
                    return
                continue
            s = key.data
            if not s.dead:
                step(s, mask)


if __name__ == "__main__":
    if sys.argv[1] == "emit":
        emit(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], float(sys.argv[6]))
    elif sys.argv[1] == "client":
        client(sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), sys.argv[6])
    else:
        sys.exit(f"usage: {sys.argv[0]} emit|client ...")
