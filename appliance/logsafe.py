"""Values from the network made safe for a log line: every byte or character that is not printable is escaped.

A log line is one line: a request target or a username carrying CR, LF, NEL (0x85), U+2028 or another control
character would split it for `str.splitlines()` (and for people), forging a second line. Both services escape
whatever a peer chose before it reaches a log line, as `\\xNN` (bytes, and characters up to U+00FF) or `\\uNNNN`
(characters beyond); the backslash and the double quote (the access log's field delimiter) are escaped too, so
an escaped value cannot be mistaken for an unescaped one.
"""

from __future__ import annotations

import re

_UNSAFE_BYTES = re.compile(rb'[^\x20-\x7e]|["\\]')
# Each safe byte to itself, each unsafe one to 0x00 (unsafe itself): `0 in value.translate(_SAFE_MAP)` is one C pass
# and a memchr, where a character-class search tries a match at every position.
_SAFE_MAP = bytes(b if 0x20 <= b <= 0x7E and b not in b'"\\' else 0 for b in range(256))
_UNSAFE_TEXT = re.compile(r'[^\x20-\x7e]|["\\]')


def _escape_byte(m: re.Match[bytes]) -> bytes:
    return b"\\x%02x" % m.group()[0]


def _escape_char(m: re.Match[str]) -> str:
    c = m.group()
    if c > "\x7f" and c.isprintable():
        return c  # printable non-ASCII text (names in other scripts) stays readable
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def escape_bytes(value: bytes) -> str:
    """Bytes as printable ASCII: 0x20-0x7E kept (but `\\` and `"`), everything else `\\xNN`."""
    if 0 not in value.translate(_SAFE_MAP):
        return value.decode("ascii")
    return _UNSAFE_BYTES.sub(_escape_byte, value).decode("ascii")


def escape_text(value: str) -> str:
    """Text with every non-printable character escaped (`\\xNN`, `\\uNNNN`); printable non-ASCII letters kept."""
    if not _UNSAFE_TEXT.search(value):
        return value
    return _UNSAFE_TEXT.sub(_escape_char, value)


def escape(value: bytes | str) -> str:
    return escape_bytes(value) if isinstance(value, bytes) else escape_text(value)
