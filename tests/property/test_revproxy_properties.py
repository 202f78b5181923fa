"""Properties of the proxy's framing: the incremental end-of-head search and the whole client -> proxy -> node
path (in memory) give the same result however the bytes are cut into reads."""

from hypothesis import example, given
from hypothesis import strategies as st

from revproxy import http1
from revproxy.http1 import HeadBuffer, HTTPError
from tests.support.revproxy_memory import Harness, response
from tests.support.strategies import pieces, scaled


@given(st.binary(max_size=300).map(lambda b: b.replace(b"\r\n\r\n", b"")), st.binary(max_size=100), st.data())
def test_head_buffer_finds_the_same_head_at_any_split(head, after, data):
    stream = head + b"\r\n\r\n" + after
    buf = HeadBuffer(limit=1000)
    found = None
    for piece in data.draw(pieces(stream)):
        buf.append(piece)
        if found is None:
            found = buf.pop()
    assert found == stream[: stream.find(b"\r\n\r\n")]
    assert buf.take() == stream[stream.find(b"\r\n\r\n") + 4:]


@given(st.binary(min_size=101, max_size=300).filter(lambda b: b"\r\n\r\n" not in b), st.data())
def test_head_buffer_refuses_a_head_over_its_limit_at_any_split(data_bytes, data):
    buf = HeadBuffer(limit=100)
    try:
        for piece in data.draw(pieces(data_bytes)):
            buf.append(piece)
            assert buf.pop() is None
    except HTTPError as e:
        assert e.status == 431
    else:
        raise AssertionError("no 431")


@scaled(0.1)
@given(st.binary(max_size=3000), st.booleans(), st.data())
def test_a_request_body_reaches_the_node_intact_at_any_split(body, chunked, data):
    h = Harness(nodes=1)
    client, ct = h.client()
    if chunked:
        framed = b"".join(b"".join(http1.chunk(body[i: i + 700])) for i in range(0, len(body), 700)) + b"0\r\n\r\n"
        head = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    else:
        framed = body
        head = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body)
    for piece in data.draw(pieces(head + framed + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")):
        client.dataReceived(piece)
        if h.pending_connects():
            node, nt = h.node_connection()
    sent = nt.value()
    end = sent.index(b"\r\n\r\n") + 4
    reader = http1.BodyReader(http1.CHUNKED if chunked else http1.LENGTH, len(body))
    got, rest = reader.feed(sent[end:])
    assert b"".join(got) == body and reader.done and rest == b""
    node.dataReceived(response(body=b"done"))
    assert ct.value().startswith(b"HTTP/1.1 200 ") and b"GET /next" in nt.value()


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b":", b" "]), max_size=40).map(b"".join))
def test_a_request_head_is_refused_for_a_bare_cr_or_lf_exactly_when_a_crlf_line_holds_one(tail):
    """The bare CR/LF check (every CRLF taken out at once) agrees with looking at each CRLF-separated line."""
    data = b"GET / HTTP/1.1\r\nHost: x\r\n" + tail
    bare = any(b"\r" in line or b"\n" in line for line in data.split(b"\r\n"))
    try:
        http1.parse_request(data)
        refused_bare = False
    except HTTPError as e:
        refused_bare = e.detail == "bare CR or LF in the head"
    assert refused_bare == bare


@given(st.lists(st.text("0123456789, +", max_size=22), min_size=1, max_size=3))
@example(["1234567890123456789"])  # 19 digits: over the limit, however clean
@example(["007"])
def test_a_response_content_length_is_read_as_the_general_rule_reads_it(values):
    """One clean Content-Length is taken directly; the answer (length or 502) is the general rule's."""
    block = "".join(f"\r\nContent-Length: {v}" for v in values).encode()
    try:
        expected: int | None = http1._content_length([v.encode().strip(b" \t") for v in values], 502)
    except HTTPError:
        expected = None
    try:
        head = http1.parse_response(b"HTTP/1.1 200 OK" + block, b"GET")
        got: int | None = head.length
    except HTTPError:
        got = None
    assert got == expected
