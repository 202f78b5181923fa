"""revproxy/_http1.c's parse_response and the pure-Python reference give the same outcome for any response head:
the same Head (every slot) or the same HTTPError (status and detail); and their block_without cut the same lines.

Heads: well-formed ones built from the fields that frame a response (Content-Length small, huge, negative, listed,
doubled; Transfer-Encoding; Connection lists; Upgrade) and others with odd names and values, every status code,
both versions, optional reasons; the same mutated (bytes flipped, cut, inserted: control bytes, CR and LF alone,
colons, spaces); and random bytes. Each with GET, HEAD, CONNECT, POST or a lowercase `head`. The C module's
`decide` (the head when C decides it, None when it leaves it to Python) is compared too, so a C verdict is never
hidden behind the fallback, and the common heads must be decided in C."""

from hypothesis import given
from hypothesis import strategies as st

from revproxy import _http1, http1
from tests.support.http_heads import any_case, mostly, outcome
from tests.support.strategies import mutated, scaled

_METHODS = st.sampled_from([b"GET", b"HEAD", b"CONNECT", b"POST", b"head", b""])


def _visible(data: bytes) -> bytes:
    return bytes(b for b in data if b >= 0x20 and b != 0x7F)


_NAMES = mostly(
    st.one_of(st.sampled_from([b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"keep-alive",
                               b"server", b"content-type", b"x-hop", b"te"]).flatmap(any_case),
              st.text(alphabet="!#$%&'*+-.^_`|~09AZaz", min_size=1, max_size=6).map(str.encode)),
    st.sampled_from([b"", b"Content-Length ", b" Connection", b"X(A)", b"X\x80", b"Content_Length"]),
)
_VALUES = mostly(
    st.sampled_from([b"0", b"5", b"12", b"007", b"-1", b"+5", b"5, 5", b"5,6", b"5 5", b"", b"1" * 18, b"1" * 19,
                     b"9" * 18, b"99999999999999999999999", b"chunked", b"gzip, chunked", b"chunked, gzip", b"Chunked",
                     b"keep-alive", b"Keep-Alive", b"close", b"keep-alive, x-hop", b"close,,te", b" ,", b"websocket",
                     b"\xc3\xa9", b"a\tb", b"text/html"]),
    st.binary(max_size=12),
)
_WS = st.sampled_from([b"", b" ", b"\t", b"  \t"])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    version = draw(mostly(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
                           st.sampled_from([b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 "])))
    status = b"%03d" % draw(st.integers(0, 999)) if draw(st.integers(0, 9)) else draw(
        st.sampled_from([b"20", b"2000", b"2x0", b" 200", b""]))
    reason = draw(st.one_of(st.none(), st.sampled_from([b"", b"OK", b"Not Modified", b"a\tb", b"\xff"]),
                            mostly(st.binary(max_size=6).map(_visible), st.binary(max_size=6))))
    line = version + b" " + status + (b"" if reason is None else b" " + reason)
    fields = draw(st.lists(st.tuples(_NAMES, _WS, _VALUES, _WS), max_size=8))
    return line + b"".join(b"\r\n" + n + b":" + w1 + v + w2 for n, w1, v, w2 in fields)


_ANY_HEAD = st.one_of(heads(), heads(), mutated(heads()), st.binary(max_size=64),
                      st.binary(max_size=40).map(lambda b: b"HTTP/1.1 200 OK\r\n" + b))


@given(_ANY_HEAD, _METHODS)
def test_c_and_python_give_the_same_head_or_the_same_error(data, method):
    expected = outcome(http1.parse_response_python, data, method)
    assert outcome(_http1.parse_response, data, method) == expected
    decided = _http1.decide(data, method)
    if decided is not None:  # (what C decided itself, without the fallback)
        assert outcome(lambda d, m: decided, data, method) == expected


# The heads nodes send nearly always: C decides every one of them itself.
_COMMON_FIELDS = st.lists(st.sampled_from([b"Server: nginx", b"Content-Type: application/json", b"X-A:", b"X-B: \t",
                                           b"Date: Sun, 29 Nov 2026 20:00:00 GMT", b"Vary: Accept-Encoding",
                                           b"Set-Cookie: a=b; Path=/\x80"]), max_size=6)


@given(_COMMON_FIELDS, st.sampled_from([None, b"Content-Length: 0", b"content-length: 123",
                                        b"Content-Length: 999999999999999999", b"Transfer-Encoding: chunked",
                                        b"Transfer-Encoding: gzip"]),
       st.sampled_from([None, b"Connection: keep-alive", b"Connection: close", b"Connection: Keep-Alive, X-Hop"]),
       st.integers(100, 599), st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]), _METHODS)
def test_c_decides_the_common_heads_itself(fields, framing, connection, status, version, method):
    lines = [*fields, *[f for f in (framing, connection) if f is not None]]
    data = version + b" %d Reason" % status + b"".join(b"\r\n" + f for f in lines)
    decided = _http1.decide(data, method)
    assert decided is not None
    assert outcome(lambda d, m: decided, data, method) == outcome(http1.parse_response_python, data, method)


_DROPPED = [b"connection", b"keep-alive", b"te", b"x-hop", b"content-length", b"upgrade", b"server", b"absent",
            b"Connection", b""]
_DROP_NAMES = st.sampled_from(_DROPPED)


@scaled(0.5)
@given(_ANY_HEAD, st.data())
def test_c_and_python_cut_the_same_lines_from_a_block(data, draw):
    try:
        head = http1.parse_response_python(data, b"GET")
    except http1.HTTPError:
        return
    drop = draw.draw(st.one_of(st.sets(_DROP_NAMES), st.sets(st.sampled_from(head.names or [b"x"])),
                               st.frozensets(st.sampled_from([*head.names, *_DROPPED]))))
    expected = http1.block_without_python(head, drop)
    assert _http1.block_without(head, drop) == expected
    assert _http1.block_without(_http1.decide(data, b"GET") or head, drop) == expected


def test_block_without_leaves_a_head_whose_names_do_not_match_its_block_to_python():
    head = http1.parse_response_python(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\nConnection: close", b"GET")
    head.names = [b"x-b", b"x-a", b"connection"]  # (not parse_response's: Python's search by name decides)
    assert _http1.block_without(head, {b"x-b"}) == b"\r\nX-A: 1\r\nConnection: close"
    head.names = [b"x-a", b"connection"]
    assert _http1.block_without(head, {b"connection"}) == b"\r\nX-A: 1\r\nX-B: 2"


def test_the_proxy_uses_the_c_parser():
    """(the Python one where the extension is not built or RPTURN_HTTP_PARSER=python: tests/unit/
    test_revproxy_http1_parsers.py runs the unit tests that way)"""
    assert http1.PARSER == "c" and http1.parse_response is _http1.parse_response
    assert http1.block_without is _http1.block_without
