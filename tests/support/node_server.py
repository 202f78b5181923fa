"""The Conferencing-Node stand-ins' server, run as `python tests/support/node_server.py <spec.json>` by
tests.support.revproxy_process.Nodes: small twisted.web HTTPS sites, each on its own 127.0.0.x address with its own
self-signed certificate; a line on stdin stops or starts one (`stop a` / `start a`, answered `ok ...`), and every
node answers `/stats` with what it saw. Besides: /echo, /big?n=, /status/CODE, /slow?delay=, .../events (server-sent
events), .../request_token (PIN 1234), WebSocket upgrades; anything else answers what it received (method, URI,
headers, body length) as JSON."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def pattern(n: int) -> bytes:
    block = bytes(range(256)) * 256
    return (block * (n // len(block) + 1))[:n]


def serve(spec_file: str) -> None:
    """Serve every node of the spec file until stdin closes (runs in the node subprocess)."""
    from twisted.internet import reactor
    from twisted.internet import ssl as tssl
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.stdio import StandardIO
    from twisted.protocols.basic import LineReceiver
    from twisted.web import resource, server

    WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    class Node(resource.Resource):
        isLeaf = True

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name
            self.stats = {"node": name, "requests": 0, "events_open": 0, "events_gone": 0, "connections": 0}

        def render(self, request: Any) -> Any:
            self.stats["requests"] += 1
            path = request.path
            args = {k.decode(): v[0].decode() for k, v in request.args.items()}
            if path == b"/stats":
                return self.json(request, self.stats)
            if path == b"/echo":
                body = request.content.read()
                request.setHeader(b"content-type", b"application/octet-stream")
                request.setHeader(b"x-sha256", hashlib.sha256(body).hexdigest().encode())
                return body
            if path == b"/big":
                n = int(args.get("n", "0"))
                request.setHeader(b"content-length", b"%d" % n)
                data = pattern(n)
                for i in range(0, n, 65536):
                    request.write(data[i: i + 65536])
                request.finish()
                return server.NOT_DONE_YET
            if path.endswith(b"/request_token") and request.method == b"POST":  # a conference with PIN 1234
                if request.getHeader(b"pin") != b"1234":
                    request.setResponseCode(403)
                    return self.json(request, {"status": "success", "result": "Invalid PIN"})
                return self.json(request, {"status": "success", "result": {"token": "t-" + self.name}})
            if path.startswith(b"/status/"):
                request.setResponseCode(int(path.rsplit(b"/", 1)[1]))
                return self.name.encode()
            if path == b"/slow":
                reactor.callLater(float(args.get("delay", "1")), self.finish_json, request)
                return server.NOT_DONE_YET
            if path.endswith(b"/events"):
                return self.events(request, int(args.get("count", "1000")), float(args.get("interval", "0.2")))
            request.setHeader(b"x-node", self.name.encode())
            request.setHeader(b"connection", b"x-hop")
            request.setHeader(b"x-hop", b"must not reach the client")
            return self.json(request, self.whoami(request))

        def whoami(self, request: Any) -> dict[str, Any]:
            headers: dict[str, list[str]] = {}
            for k, vs in request.requestHeaders.getAllRawHeaders():
                headers.setdefault(k.decode().lower(), []).extend(v.decode() for v in vs)
            return {"node": self.name, "method": request.method.decode(), "uri": request.uri.decode(),
                    "headers": headers, "body": len(request.content.read())}

        def finish_json(self, request: Any) -> None:
            if not request.finished and not request._disconnected:
                request.write(json.dumps({"node": self.name}).encode())
                request.finish()

        def json(self, request: Any, obj: Any) -> bytes:
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(obj).encode()

        def events(self, request: Any, count: int, interval: float) -> Any:
            request.setHeader(b"content-type", b"text/event-stream")
            request.setHeader(b"cache-control", b"no-cache")
            self.stats["events_open"] += 1
            state = {"n": 0, "call": None}

            def tick() -> None:
                request.write(b"event: tick\ndata: %d %f\n\n" % (state["n"], time.time()))
                state["n"] += 1
                if state["n"] >= count:
                    self.stats["events_open"] -= 1
                    request.finish()
                else:
                    state["call"] = reactor.callLater(interval, tick)

            def gone(_: Any) -> None:
                if state["call"] is not None and state["call"].active():
                    state["call"].cancel()
                    self.stats["events_open"] -= 1
                    self.stats["events_gone"] += 1

            request.notifyFinish().addErrback(gone)
            tick()
            return server.NOT_DONE_YET

    class Peek(Protocol):
        """A /ws upgrade is answered here as a raw WebSocket echo; anything else goes to twisted.web."""

        def __init__(self, factory: Any) -> None:
            self.factory = factory
            self.inner: Any = None
            self.ws = False
            self.buf = b""

        def connectionMade(self) -> None:
            self.factory.conns.add(self)
            self.factory.node.stats["connections"] += 1

        def dataReceived(self, data: bytes) -> None:
            if self.inner is not None:
                return self.inner.dataReceived(data)
            self.buf += data
            if not self.ws and not self.buf.startswith(b"GET /ws"):
                self.inner = self.factory.site.buildProtocol(None)
                self.inner.makeConnection(self.transport)
                data, self.buf = self.buf, b""
                return self.inner.dataReceived(data)
            if not self.ws:
                if b"\r\n\r\n" not in self.buf:
                    return
                head, self.buf = self.buf.split(b"\r\n\r\n", 1)
                key = next(ln.split(b":", 1)[1].strip() for ln in head.split(b"\r\n")
                       if ln.lower().startswith(b"sec-websocket-key:"))
                accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
                self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                self.ws = True
            self.frames()

        def frames(self) -> None:
            while len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                n, pos = b1 & 0x7F, 2
                if n == 126:
                    n, pos = int.from_bytes(self.buf[2:4], "big"), 4
                elif n == 127:
                    n, pos = int.from_bytes(self.buf[2:10], "big"), 10
                if len(self.buf) < pos + 4 + n:
                    return
                mask, payload = self.buf[pos: pos + 4], self.buf[pos + 4: pos + 4 + n]
                self.buf = self.buf[pos + 4 + n:]
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
                opcode = b0 & 0x0F
                length = (bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big") if n < 65536
                          else bytes([127]) + n.to_bytes(8, "big"))
                self.transport.write(bytes([0x80 | opcode]) + length + payload)
                if opcode == 8:
                    self.transport.loseConnection()
                    return

        def connectionLost(self, reason: Any = None) -> None:
            self.factory.conns.discard(self)
            if self.inner is not None:
                self.inner.connectionLost(reason)

    class NodeFactory(Factory):
        def __init__(self, node: Node) -> None:
            self.node = node
            self.site = server.Site(node)
            self.site.displayTracebacks = False
            self.conns: set[Peek] = set()

        def buildProtocol(self, addr: Any) -> Peek:
            return Peek(self)

    specs = json.loads(Path(spec_file).read_text())
    factories: dict[str, Any] = {}
    ports: dict[str, Any] = {}
    contexts: dict[str, Any] = {}

    def start(name: str) -> None:
        s = next(x for x in specs if x["name"] == name)
        if name not in factories:
            factories[name] = NodeFactory(Node(name))
            pem = Path(s["cert"]).read_bytes() + Path(s["key"]).read_bytes()
            contexts[name] = tssl.PrivateCertificate.loadPEM(pem).options()
        ports[name] = reactor.listenSSL(s["port"], factories[name], contexts[name], interface=s["host"])

    def stop(name: str) -> None:
        ports.pop(name).stopListening()
        for p in list(factories[name].conns):
            p.transport.abortConnection()

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            verb, name = line.decode().split()
            (start if verb == "start" else stop)(name)
            self.transport.write(f"ok {verb} {name}\n".encode())

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:
                reactor.stop()

    for s in specs:
        start(s["name"])
    StandardIO(Control())
    reactor.run()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    serve(sys.argv[1])
