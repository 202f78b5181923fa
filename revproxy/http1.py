"""Sans-I/O HTTP/1.1 message framing for the proxy (RFC 9112), strict where request smuggling lives.

Bytes in, heads and body pieces out; no sockets, no clock. The request side refuses anything ambiguous: both
Content-Length and Transfer-Encoding, differing Content-Lengths, a Transfer-Encoding other than `chunked`,
obs-fold, whitespace before a colon, control characters, bare CR or LF — each an `HTTPError(400)`. Oversized heads
are `HTTPError(431)`. The proxy always re-frames bodies itself, so what reaches a node is unambiguous.
"""

from __future__ import annotations

import os
import re

MAX_HEAD = 16 * 1024  # request line + headers, as nginx's large_client_header_buffers
MAX_CHUNK_LINE = 1024
MAX_TRAILERS = 16 * 1024

_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # RFC 9110 5.6.2
# The bytes refused in a field value (C0 controls but HTAB, and DEL) and in a request target (also HTAB, SP and `#`),
# as translation tables sending each refused byte to 0x00 (itself refused) and every other to itself: a value holds
# a refused byte when `0 in value.translate(table)` — one C pass and a memchr, where a regex search for a character
# class tries a match at every position (about 4x the cost on a browser's User-Agent).
_VALUE_BAD = bytes(range(0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"
_TARGET_BAD = bytes(range(0x21)) + b"\x7f#"
_VALUE_CHECK = bytes(0 if b in _VALUE_BAD else b for b in range(256))
_TARGET_CHECK = bytes(0 if b in _TARGET_BAD else b for b in range(256))
_TOKEN_CHECK = bytes(b if b in _TOKEN_CHARS else 0 for b in range(256))  # (a token: non-empty, no 0 after it)
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}\Z")
# A response head's header block ("\r\nName: value" lines) checked whole, in C-level passes instead of a loop over
# the lines: every CRLF starts a `token ":"` (no obs-fold, "Name : v" or empty name) when the field names found
# after CRLFs are as many as the CRLFs; and no CR, LF or other control character is there but the CRLFs' own when
# the control-byte translation holds exactly two zero bytes per CRLF.
_FIELD_NAME = re.compile(rb"\r\n([!#$%&'*+\-.^_`|~0-9A-Za-z]+):")
# The request fields _fields looks at beyond checking and keeping them.
_STEERING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"host"})
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?\Z")

# Single bytes as ints for `in` tests on bytes: `b"\n" in data` first tries the needle as an int, and a bytes needle
# fails that with a formatted TypeError before the search (~10x the cost of `LF in data`, which is a memchr).
CR, LF, COLON, UNDERSCORE = 0x0D, 0x0A, 0x3A, 0x5F

_KEEP_ALIVE_ONLY = [b"keep-alive"]  # a response's Connection values, the usual one
_KEEP_ALIVE = frozenset(_KEEP_ALIVE_ONLY)

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# Body framing kinds
NONE, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3


class HTTPError(Exception):
    """A request the proxy answers itself with `status`, then closes the connection."""

    def __init__(self, status: int, detail: str, extra: bytes = b"") -> None:
        super().__init__(f"{status} {detail}")
        self.status, self.detail = status, detail
        self.extra = extra  # header lines for the answer (WWW-Authenticate for a 401), each ending in CRLF


class Head:
    """A parsed request or response head. A request's `fields` keeps (lowercase name, name as sent, value) in
    order; a response keeps its header block as received (`block`, lowercase `names`) to be copied through."""

    __slots__ = ("block", "clean_length", "connection", "fields", "framing", "length", "lower", "method", "names",
                 "reason", "status", "target", "upgrade", "version")

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.status = 0
        self.reason = b""
        self.version = b"1.1"
        self.fields: list[tuple[bytes, bytes, bytes]] = []
        self.framing = NONE
        self.length = 0
        self.connection: frozenset[bytes] = frozenset()  # tokens of the Connection header(s), lowercase
        self.upgrade = b""
        self.block = b""  # response: b"\r\nName: value" per line, as the node sent them
        self.names: list[bytes] = []  # response: lowercase field names, in order
        self.lower = b""  # response: block.lower(), for finding fields
        self.clean_length = False  # response: exactly one Content-Length line, digits only: forwarded as sent

    def get(self, lname: bytes) -> bytes | None:
        for ln, _, v in self.fields:
            if ln == lname:
                return v
        return None

    @property
    def keep_alive(self) -> bool:
        if self.version == b"1.0":
            return b"keep-alive" in self.connection
        return b"close" not in self.connection


def _fields(lines: list[bytes], head: Head, error_status: int, clean: bool = False,
            ) -> tuple[list[bytes], list[bytes], int]:
    """Parse header lines into head.fields; return (Content-Length values, Transfer-Encoding values, the number of
    Host fields). `clean`: the caller found no control character anywhere in the lines (see `parse_request`)."""
    lengths: list[bytes] = []
    encodings: list[bytes] = []
    hosts = 0
    connection: set[bytes] = set()
    fields = head.fields
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or 0 in name.translate(_TOKEN_CHECK):
            # covers obs-fold (leading whitespace), "Name : v", empty names, garbage
            raise HTTPError(error_status, "malformed header line")
        value = value.strip(b" \t")
        if not clean and 0 in value.translate(_VALUE_CHECK):
            raise HTTPError(error_status, "control character in a header value")
        lname = name.lower()
        if lname not in _STEERING:  # (most fields: one set lookup instead of five comparisons)
            fields.append((lname, name, value))
            continue
        if lname == b"host":  # (first: every request has one)
            hosts += 1
        elif lname == b"content-length":
            lengths.append(value)
        elif lname == b"transfer-encoding":
            encodings.append(value)
        elif lname == b"connection":
            connection.update([t.strip().lower() for t in value.split(b",")])  # (a list: fewer calls than a generator)
        elif lname == b"upgrade":
            head.upgrade = value
        fields.append((lname, name, value))
    head.connection = frozenset(connection)
    return lengths, encodings, hosts


def _content_length(values: list[bytes], error_status: int) -> int:
    distinct = {v.strip() for value in values for v in value.split(b",")}
    if len(distinct) != 1:
        raise HTTPError(error_status, "conflicting Content-Length values")
    (text,) = distinct
    if not text.isdigit() or len(text) > 18:
        raise HTTPError(error_status, "Content-Length is not a number")
    return int(text)


def parse_request_python(data: bytes) -> Head:
    """`data`: the request head without its final blank line (CRLF CRLF). The reference implementation:
    `parse_request` is revproxy/_http1.c's where it is built (it decides the plain common head itself, the same
    Head, and hands this function every other one), else this one."""
    # With every CRLF taken out (the same left-to-right pairing as the split), any CR or LF left is a bare one, as
    # is any other control character: one C-level pass for the whole head, the finer tests only when it finds one.
    # `clean`: no control character anywhere but the CRLFs, so no field value needs its own check (worth its pass
    # from two fields on).
    joined = data.replace(b"\r\n", b"")
    lines = data.split(b"\r\n")
    clean = len(lines) > 2 and 0 not in joined.translate(_VALUE_CHECK)
    if not clean and (LF in joined or CR in joined):
        raise HTTPError(400, "bare CR or LF in the head")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise HTTPError(400, "malformed request line")
    method, target, version = parts
    if not method or 0 in method.translate(_TOKEN_CHECK):
        raise HTTPError(400, "malformed method")
    if version == b"HTTP/1.1":
        v = b"1.1"
    elif version == b"HTTP/1.0":
        v = b"1.0"
    elif version.startswith(b"HTTP/") and len(version) == 8:
        raise HTTPError(505, "only HTTP/1.0 and HTTP/1.1")
    else:
        raise HTTPError(400, "malformed HTTP version")
    if not target or 0 in target.translate(_TARGET_CHECK):
        raise HTTPError(400, "malformed request target")
    head = Head()
    head.method, head.version = method, v
    lengths, encodings, hosts = _fields(lines[1:], head, 400, clean)
    if method == b"CONNECT":
        raise HTTPError(405, "CONNECT is not proxied")
    head.target = target if target.startswith(b"/") else origin_form(target, method)  # (origin-form: no call)
    if hosts > 1 or (v == b"1.1" and not hosts):
        raise HTTPError(400, "exactly one Host header is required")
    if encodings:
        if lengths:
            raise HTTPError(400, "both Content-Length and Transfer-Encoding")
        if v == b"1.0" or len(encodings) != 1 or encodings[0].lower() != b"chunked":
            raise HTTPError(400, "only Transfer-Encoding: chunked is accepted")
        head.framing = CHUNKED
    elif lengths:
        head.length = _content_length(lengths, 400)
        head.framing = LENGTH if head.length else NONE
    return head


def origin_form(target: bytes, method: bytes) -> bytes:
    """Absolute-form URIs become their path and query (the authority never steers the proxy)."""
    if target.startswith(b"/"):
        return target
    if target == b"*" and method == b"OPTIONS":
        return target
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() in (b"http", b"https"):
        slash = rest.find(b"/")
        query = rest.find(b"?")
        if slash < 0 or (0 <= query < slash):
            return b"/" + rest[query:] if query >= 0 else b"/"
        return rest[slash:]
    raise HTTPError(400, "malformed request target")


def parse_response_python(data: bytes, request_method: bytes) -> Head:
    """A node's response head (without the final CRLF CRLF); a bad one is HTTPError(502). The reference
    implementation: `parse_response` is revproxy/_http1.c's where it is built (the same Head, the same verdicts;
    it hands this function every head it does not decide itself), else this one.

    Only the fields that frame the message are looked at; the rest of the block is kept as sent."""
    eol = data.find(b"\r\n")
    status_line, block = (data, b"") if eol < 0 else (data[:eol], data[eol:])
    m = _STATUS_LINE.match(status_line)
    if not m:
        raise HTTPError(502, "malformed status line from the node")
    lines = block.count(b"\r\n")
    if block.translate(_VALUE_CHECK).count(0) != 2 * lines:
        raise HTTPError(502, "bare CR or LF or a control character in the head")
    head = Head()
    head.lower = lower = block.lower()  # (token characters stay token characters)
    head.names = names = _FIELD_NAME.findall(lower)
    if len(names) != lines:
        raise HTTPError(502, "malformed header line")
    minor, status_text, reason = m.groups()  # (one call for the three)
    head.version = b"1.1" if minor == b"1" else b"1.0"
    head.status = status = int(status_text)
    head.reason = reason or b""
    head.block = block
    n = names.count(b"content-length")
    lengths = [_only_value(block, lower, b"\r\ncontent-length:")] if n == 1 else \
        field_values(head, b"content-length") if n else []
    head.clean_length = n == 1 and lengths[0].isdigit()
    encodings = field_values(head, b"transfer-encoding") if b"transfer-encoding" in names else []
    n = names.count(b"connection")
    if n:
        values = [_only_value(block, lower, b"\r\nconnection:")] if n == 1 else field_values(head, b"connection")
        if values == _KEEP_ALIVE_ONLY:  # (what nodes send on nearly every response: no parse, a shared set)
            head.connection = _KEEP_ALIVE
        else:
            head.connection = frozenset([t.strip().lower() for v in values for t in v.split(b",")])
    if b"upgrade" in names:
        head.upgrade = field_values(head, b"upgrade")[-1]
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        head.framing = NONE
    elif encodings:
        if encodings[-1].lower().rsplit(b",", 1)[-1].strip() != b"chunked":
            head.framing = UNTIL_CLOSE
        else:
            head.framing = CHUNKED
    elif lengths:
        # (one Content-Length of digits, the usual answer: what _content_length would find, without its call)
        head.length = int(lengths[0]) if head.clean_length and len(lengths[0]) <= 18 else _content_length(lengths, 502)
        head.framing = LENGTH if head.length else NONE
    else:
        head.framing = UNTIL_CLOSE
    return head


def _only_value(block: bytes, lower: bytes, key: bytes) -> bytes:
    """The value of the one field whose line starts with `key` (CRLF, lowercase name, colon): `field_values`
    without its search for more lines and its list, for the fields a response usually has once."""
    start = lower.find(key) + len(key)
    end = block.find(b"\r\n", start)
    return (block[start:end] if end >= 0 else block[start:]).strip(b" \t")


def field_values(head: Head, lname: bytes) -> list[bytes]:
    """Values of the response field `lname` (lowercase), in order."""
    block, lower = head.block, head.lower
    key = b"\r\n" + lname + b":"
    out = []
    pos = lower.find(key)
    while pos >= 0:
        start = pos + len(key)
        end = block.find(b"\r\n", start)
        if end < 0:
            end = len(block)
        out.append(block[start:end].strip(b" \t"))
        pos = lower.find(key, end)
    return out


def block_without_python(head: Head, drop: frozenset[bytes] | set[bytes]) -> bytes:
    """The response's header block with the fields named in `drop` (lowercase) cut out; copied whole when none
    of them is there. Only the dropped lines are looked for, never every line. The reference implementation, as
    `parse_response_python`: `block_without` is revproxy/_http1.c's where it is built."""
    names = head.names
    present = drop.intersection(names)
    if not present:
        return head.block
    block, lower = head.block, head.lower
    if len(present) == 1:
        (lname,) = present
        if names.count(lname) == 1:  # one line to cut, the usual case (a response's Connection): no list, no sort
            start = lower.find(b"\r\n" + lname + b":")
            end = lower.find(b"\r\n", start + 2)
            return block[:start] + block[end:] if end >= 0 else block[:start]
    cuts = []
    for lname in present:
        key = b"\r\n" + lname + b":"
        pos = lower.find(key)
        while pos >= 0:
            end = lower.find(b"\r\n", pos + 2)
            if end < 0:
                end = len(block)
            cuts.append((pos, end))
            pos = lower.find(key, end)
    cuts.sort()
    kept, at = [], 0
    for start, end in cuts:
        kept.append(block[at:start])
        at = end
    kept.append(block[at:])
    return b"".join(kept)


PARSER = "python"
parse_request = parse_request_python
parse_response = parse_response_python
block_without = block_without_python
if os.environ.get("RPTURN_HTTP_PARSER", "") != "python":
    try:
        from revproxy import _http1

        _http1.configure(Head, _KEEP_ALIVE, parse_response_python, block_without_python, parse_request_python)
    except (ImportError, TypeError):  # (no C compiler where it was installed, or a stale build: Python, the same)
        pass
    else:
        PARSER = "c"
        parse_request, parse_response, block_without = _http1.parse_request, _http1.parse_response, _http1.block_without


class BodyReader:
    """Incremental body decoder for one message: `feed(data)` -> (decoded pieces, bytes after the body)."""

    __slots__ = ("buf", "done", "remaining", "state", "trailer_size")

    # chunked states
    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self, framing: int, length: int = 0) -> None:
        self.done = framing == NONE
        self.state = -1 if framing != CHUNKED else self._SIZE
        self.remaining = length if framing == LENGTH else -1
        self.buf = b""
        self.trailer_size = 0

    def feed(self, data: bytes) -> tuple[list[bytes], bytes]:
        if self.done:
            return [], data
        if self.state < 0:
            if self.remaining < 0:  # until close
                return [data], b""
            if len(data) < self.remaining:
                self.remaining -= len(data)
                return [data], b""
            piece, rest = data[: self.remaining], data[self.remaining:]
            self.remaining = 0
            self.done = True
            return ([piece] if piece else []), rest
        return self._chunked(self.buf + data if self.buf else data)

    def _chunked(self, data: bytes) -> tuple[list[bytes], bytes]:
        out: list[bytes] = []
        pos, n = 0, len(data)
        self.buf = b""
        while pos < n:
            state = self.state
            if state == self._DATA:
                take = min(self.remaining, n - pos)
                out.append(data[pos: pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = self._DATA_END
            elif state == self._DATA_END:
                if n - pos < 2:
                    self.buf = data[pos:]
                    return out, b""
                if data[pos: pos + 2] != b"\r\n":
                    raise HTTPError(400, "chunk data not followed by CRLF")
                pos += 2
                self.state = self._SIZE
            else:
                end = data.find(b"\r\n", pos)
                if end < 0:
                    self.buf = data[pos:]
                    if len(self.buf) > MAX_CHUNK_LINE:
                        raise HTTPError(400, "chunk size line too long")
                    return out, b""
                line = data[pos:end]
                pos = end + 2
                if state == self._SIZE:
                    if len(line) > MAX_CHUNK_LINE or LF in line or CR in line:
                        raise HTTPError(400, "malformed chunk size line")
                    size_text = line.split(b";", 1)[0].rstrip(b" \t")
                    if not _HEX.match(size_text):
                        raise HTTPError(400, "malformed chunk size")
                    size = int(size_text, 16)
                    if size:
                        self.remaining, self.state = size, self._DATA
                    else:
                        self.state = self._TRAILER
                else:  # trailer section: dropped, only bounded and checked for framing
                    if not line:
                        self.done = True
                        return out, data[pos:]
                    self.trailer_size += len(line)
                    if self.trailer_size > MAX_TRAILERS or LF in line or CR in line or COLON not in line:
                        raise HTTPError(400, "malformed chunked trailer")
        return out, b""


def chunk(data: bytes) -> list[bytes]:
    """One chunk of a chunked body, as pieces for writeSequence (no copy of `data`)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


LAST_CHUNK = b"0\r\n\r\n"


class HeadBuffer:
    """Bytes up to a head's blank line (CRLF CRLF), searched incrementally: each byte is looked at once, a read
    only from where the last search stopped (less 3 bytes, for a CRLF CRLF split over reads), never from byte 0.

    `pop()` returns the head without its blank line, keeping what follows; over `limit` bytes without a complete
    head it raises `HTTPError(error_status)`."""

    __slots__ = ("data", "error_status", "limit", "scan")

    def __init__(self, limit: int, error_status: int = 431) -> None:
        self.data = b""
        self.scan = 0
        self.limit = limit
        self.error_status = error_status

    def append(self, data: bytes, skip_blank_lines: bool = False) -> None:
        """`skip_blank_lines`: a request may be preceded by empty lines (RFC 9112 2.2), dropped here."""
        if self.data:
            self.data += data
        else:
            self.data = data.lstrip(b"\r\n") if skip_blank_lines else data
            self.scan = 0

    def strip_blank_lines(self) -> None:
        """Before a request's first byte: drop empty lines (RFC 9112 2.2)."""
        if self.data[:1] in (b"\r", b"\n"):
            self.data = self.data.lstrip(b"\r\n")
            self.scan = 0

    def pop(self) -> bytes | None:
        data = self.data
        end = data.find(b"\r\n\r\n", self.scan - 3 if self.scan > 3 else 0)
        if end < 0 or end > self.limit:
            if len(data) > self.limit:
                raise HTTPError(self.error_status, f"head over {self.limit // 1024} KiB")
            self.scan = len(data)
            return None
        self.data = data[end + 4:]
        self.scan = 0
        return data[:end]

    def take(self) -> bytes:
        """Everything held (bytes after the last head), emptying the buffer."""
        data, self.data, self.scan = self.data, b"", 0
        return data
