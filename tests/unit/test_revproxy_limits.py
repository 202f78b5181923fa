"""Hardening of the proxy, in memory: slow uploads are the client's time, connection limits per address and in
all (idle connections closed first), the TLS handshake's own timeout, header hygiene and safe log lines."""

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from appliance.logsafe import escape_bytes, escape_text
from revproxy import access_log
from revproxy.access_log import scrub
from revproxy.client import ConnState
from tests.support.revproxy_memory import Harness, response


def test_the_node_read_timeout_starts_only_once_the_request_body_is_all_sent():
    h = Harness(nodes=2, upstream_read_timeout=1.0, client_timeout=5.0)
    client, ct, node, nt = h.forwarded(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n")
    for i in range(10):  # one byte every 0.9 s: 9 s, many times the node's read timeout
        client.dataReceived(b"%d" % i)
        h.settle(0.9)
    assert not nt.aborted and nt.value().endswith(b"0123456789")
    assert all(n.down_until == 0 for n in h.nodes)
    node.dataReceived(response(body=b"stored"))
    assert ct.value().endswith(b"stored")


def test_a_node_silent_after_the_body_still_times_out():
    h = Harness(nodes=1, upstream_read_timeout=1.0)
    client, ct, _, nt = h.forwarded(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n")
    h.settle(3)
    client.dataReceived(b"ok")
    h.settle(1.1)
    h.settle(0)
    assert nt.aborted and ct.value().startswith(b"HTTP/1.1 504 ")


def test_a_client_that_stalls_mid_body_is_closed_after_client_timeout_and_no_node_is_marked_down():
    h = Harness(nodes=2, client_timeout=2.0)
    _client, ct, _, nt = h.forwarded(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    h.settle(2.1)
    h.settle(0)
    assert ct.aborted and nt.aborted
    assert all(n.down_until == 0 for n in h.nodes) and h.pending_connects() == []


def test_connections_from_one_address_are_limited():
    h = Harness(max_connections_per_ip=3)
    held = [h.accept("198.51.100.7") for _ in range(3)]
    assert all(held)
    with capturedLogs() as events:
        assert h.accept("198.51.100.7") is None
    assert any("max_connections_per_ip" in e["log_format"] for e in events)
    assert h.accept("198.51.100.8") is not None
    held[0][1].abortConnection()
    h.settle(0)
    assert h.accept("198.51.100.7") is not None


def test_at_the_global_limit_the_longest_idle_connection_makes_room():
    h = Harness(max_connections=3)
    first, ft = h.accept("192.0.2.1")
    busy, bt = h.accept("192.0.2.2")
    third, tt = h.accept("192.0.2.3")
    for c in (first, busy, third):
        c.handshakeCompleted()
    busy.dataReceived(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")  # in an exchange: never closed to make room
    assert h.accept("192.0.2.4") is not None
    assert ft.aborted and not bt.aborted and not tt.aborted
    assert h.accept("192.0.2.5") is not None and tt.aborted and not bt.aborted
    h.settle(0)
    assert h.ctx.open == 3


def test_at_the_global_limit_with_nothing_idle_a_new_connection_is_refused():
    h = Harness(max_connections=1)
    conn, _ = h.accept("192.0.2.1")
    conn.handshakeCompleted()
    conn.dataReceived(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
    assert h.accept("192.0.2.2") is None


def test_a_tls_handshake_has_its_own_short_timeout():
    h = Harness(tls_handshake_timeout=10.0, keepalive_timeout=75.0)
    _, stuck = h.accept("192.0.2.1")
    done, dt = h.accept("192.0.2.2")
    done.handshakeCompleted()
    h.settle(10.1)
    assert stuck.aborted and not dt.aborted and done.state is ConnState.IDLE


def test_header_names_with_underscores_never_reach_the_node():
    h = Harness(nodes=1)
    _, _, _, nt = h.forwarded(b"GET /x HTTP/1.1\r\nHost: a\r\nX_Real_IP: 6.6.6.6\r\nX-Forwarded_Proto: http\r\n"
                              b"Transfer_Encoding: chunked\r\nContent_Length: 5\r\nX-Kept: 1\r\n\r\n")
    sent = nt.value()
    assert b"_" not in sent.split(b"\r\n", 1)[1] and b"X-Kept: 1" in sent and b"6.6.6.6" not in sent


def test_http_1_0_without_host_gets_the_configured_hostname():
    h = Harness(nodes=1)
    _, _, _, nt = h.forwarded(b"GET /x HTTP/1.0\r\n\r\n")
    assert nt.value().startswith(b"GET /x HTTP/1.1\r\nHost: proxy.example.com\r\n")


def test_an_h2c_upgrade_is_forwarded_as_a_plain_request():
    h = Harness(nodes=1)
    client, ct, node, nt = h.forwarded(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                                       b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    assert b"upgrade" not in nt.value().lower()
    node.dataReceived(response(body=b"plain"))
    assert ct.value().endswith(b"plain") and client.state is ConnState.IDLE


def test_log_scrubbing_matches_percent_encoded_names_in_any_case():
    assert scrub(b"/a?%74oken=SECRET&PIN=1234&st%61te=s&Code=c;data=d&alias=ok") == \
        "/a?%74oken=***&PIN=***&st%61te=***&Code=***;data=***&alias=ok"
    assert scrub(b"https://meet.example.com/webapp/?conference=x&token=abc#x") == \
        "https://meet.example.com/webapp/?conference=x&token=***#x"


def test_logged_values_have_every_non_printable_byte_escaped():
    line = scrub(b"/a\x85FORGED\r\nline\x00\x9f\xff\"\\")
    assert line == "/a\\x85FORGED\\x0d\\x0aline\\x00\\x9f\\xff\\x22\\x5c"
    assert len(("x " + line).splitlines()) == 1
    assert escape_bytes(b"plain /path") == "plain /path"
    assert escape_text("us\u2028er\x85\u00e9") == "us\\u2028er\\x85\u00e9"


def test_each_byte_is_kept_in_a_log_line_exactly_when_it_is_printable_ascii_but_quote_and_backslash():
    for byte in range(256):
        kept = 0x20 <= byte <= 0x7E and byte not in b'"\\'
        assert escape_bytes(b"a" + bytes([byte]) + b"a") == ("a" + chr(byte) + "a" if kept else f"a\\x{byte:02x}a")


def test_the_access_log_line_carries_the_scrubbed_referer():
    h = Harness(nodes=1)
    client, _ = h.client()
    with capturedLogs() as events:
        client.dataReceived(b"GET /x?%74oken=T1 HTTP/1.1\r\nHost: a\r\nReferer: https://h/?pin=4321&a=b\r\n\r\n")
        node, _ = h.node_connection()
        node.dataReceived(response())
    (line,) = [e["line"] for e in events if "line" in e]
    assert "T1" not in line and "4321" not in line and 'referer="https://h/?pin=***&a=b"' in line


def test_an_access_log_file_gets_whole_lines_written_together_and_reopened_after_rotation(tmp_path):
    path = tmp_path / "access.log"
    h = Harness(nodes=1, access_log=str(path))
    client, _ = h.client()
    for _ in range(3):
        client.dataReceived(b"GET /x?token=T HTTP/1.1\r\nHost: a\r\n\r\n")
        if h.pending_connects():
            node, _ = h.node_connection()
        node.dataReceived(response())
    assert path.read_text() == ""  # buffered: one write for all three
    h.settle(0.3)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(' "GET /x?token=***" 200 2 node=10.0.0.1:443' in ln for ln in lines)
    path.rename(tmp_path / "access.log.1")
    h.ctx.apply(h.config, h.nodes, h.ctx.creators)  # a reload reopens the file
    client.dataReceived(b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    node.dataReceived(response())
    h.settle(0.3)
    assert '"GET /y"' in path.read_text() and '"GET /y"' not in (tmp_path / "access.log.1").read_text()


def test_lines_about_refused_requests_are_rate_limited():
    h = Harness()
    with capturedLogs() as events:
        for _ in range(200):
            client, _ = h.client()
            client.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header: 1\r\n\r\n")
        h.settle(1.0)
        client, _ = h.client()
        client.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header: 1\r\n\r\n")
    refused = [e for e in events if "refused" in e.get("log_format", "")]
    assert len(refused) == 51 and refused[-1]["suppressed"] == 150


def test_ipv6_connections_are_limited_per_64_prefix():
    h = Harness(max_connections_per_ip=2)
    assert h.accept("2001:db8:1:2::10") and h.accept("2001:db8:1:2:ffff::1")
    assert h.accept("2001:db8:1:2::99") is None  # same /64: one subscriber
    assert h.accept("2001:db8:1:3::10") is not None
    assert h.ctx.per_ip == {"2001:db8:1:2::/64": 2, "2001:db8:1:3::/64": 1}


def test_a_reload_changing_the_access_log_setting_closes_the_file_it_leaves(tmp_path):
    reactor = MemoryReactorClock()
    first = access_log.sink(str(tmp_path / "a.log"), reactor)
    assert access_log.sink(str(tmp_path / "a.log"), reactor, first) is first and first.fd >= 0  # reopened, kept
    second = access_log.sink(str(tmp_path / "b.log"), reactor, first)
    assert isinstance(second, access_log.AccessLogFile) and second is not first and first.fd == -1
    assert access_log.sink(True, reactor, second) is not None and second.fd == -1  # to twistd's log
    third = access_log.sink(str(tmp_path / "c.log"), reactor)
    assert access_log.sink(False, reactor, third) is None and third.fd == -1
