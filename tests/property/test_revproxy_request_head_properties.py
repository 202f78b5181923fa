"""A request head's fields are kept, or the head refused (400), exactly as a plain line-by-line reading says.

`http1.parse_request` checks the whole head for control characters in one pass and each field only when that pass
finds one; here the verdict and the fields come from a loop over the CRLF-separated lines."""

import re

from hypothesis import given
from hypothesis import strategies as st

from revproxy import http1

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_CONTROL = set(range(0x20)) - {0x09} | {0x7F}
_STEERING = (b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"host")


def line_by_line(fields: list[bytes]) -> list[tuple[bytes, bytes, bytes]] | None:
    """The (lowercase name, name, value) of each field line, or None when one is malformed."""
    out = []
    for line in fields:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name) or any(b in _CONTROL for b in value):
            return None
        out.append((name.lower(), name, value.strip(b" \t")))
    return out


_PIECES = st.sampled_from([b"\r", b"\n", b":", b" ", b"\t", b"\x00", b"\x01", b"\x1f", b"\x7f", b"a", b"Z", b"-",
                           b"0", b"(", b"\x80", b"X-A", b"Accept", b"text/html"])
_LINE = st.lists(_PIECES, max_size=8).map(b"".join)


@given(st.lists(_LINE, max_size=6), st.integers(0, 6))
def test_request_fields_are_kept_or_refused_as_a_line_reading_says(lines, at):
    lines = [ln for ln in lines if ln.lower().partition(b":")[0].strip() not in _STEERING]  # framing: not here
    lines.insert(min(at, len(lines)), b"Host: x")
    raw = b"GET / HTTP/1.1\r\n" + b"\r\n".join(lines)
    expected = line_by_line(lines) if not any(b"\r" in ln or b"\n" in ln for ln in lines) else None
    try:
        head = http1.parse_request(raw)
    except http1.HTTPError as e:
        assert expected is None, (raw, e.detail)
        assert e.status == 400
    else:
        assert head.fields == expected, raw
