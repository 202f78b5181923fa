"""revproxy/_http1.c's parse_request and the pure-Python reference give the same outcome for any client request
head: the same Head (every slot) or the same HTTPError (status and detail).

Heads: well-formed ones (token methods, CONNECT and odd ones; origin-form, absolute-form, `*` and odd targets; both
versions and others; fields with odd names, underscores, any letter case, values with HTAB, control bytes and
0x80-0x9F, zero, one or two Host, Connection, Content-Length, Transfer-Encoding and Upgrade fields; long lines);
the same mutated (bytes flipped, cut, inserted); and random bytes. The C module's `decide_request` (the head when
C decides it, None when it leaves it to Python) is compared too, so a C verdict is never hidden behind the
fallback, and the plain common heads must be decided in C."""

from hypothesis import given
from hypothesis import strategies as st

from revproxy import _http1, http1
from tests.support.http_heads import any_case, mostly, outcome
from tests.support.strategies import mutated

_CONTROLS = st.sampled_from([*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), 0xFF]).map(lambda b: bytes([b]))
_METHOD = mostly(st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"OPTIONS", b"X_Y", b"get"]),
                  st.sampled_from([b"", b"CONNECT", b"G T", b"G\tT", b"G(T", b"GET\x80", b"\x00"]))
_TARGET = mostly(st.one_of(st.sampled_from([b"/", b"/a?b=c", b"/api/client/v2/x?y=%20", b"//x", b"/~!$&'()*+,;=:@"]),
                            st.text(alphabet="/azAZ09-._~%?&=#", max_size=12).map(lambda t: b"/" + t.encode())),
                  st.sampled_from([b"", b"*", b"http://h/x", b"HTTPS://h?q", b"h/x", b"/a#b", b"/a\x7f", b"/\x80",
                                   b"/a b", b"/a\tb", b"/\xc3\xa9", b"/" + b"a" * 20000]))
_VERSION = mostly(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
                   st.sampled_from([b"HTTP/1.2", b"HTTP/2.0", b"http/1.1", b"HTTP/1.1 ", b"HTTP/1", b""]))
_NAMES = mostly(
    st.one_of(st.sampled_from([b"host", b"host", b"connection", b"content-length", b"transfer-encoding", b"upgrade",
                               b"user-agent", b"accept", b"x_forwarded_for", b"content_length", b"te"])
              .flatmap(any_case),
              st.text(alphabet="!#$%&'*+-.^_`|~09AZaz", min_size=1, max_size=6).map(str.encode)),
    st.sampled_from([b"", b"Host ", b" Host", b"X(A)", b"X\x80", b"X A", b"\tX"]),
)
_VALUES = mostly(
    st.sampled_from([b"", b"localhost", b"a:1", b"0", b"5", b"5, 5", b"chunked", b"gzip, chunked", b"keep-alive",
                     b"Keep-Alive, Upgrade", b"close", b"close,,te", b" ,", b"websocket", b"a\tb", b"\xc3\xa9",
                     b"x" * 9000]),
    st.one_of(st.binary(max_size=8), st.tuples(st.binary(max_size=3), _CONTROLS, st.binary(max_size=3)).map(b"".join)),
)
_WS = st.sampled_from([b"", b" ", b"\t", b"  \t"])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    line = draw(_METHOD) + b" " + draw(_TARGET) + b" " + draw(_VERSION)
    fields = draw(st.lists(st.tuples(_NAMES, _WS, _VALUES, _WS), max_size=6))
    if draw(st.integers(0, 3)):  # (most requests carry a Host)
        fields.insert(draw(st.integers(0, len(fields))), (b"Host", b" ", b"localhost:8443", b""))
    return line + b"".join(b"\r\n" + n + b":" + w1 + v + w2 for n, w1, v, w2 in fields)


_ANY_HEAD = st.one_of(heads(), heads(), mutated(heads()), st.binary(max_size=64),
                      st.binary(max_size=40).map(lambda b: b"GET / HTTP/1.1\r\nHost: a\r\n" + b),
                      st.binary(max_size=40).map(lambda b: b"GET / HTTP/1.1" + b))


@given(_ANY_HEAD)
def test_c_and_python_give_the_same_request_head_or_the_same_error(data):
    expected = outcome(http1.parse_request_python, data)
    assert outcome(_http1.parse_request, data) == expected
    decided = _http1.decide_request(data)
    if decided is not None:  # (what C decided itself, without the fallback)
        assert outcome(lambda d: decided, data) == expected


_COMMON_FIELDS = st.lists(st.sampled_from([
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0", b"Accept: */*", b"X_Under: 1", b"X-Empty:",
    b"Accept-Language: en-US,en;q=0.9", b"Cookie: a=b\x85", b"X-Tab: a\tb \t", b"Connection: keep-alive",
]), max_size=6, unique=True)


@given(st.sampled_from([b"GET", b"HEAD", b"POST", b"DELETE"]), st.sampled_from([b"/", b"/api/x?y=1", b"/a%20b"]),
       st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]), st.booleans(), _COMMON_FIELDS, st.integers(0, 6))
def test_c_decides_the_plain_common_requests_itself(method, target, version, host, fields, at):
    if host or version == b"HTTP/1.1":
        fields.insert(min(at, len(fields)), b"Host: localhost")
    data = method + b" " + target + b" " + version + b"".join(b"\r\n" + f for f in fields)
    decided = _http1.decide_request(data)
    assert decided is not None
    assert outcome(lambda d: decided, data) == outcome(http1.parse_request_python, data)


def test_the_proxy_uses_the_c_request_parser():
    """(the Python one with RPTURN_HTTP_PARSER=python: tests/unit/test_revproxy_http1_parsers.py)"""
    assert http1.PARSER == "c" and http1.parse_request is _http1.parse_request
