"""TLS towards the Conferencing Nodes: a client context with SNI (for nodes configured by name) and optional
verification against the system store or a CA file. `appliance.tls_transport` runs the connections of both sides.

The server side (the certificate bundle, its checks and context) is shared with the relay's TURN over TLS and
lives in `appliance.certs`.
"""

from __future__ import annotations

import ssl


class ClientTLS:
    """The TLS client side towards one node: SNI when it has a name, the context shared by its connections."""

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        self.context = context
        self.server_hostname = server_hostname

    def wrap(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> ssl.SSLObject:
        return self.context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=self.server_hostname)


def client_creator(host: str, server_name: str | None, verify: bool, ca_file: str = "") -> ClientTLS:
    """The creator for one node: `server_name` (DNS name) or else `host` (IP) is what gets verified; SNI is sent
    for a name only (the stdlib sends none for an IP address)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ClientTLS(ctx, server_name)
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    else:
        ctx.load_default_certs()
    return ClientTLS(ctx, server_name or host)
