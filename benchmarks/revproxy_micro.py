#!/usr/bin/env python3
"""Micro-benchmark of the proxy's per-request path in one process: calls per request and µs per request.

    .venv/bin/python benchmarks/revproxy_micro.py [--requests 3000] [--access-log off|file|twistd] [--top 25]

The real proxy objects (`ProxyContext` with the request guards the service installs, `ClientConnection` and
`NodeConnection` under `appliance.tls_transport`, the forwarder, exchange, heads, the connection pool and the access
log) on a `MemoryReactorClock`, with real TLS on both sides: a browser and a node stand-in are plain
`ssl.SSLObject`s driven by this script, and the proxy's TCP transports are in-memory (`BenchTransport`). One
keep-alive client connection sends the benchmark's small-JSON GET over and over; round-robin sends them over three
nodes, as in the wrk benchmark (`--nodes`), whose stand-ins answer each with the small JSON (Content-Length) over
one pooled connection each.

Per request, only the proxy's side is measured: the client's TLS records into the proxy (head parsed, routed, the
request encrypted towards the node) and the node's records into the proxy (response head rewritten, encrypted
towards the client, access-log line). The peers' own TLS work is not in it.

- calls per request: `cProfile` over the proxy's side of `--requests` requests, all calls it counts (Python
  functions and C builtins/methods) split in two, divided by the requests. Deterministic: the same code gives the
  same figure on a busy machine, so it shows what a change removes.
- µs per request: the same without the profiler, `time.process_time` (CPU of this process), median of 5 runs. On a
  shared machine this one is noisy; compare runs made back to back.

What it leaves out compared with `twistd revproxy` under wrk: the reactor (epoll and `appliance.lean_dispatch`, the
TLS connection's own socket read and its send straight to the socket — here it falls back to `transport.write` of
the fake), the kernel's socket work and the real twistd log observer's file (`--access-log twistd` writes the text
observer's lines to /dev/null, through a `LogFile`-like flush per line).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import ssl
import statistics
import sys
import tempfile
import time
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogBeginner, textFileLogObserver

from appliance import certs
from appliance.tls_transport import TLSFactory
from revproxy import guards, ldap_guard, node_tls
from revproxy.balancer import Balancer, Node
from revproxy.client import ProxyFactory
from revproxy.config import NodeSpec, ProxyConfig
from revproxy.context import ProxyContext

SMALL_PATH = b"/api/client/v2/conferences/bench/status"
SMALL_BODY = (b'{"status": "success", "result": {"service_type": "conference", "participant_count": 7, '
              b'"locked": false, "guests_can_present": true}}')
REQUEST = (b"GET " + SMALL_PATH + b" HTTP/1.1\r\nHost: localhost\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 29 Nov 2026 15:00:00 GMT\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
            % (len(SMALL_BODY), SMALL_BODY))


class BenchTransport:
    """The TCP transport under a `TLSConnection`, in memory: what is written is kept for the peer to read."""

    disconnecting = False
    connected = True

    def __init__(self, peer: str) -> None:
        self.out: list[bytes] = []
        self.producer: Any = None
        self.producerPaused = False
        self.peer = IPv4Address("TCP", peer, 40000)
        self.host = IPv4Address("TCP", "127.0.0.1", 443)

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.out.extend(data)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.producerPaused = True

    def resumeProducing(self) -> None:
        self.producerPaused = False

    def stopProducing(self) -> None:
        pass

    def loseConnection(self) -> None:
        self.disconnecting = True

    def abortConnection(self) -> None:
        self.disconnecting = True

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getPeer(self) -> IPv4Address:
        return self.peer

    def getHost(self) -> IPv4Address:
        return self.host


class Peer:
    """A TLS endpoint driven by the benchmark (the browser, or the node stand-in)."""

    def __init__(self, sslobj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> None:
        self.sslobj, self.incoming, self.outgoing = sslobj, incoming, outgoing

    def feed(self, records: bytes) -> bytes:
        """Records from the proxy in; the plaintext they held out."""
        self.incoming.write(records)
        out = []
        while True:
            try:
                out.append(self.sslobj.read(65536))
            except ssl.SSLWantReadError:
                break
        return b"".join(out)

    def handshake(self) -> bool:
        try:
            self.sslobj.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False

    def send(self, plaintext: bytes) -> bytes:
        self.sslobj.write(plaintext)
        return self.outgoing.read()

    def pending(self) -> bytes:
        return self.outgoing.read()


def peer(context: ssl.SSLContext, server_side: bool) -> Peer:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return Peer(context.wrap_bio(incoming, outgoing, server_side=server_side), incoming, outgoing)


def handshake(theirs: Peer, ours: Any, transport: BenchTransport) -> None:
    """Carry records between a Peer and a proxy-side TLSConnection (on `transport`) until both are done."""
    for _ in range(20):
        done = theirs.handshake()
        data = theirs.pending()
        if data:
            ours.dataReceived(data)
        back = transport.take()
        if back:
            theirs.incoming.write(back)
        if done and ours.handshaken and not data and not back:
            return
    raise RuntimeError("TLS handshake did not finish in memory")


class NodeStandIn:
    """One node: its TLS server side (a Peer), and the proxy's connection to it once opened."""

    def __init__(self, context: ssl.SSLContext, host: str) -> None:
        self.peer = peer(context, server_side=True)
        self.tcp = BenchTransport(host)
        self.tls: Any = None


class Bench:
    def __init__(self, workdir: str, access: str, nodes: int = 3) -> None:
        bundle = certs.ensure_self_signed(os.path.join(workdir, "bundle.pem"), "localhost")
        access_log: bool | str = {"off": False, "twistd": True}.get(access, os.path.join(workdir, "access.log"))
        self.reactor = MemoryReactorClock()
        # The real reactor's clock is `time.time`, a C call; MemoryReactorClock's is a Python method, ten calls a
        # request that twistd does not make. (The clock is never advanced here.)
        self.reactor.seconds = time.time  # type: ignore[method-assign]
        specs = tuple(NodeSpec(f"127.0.0.{i + 2}", 443) for i in range(nodes))
        self.config = ProxyConfig(nodes=specs, hostname="localhost", access_log=access_log, verify_nodes=False)
        balancer = Balancer([Node(s.name, s.host, s.port) for s in specs], fail_timeout=self.config.fail_timeout,
                            clock=self.reactor.seconds)
        creators = {s.name: node_tls.client_creator(s.host, None, False) for s in specs}
        self.ctx = ProxyContext(self.config, balancer, self.reactor, creators)  # type: ignore[arg-type]
        guards.install(self.ctx)  # as RevproxyService does: both guards are asked about every request, even off
        ldap_guard.install(self.ctx)
        server_tls = certs.ServerTLS(bundle)

        # the client connection: a browser Peer <-> TLSConnection(ClientConnection)
        browser_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        browser_ctx.check_hostname, browser_ctx.verify_mode = False, ssl.CERT_NONE
        self.browser = peer(browser_ctx, server_side=False)
        addr = IPv4Address("TCP", "192.0.2.10", 40000)
        self.client_tls = TLSFactory(server_tls, ProxyFactory(self.ctx)).buildProtocol(addr)
        self.client_tcp = BenchTransport("192.0.2.10")
        self.client_tls.makeConnection(self.client_tcp)
        handshake(self.browser, self.client_tls, self.client_tcp)

        # the node stand-ins, each connected when the proxy first opens a connection to it
        self.nodes = {s.host: NodeStandIn(server_tls.context, s.host) for s in specs}
        self.opened = 0  # node connection attempts (the reactor's tcpClients) already completed

    def open_node_connections(self) -> None:
        for host, _, factory, *_ in self.reactor.tcpClients[self.opened:]:
            self.opened += 1
            node = self.nodes[host]
            node.tls = factory.buildProtocol(IPv4Address("TCP", host, 443))
            node.tls.makeConnection(node.tcp)
            node.peer.incoming.write(node.tcp.take())  # the proxy's ClientHello
            handshake(node.peer, node.tls, node.tcp)

    # -- one request: the two proxy-side steps, and the peers' work around them -----------------------------------
    def client_records(self) -> bytes:
        return self.browser.send(REQUEST)

    def proxy_reads_request(self, records: bytes) -> None:
        self.client_tls.dataReceived(records)

    def node_answers(self) -> tuple[Any, bytes]:
        """The node connection the request went to, and its response as records."""
        if len(self.reactor.tcpClients) > self.opened:
            self.open_node_connections()
        # (on a new connection the request went to the peer with the end of the handshake)
        node = next(n for n in self.nodes.values() if n.tcp.out or n.peer.incoming.pending)
        request = node.peer.feed(node.tcp.take())
        if not request.startswith(b"GET "):
            raise RuntimeError(f"the node got {request[:60]!r}")
        return node.tls, node.peer.send(RESPONSE)

    def browser_reads(self) -> bytes:
        return self.browser.feed(self.client_tcp.take())

    def one(self) -> None:
        self.proxy_reads_request(self.client_records())
        node_tls, records = self.node_answers()
        node_tls.dataReceived(records)
        answer = self.browser_reads()
        if not answer.startswith(b"HTTP/1.1 200 ") or not answer.endswith(SMALL_BODY):
            raise RuntimeError(f"the browser got {answer[:80]!r}")

    def run(self, n: int, timed: Any = None) -> float:
        """`n` requests; the CPU seconds of the proxy's side, or that side run under `timed` (a profiler)."""
        spent = 0.0
        clock = time.process_time

        def proxy_side(step: Any, records: bytes) -> float:
            """Run one step of the proxy's side: under the profiler, or timed (its CPU seconds)."""
            if timed is not None:
                timed.enable()
                step(records)
                timed.disable()
                return 0.0
            start = clock()
            step(records)
            return clock() - start

        for _ in range(n):
            spent += proxy_side(self.proxy_reads_request, self.client_records())
            node_tls, records = self.node_answers()
            spent += proxy_side(node_tls.dataReceived, records)
            answer = self.browser_reads()
            if not answer.endswith(SMALL_BODY):
                raise RuntimeError(f"the browser got {answer[:80]!r}")
        return spent


def count_calls(stats: pstats.Stats) -> tuple[int, int]:
    """(Python function calls, C function calls) in a profile."""
    python = builtin = 0
    for (filename, _, name), (_, ncalls, _, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if filename == "~" and "_lsprof" in name:
            continue  # the profiler's own enable/disable around each step
        if filename == "~":
            builtin += ncalls
        else:
            python += ncalls
    return python, builtin


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3000, help="requests per measurement (default 3000)")
    p.add_argument("--access-log", choices=("off", "file", "twistd"), default="file",
                   help="where access-log lines go (default file, as the benchmark's proxy)")
    p.add_argument("--top", type=int, default=0, help="also print the N functions with most calls")
    p.add_argument("--python", action="store_true", help="with --top: Python functions only")
    p.add_argument("--nodes", type=int, default=3, help="nodes behind the proxy (default 3, as the wrk benchmark)")
    p.add_argument("--runs", type=int, default=5, help="timed runs, the median reported (default 5)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as workdir:
        devnull = None
        if a.access_log == "twistd":  # twistd's own observer: text lines, flushed per event
            devnull = open(os.devnull, "w")  # noqa: SIM115
            globalLogBeginner.beginLoggingTo([textFileLogObserver(_Flushing(devnull))], redirectStandardIO=False)
        bench = Bench(workdir, a.access_log, a.nodes)
        for _ in range(50):  # warm up: the node connection opened and pooled, caches filled
            bench.one()
        profiler = cProfile.Profile()
        bench.run(a.requests, timed=profiler)
        stats = pstats.Stats(profiler)
        python, builtin = count_calls(stats)
        times = [bench.run(a.requests) / a.requests * 1e6 for _ in range(a.runs)]
        print(f"access log: {a.access_log}; {a.nodes} nodes; {a.requests} requests x {a.runs} runs")
        print(f"calls per request: {(python + builtin) / a.requests:.1f} "
              f"({python / a.requests:.1f} Python, {builtin / a.requests:.1f} C)")
        print(f"CPU us per request: median {statistics.median(times):.1f} (min {min(times):.1f}, "
              f"max {max(times):.1f})")
        if a.top:
            rows = sorted(((k, v) for k, v in stats.stats.items()  # type: ignore[attr-defined]
                           if not (a.python and k[0] == "~")), key=lambda kv: -kv[1][1])[: a.top]
            for (filename, line, name), (_, ncalls, tt, _, _) in rows:
                where = name if filename == "~" else f"{os.path.relpath(filename)}:{line}({name})"
                print(f"{ncalls / a.requests:6.2f}  {tt / a.requests * 1e6:6.2f} us  {where}")
        if devnull is not None:
            devnull.close()
    return 0


class _Flushing:
    """A text file flushed after every write, as twistd's LogFile is."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def write(self, text: str) -> None:
        self.f.write(text)
        self.f.flush()

    def flush(self) -> None:
        self.f.flush()


if __name__ == "__main__":
    sys.exit(main())
