"""Keep-alive connections to the nodes: idle ones per node (most recent first), at most `upstream_keepalive`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from revproxy.balancer import Node
from revproxy.node import Connect, NodeConnection

if TYPE_CHECKING:
    from revproxy.context import ProxyContext
    from revproxy.forward import Forwarder

UPSTREAM_IDLE = 30.0  # seconds an idle node connection is kept


class NodeConnections:
    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.idle: dict[str, list[NodeConnection]] = {}
        self.all: set[NodeConnection] = set()

    def acquire(self, node: Node, fw: Forwarder, timeout: float, fresh: bool = False) -> None:
        """Give `fw` a connection to `node`: an idle one at once, else a new one (`fw.connecting`) when it opens."""
        idle = self.idle.get(node.key)
        while idle and not fresh:
            up = idle.pop()
            if up.transport is None or up.transport.disconnecting:
                continue
            up.reused = True
            up.attach(fw)
            return
        fw.connecting = Connect(self.ctx, node, fw, timeout)

    def release(self, up: NodeConnection) -> None:
        cfg = self.ctx.config
        idle = self.idle.setdefault(up.node.key, [])
        if self.ctx.draining or len(idle) >= cfg.upstream_keepalive or up.node not in self.ctx.balancer.nodes:
            up.transport.loseConnection()
            return
        up.idle = True
        idle.append(up)
        up.set_deadline(UPSTREAM_IDLE, exact=False)

    def discard(self, up: NodeConnection) -> None:
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
