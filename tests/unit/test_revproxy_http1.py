"""The proxy's HTTP/1.1 framing (pure): smuggling defences, limits and chunked bodies."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy import http1
from revproxy.http1 import CHUNKED, LENGTH, NONE, UNTIL_CLOSE, BodyReader, HTTPError


def req(*lines: str) -> bytes:
    return "\r\n".join(lines).encode()


def status_of(data: bytes) -> int:
    with pytest.raises(HTTPError) as e:
        http1.parse_request(data)
    return e.value.status


def test_plain_get_has_no_body_and_keeps_alive():
    h = http1.parse_request(req("GET /a?b=1 HTTP/1.1", "Host: x"))
    assert (h.method, h.target, h.framing, h.keep_alive) == (b"GET", b"/a?b=1", NONE, True)


def test_content_length_body():
    h = http1.parse_request(req("POST / HTTP/1.1", "Host: x", "Content-Length: 5"))
    assert (h.framing, h.length) == (LENGTH, 5)


def test_both_content_length_and_transfer_encoding_is_400():
    assert status_of(req("POST / HTTP/1.1", "Host: x", "Content-Length: 5", "Transfer-Encoding: chunked")) == 400


def test_conflicting_content_lengths_are_400():
    assert status_of(req("POST / HTTP/1.1", "Host: x", "Content-Length: 5", "Content-Length: 6")) == 400
    assert status_of(req("POST / HTTP/1.1", "Host: x", "Content-Length: 5, 6")) == 400


def test_non_numeric_content_length_is_400():
    assert status_of(req("POST / HTTP/1.1", "Host: x", "Content-Length: +5")) == 400


def test_transfer_encoding_other_than_chunked_is_400():
    assert status_of(req("POST / HTTP/1.1", "Host: x", "Transfer-Encoding: gzip, chunked")) == 400
    assert status_of(req("POST / HTTP/1.1", "Host: x", "Transfer-Encoding: xchunked")) == 400


def test_whitespace_before_colon_is_400():
    assert status_of(req("GET / HTTP/1.1", "Host : x")) == 400


def test_obs_fold_is_400():
    assert status_of(req("GET / HTTP/1.1", "Host: x", "X-A: 1", " folded")) == 400


def test_bare_lf_and_control_characters_are_400():
    assert status_of(b"GET / HTTP/1.1\r\nHost: x\nX-A: 1") == 400
    assert status_of(req("GET / HTTP/1.1", "Host: x", "X-A: a\x00b")) == 400


def test_missing_or_duplicate_host_is_400():
    assert status_of(req("GET / HTTP/1.1")) == 400
    assert status_of(req("GET / HTTP/1.1", "Host: a", "Host: b")) == 400


def test_connect_is_405():
    assert status_of(req("CONNECT 10.0.0.1:22 HTTP/1.1", "Host: 10.0.0.1:22")) == 405


def test_absolute_form_becomes_its_path():
    h = http1.parse_request(req("GET https://evil.example:8443/api/x?y=1 HTTP/1.1", "Host: x"))
    assert h.target == b"/api/x?y=1"
    assert http1.origin_form(b"http://evil.example", b"GET") == b"/"


def test_unknown_version_is_505_and_garbage_400():
    assert status_of(req("GET / HTTP/2.0", "Host: x")) == 505
    assert status_of(req("GET / HTTX", "Host: x")) == 400


def test_response_framing():
    assert http1.parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3", b"GET").framing == LENGTH
    assert http1.parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3", b"HEAD").framing == NONE
    assert http1.parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", b"GET").framing == CHUNKED
    assert http1.parse_response(b"HTTP/1.1 200 OK", b"GET").framing == UNTIL_CLOSE
    assert http1.parse_response(b"HTTP/1.1 304 Not Modified", b"GET").framing == NONE


def test_malformed_response_is_502():
    with pytest.raises(HTTPError) as e:
        http1.parse_response(b"HTTP/1.1 2000 OK", b"GET")
    assert e.value.status == 502


def test_chunked_body_with_extensions_and_trailers():
    r = BodyReader(CHUNKED)
    pieces, rest = r.feed(b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\nNEXT")
    assert (b"".join(pieces), rest, r.done) == (b"abcde", b"NEXT", True)


def test_bad_chunk_size_is_400():
    with pytest.raises(HTTPError):
        BodyReader(CHUNKED).feed(b"-3\r\nabc\r\n")
    with pytest.raises(HTTPError):
        BodyReader(CHUNKED).feed(b"3\r\nabcX\r\n")


def test_content_length_body_stops_at_length():
    r = BodyReader(LENGTH, 4)
    assert r.feed(b"ab") == ([b"ab"], b"")
    assert r.feed(b"cdEF") == ([b"cd"], b"EF")
    assert r.done


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.integers(min_value=1, max_value=50))
def test_chunked_round_trip_in_any_split(bodies, step):
    encoded = b"".join(b"".join(http1.chunk(b)) for b in bodies) + http1.LAST_CHUNK
    r = BodyReader(CHUNKED)
    got = []
    for i in range(0, len(encoded), step):
        pieces, rest = r.feed(encoded[i: i + step])
        got += pieces
        assert rest == b""
    assert r.done and b"".join(got) == b"".join(bodies)


def test_response_header_block_is_copied_through_without_the_dropped_fields():
    head = http1.parse_response(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: keep-alive, X-Hop\r\nx-hop: v\r\n"
                                b"Content-Length: 3", b"GET")
    assert (head.framing, head.length, head.clean_length) == (LENGTH, 3, True)
    assert http1.block_without(head, {b"x-b"}) == head.block  # nothing to drop: the block as sent
    assert http1.block_without(head, {b"connection"} | head.connection) == b"\r\nX-A: 1\r\nContent-Length: 3"


@pytest.mark.parametrize("line", [b" folded", b"Name : v", b": v", b"X-A: a\rb", b"X-A: a\nb", b"X-A: \x01"])
def test_malformed_response_header_line_is_502(line):
    with pytest.raises(HTTPError) as e:
        http1.parse_response(b"HTTP/1.1 200 OK\r\nX-Ok: 1\r\n" + line, b"GET")
    assert e.value.status == 502


@pytest.mark.parametrize("byte", range(256))
def test_each_byte_in_a_value_or_target_is_refused_exactly_when_it_is_a_control_character(byte):
    """Field values (request and response) refuse the C0 controls but HTAB, and DEL; a request target any C0
    control, SP, DEL and `#`. Everything else (visible ASCII, obs-text) passes."""
    b = bytes([byte])
    control = (byte < 0x20 and byte != 0x09) or byte == 0x7F
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a" + b + b"a"
    assert (status_of(request) == 400) if control else http1.parse_request(request).get(b"x-a") == b"a" + b + b"a"
    response = b"HTTP/1.1 200 OK\r\nX-A: a" + b + b"a\r\nContent-Length: 0"
    if control:
        with pytest.raises(HTTPError) as e:
            http1.parse_response(response, b"GET")
        assert e.value.status == 502
    else:
        assert http1.parse_response(response, b"GET").status == 200
    target = b"GET /a" + b + b"b HTTP/1.1\r\nHost: x"
    if byte <= 0x20 or byte in (0x7F, 0x23):
        assert status_of(target) == 400
    else:
        assert http1.parse_request(target).target == b"/a" + b + b"b"


@pytest.mark.parametrize("byte", range(256))
def test_each_byte_in_a_field_name_or_method_is_refused_exactly_when_it_is_no_token_character(byte):
    b = bytes([byte])
    token = b in b"!#$%&'*+-.^_`|~" or (b.isalnum() and byte < 0x80)
    name = b"GET / HTTP/1.1\r\nHost: x\r\nX" + b + b"A: 1"
    method = b"G" + b + b"T / HTTP/1.1\r\nHost: x"
    if token:
        assert http1.parse_request(name).get(b"x" + b.lower() + b"a") == b"1"
        assert http1.parse_request(method).method == b"G" + b + b"T"
    else:
        if byte != 0x3A:  # (a colon ends the name: "X:A: 1" is the field X)
            assert status_of(name) == 400
        assert status_of(method) == 400
