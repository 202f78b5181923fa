"""Upstream selection: which Conferencing Node a request goes to, and where it fails over to.

Pure: names and time in, ordered attempt lists out; the clock is injected. A node is usable unless a request to it
failed less than `fail_timeout` ago (passive marking) or the active health check last found it unhealthy. When the
passive mark expires the node is simply offered again: the next request is the probe.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(eq=False)
class Node:
    """One upstream node and its health; `key` ("host:port") is how reloads recognise it."""

    key: str
    host: str  # the address connected to (resolved once per config load)
    port: int
    server_name: str | None = None  # SNI / certificate name, when the node was configured by DNS name
    weight: int = 1
    down_until: float = 0.0  # passive: failed at some time, skip until then
    healthy: bool = True  # active health check's last verdict
    current: int = 0  # smooth weighted round-robin state

    def usable(self, now: float) -> bool:
        return self.healthy and now >= self.down_until


def _affinity_score(client_ip: str, node: Node) -> float:
    """Weighted rendezvous hashing: a client keeps its node while that node is up, and only clients of a removed
    node move when the list changes."""
    digest = hashlib.blake2b(f"{client_ip}|{node.key}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -node.weight / math.log(unit)


class Balancer:
    """Picks the node for each request and the failover order behind it; remembers which nodes failed."""

    def __init__(self, nodes: Sequence[Node], *, balance: str = "round_robin", fail_timeout: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nodes: list[Node] = list(nodes)
        self.balance = balance
        self.fail_timeout = fail_timeout
        self.clock = clock

    def plan(self, client_ip: str) -> list[Node]:
        """The nodes to try, in order: the chosen one first, then the other usable ones (failover).

        Empty when every node is down: the caller answers 502 at once instead of waiting on dead nodes."""
        now = self.clock()
        up = [n for n in self.nodes if n.healthy and now >= n.down_until]  # (Node.usable, inlined: per request)
        if len(up) <= 1:
            return up
        if self.balance == "client_ip":
            return sorted(up, key=lambda n: _affinity_score(client_ip, n), reverse=True)
        # nginx's smooth weighted round-robin: evenly interleaved, exact proportions over sum(weights) picks
        total = 0
        best = up[0]
        for n in up:
            n.current += n.weight
            total += n.weight
            if n.current > best.current:
                best = n
        best.current -= total
        i = up.index(best)
        return up[i:] + up[:i]

    def mark_failed(self, node: Node) -> None:
        """A connect error or timeout: skip the node for `fail_timeout`, then let one request probe it."""
        node.down_until = self.clock() + self.fail_timeout

    def mark_ok(self, node: Node) -> None:
        node.down_until = 0.0

    def set_health(self, node: Node, healthy: bool) -> None:
        node.healthy = healthy
        if healthy:
            node.down_until = 0.0

    def replace(self, nodes: Sequence[Node]) -> None:
        """New node list (SIGHUP): nodes that stay keep their health state; in-flight requests keep their Node."""
        old = {n.key: n for n in self.nodes}
        merged = []
        for n in nodes:
            kept = old.get(n.key)
            if kept is not None and (kept.host, kept.port) == (n.host, n.port):
                kept.weight, kept.server_name = n.weight, n.server_name
                merged.append(kept)
            else:
                merged.append(n)
        for n in merged:
            n.current = 0
        self.nodes = merged

    def status(self) -> list[tuple[str, bool]]:
        now = self.clock()
        return [(n.key, n.usable(now)) for n in self.nodes]
