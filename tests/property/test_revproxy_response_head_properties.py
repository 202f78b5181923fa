"""A node's response head is refused (502) exactly when a line-by-line reading of RFC 9112 refuses it.

`http1.parse_response` checks the header block in whole-block passes (field names counted against CRLFs, control
bytes counted against CRLFs); here the same verdict comes from a plain loop over the CRLF-separated lines."""

import re

from hypothesis import given
from hypothesis import strategies as st

from revproxy import http1

_LINE_REFUSALS = ("bare CR or LF or a control character in the head", "malformed header line")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_CONTROL = set(range(0x20)) - {0x09} | {0x7F}


def refused_line_by_line(block: bytes) -> bool:
    """`block` is "\\r\\n" + line per field: each line `token ":" value`, no control byte but HTAB anywhere."""
    if not block:
        return False
    if not block.startswith(b"\r\n"):
        return True
    for line in block[2:].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name) or any(b in _CONTROL for b in value):
            return True
    return False


# Bytes that make the interesting cases: CR and LF alone or paired, colons, spaces, HTAB, other controls, DEL,
# token characters, separators that are not token characters, obs-text.
_PIECES = st.sampled_from([b"\r\n", b"\r", b"\n", b":", b" ", b"\t", b"\x00", b"\x01", b"\x1f", b"\x7f", b"a", b"Z",
                           b"-", b"0", b"!", b"(", b"@", b"\x80", b"\xff", b"Content-Length", b"Connection",
                           b"keep-alive", b"X-A: 1", b"\r\nX-B:", b"\r\n:"])


@given(st.lists(_PIECES, max_size=24))
def test_a_response_head_is_refused_exactly_when_a_line_reading_refuses_it(pieces):
    block = b"\r\n" + b"".join(pieces)
    raw = b"HTTP/1.1 200 OK" + block
    try:
        head = http1.parse_response(raw, b"GET")
    except http1.HTTPError as e:
        assert e.status == 502
        # (a well-formed block can still be refused for its framing: an empty or conflicting Content-Length)
        refused = e.detail in _LINE_REFUSALS
    else:
        refused = False
        assert head.block == block and head.names == [line.partition(b":")[0].lower()
                                                      for line in block[2:].split(b"\r\n")]
    assert refused == refused_line_by_line(block), block


@given(st.lists(st.sampled_from([b"X-A: 1", b"Connection: keep-alive", b"Content-Length: 5", b"Server: n",
                                 b"connection: close", b"Connection: Keep-Alive, x-hop"]), max_size=6))
def test_the_connection_tokens_are_those_of_every_connection_field(fields):
    block = b"".join(b"\r\n" + f for f in fields)
    head = http1.parse_response(b"HTTP/1.1 200 OK" + block, b"GET")
    tokens = {t.strip().lower() for f in fields if f.lower().startswith(b"connection:")
              for t in f.partition(b":")[2].split(b",")}
    assert head.connection == frozenset(tokens)


_FIELDS = st.sampled_from([b"X-A: 1", b"Connection: keep-alive", b"connection: close", b"Keep-Alive: timeout=5",
                           b"Content-Length: 5", b"Server: n", b"TE: trailers", b"X-Hop: v"])
_DROPS = st.sets(st.sampled_from([b"connection", b"keep-alive", b"te", b"x-hop", b"content-length", b"absent"]))


@given(st.lists(_FIELDS, max_size=6), _DROPS)
def test_block_without_cuts_exactly_the_lines_of_the_dropped_fields(fields, drop):
    block = b"".join(b"\r\n" + f for f in fields)
    head = http1.parse_response(b"HTTP/1.1 200 OK" + block, b"GET")
    kept = b"".join(b"\r\n" + f for f in fields if f.partition(b":")[0].lower() not in drop)
    assert http1.block_without(head, frozenset(drop)) == kept
