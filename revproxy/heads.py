"""Head rewriting, pure: the request head a node gets, the response head a client gets, the proxy's own answers.

Towards the node: hop-by-hop fields (RFC 9110 7.6.1, and those named in Connection) go, the proxy's framing and
forwarded fields (X-Forwarded-For appended to, X-Forwarded-Proto and X-Real-IP set) come in. Towards the client: the
node's header block is copied through with only the dropped lines cut out (never re-serialised), and the proxy's own
framing (chunked for bodies of unknown length to an HTTP/1.1 client) and Connection are added.
"""

from __future__ import annotations

from typing import NamedTuple

from revproxy import http1
from revproxy.http1 import CHUNKED, LENGTH, NONE, UNDERSCORE, UNTIL_CLOSE

REASONS = {101: b"Switching Protocols", 200: b"OK", 301: b"Moved Permanently", 400: b"Bad Request",
           404: b"Not Found", 405: b"Method Not Allowed", 413: b"Content Too Large", 417: b"Expectation Failed",
           431: b"Request Header Fields Too Large", 502: b"Bad Gateway", 504: b"Gateway Timeout",
           505: b"HTTP Version Not Supported"}
# RFC 9110 7.6.1 hop-by-hop fields, plus the ones the proxy sets itself.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization"})
REQUEST_DROP = HOP_BY_HOP | {b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"x-real-ip"}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def simple_response(status: int, body: bytes = b"", close: bool = True, extra: bytes = b"") -> bytes:
    """An answer of the proxy's own (errors, refusals)."""
    return b"".join((b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Error")), extra,
                     b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body),
                     b"Connection: close\r\n\r\n" if close else b"\r\n", body))


def request_head(head: http1.Head, client_ip: bytes, upgrade: bytes = b"", hostname: bytes = b"") -> bytes:
    """The request head sent to a node; `upgrade` is the protocol to ask for (a tunnel), or empty; `hostname` is
    the Host for an HTTP/1.0 request that sent none.

    Field names with an underscore are dropped, as nginx does (`underscores_in_headers off`): a CGI/WSGI node maps
    `X_Real_IP` and `X-Real-IP` both to HTTP_X_REAL_IP, so the client's would sit next to ours."""
    parts = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    if head.version == b"1.0" and hostname and head.get(b"host") is None:
        parts += (b"Host: ", hostname, b"\r\n")
    forwarded_for: list[bytes] = []
    named = head.connection - {b"host"}
    for lname, name, value in head.fields:
        if lname in REQUEST_DROP or lname in named or UNDERSCORE in lname:  # (an int: see http1.CR)
            if lname == b"x-forwarded-for":
                forwarded_for.append(value)
            continue
        parts += (name, b": ", value, b"\r\n")
    forwarded_for.append(client_ip)
    parts += (b"X-Forwarded-For: ", b", ".join(forwarded_for), b"\r\nX-Forwarded-Proto: https\r\nX-Real-IP: ",
              client_ip, b"\r\n")
    if upgrade:
        parts += (b"Connection: upgrade\r\nUpgrade: ", upgrade, b"\r\n")
    if head.framing == LENGTH:
        parts.append(b"Content-Length: %d\r\n" % head.length)
    elif head.framing == CHUNKED:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class ResponseHead(NamedTuple):
    parts: list[bytes]  # the head for the client, to be joined with what follows in the same write
    chunked: bool  # the body goes to the client re-framed as chunked
    keep_alive: bool  # the client connection stays open after this response
    streaming: bool  # an event stream (text/event-stream): no read timeout


def response_head(head: http1.Head, client_version: bytes, keep_alive: bool) -> ResponseHead:
    """The node's response head rewritten for the client. `keep_alive`: whether the client connection may stay
    open as far as the exchange knows (the request said so, its body is complete, no drain)."""
    names, framing = head.names, head.framing
    drop = HOP_BY_HOP | head.connection if head.connection else HOP_BY_HOP
    extra = []
    if b"content-length" in names and (framing in (CHUNKED, UNTIL_CLOSE) or not head.clean_length):
        drop = drop | {b"content-length"}  # replaced by our chunked framing, or by its one valid value
        if framing in (LENGTH, NONE):
            extra.append(b"\r\nContent-Length: %s" % http1.field_values(head, b"content-length")[0]
                         .split(b",")[0].strip())
    # (the substring search first, with find: see http1.CR; most responses are not event streams, and it spares a
    # field search per response)
    streaming = head.lower.find(b"text/event-stream") >= 0 and b"content-type" in names and any(
        v.startswith(b"text/event-stream") for v in http1.field_values(head, b"content-type"))
    parts = [b"HTTP/1.1 %d " % head.status, head.reason, http1.block_without(head, drop), *extra]
    chunked = False
    if framing in (CHUNKED, UNTIL_CLOSE):
        if client_version == b"1.1":
            chunked = True
            parts.append(b"\r\nTransfer-Encoding: chunked")
        else:
            keep_alive = False
    if not keep_alive:
        parts.append(b"\r\nConnection: close")
    parts.append(b"\r\n\r\n")
    return ResponseHead(parts, chunked, keep_alive, streaming)


def switching_head(head: http1.Head, requested: bytes) -> bytes:
    """The node's 101 for the client: its fields without hop-by-hop ones, then the upgrade it agreed to."""
    return b"".join((b"HTTP/1.1 101 ", head.reason, http1.block_without(head, HOP_BY_HOP),
                     b"\r\nConnection: upgrade\r\nUpgrade: ", head.upgrade or requested, b"\r\n\r\n"))
