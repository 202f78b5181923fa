"""The proxy's Twisted protocols driven in memory (`tests.support.revproxy_memory`): client and node connections
on in-memory transports, a `MemoryReactorClock` for the timers — keep-alive, pipelining, 100-continue, failover,
timeouts, tunnels, the redirect listener and the request guards, without a socket."""

from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from revproxy.client import ConnState
from revproxy.http1 import HTTPError
from tests.support.revproxy_memory import Harness, response

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


def test_keep_alive_reuses_the_node_connection_for_the_next_request():
    h = Harness(nodes=1)
    client, ct, node, nt = h.forwarded(GET)
    node.dataReceived(response(body=b"one"))
    assert ct.take().endswith(b"one") and client.state is ConnState.IDLE
    client.dataReceived(GET)
    assert h.pending_connects() == [] and nt.value().count(b"GET /x") == 2
    node.dataReceived(response(body=b"two"))
    assert ct.take().endswith(b"two")


def test_pipelined_requests_are_answered_in_order_one_at_a_time():
    h = Harness(nodes=1)
    _client, ct, node, nt = h.forwarded(GET + b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert nt.value().count(b"GET ") == 1  # the second waits for the first response
    node.dataReceived(response(body=b"first"))
    assert b"GET /y" in nt.value()
    node.dataReceived(response(body=b"second"))
    out = ct.take()
    assert out.index(b"first") < out.index(b"second")


def test_expect_100_continue_gets_a_100_then_the_body_reaches_the_node():
    h = Harness(nodes=1)
    client, ct = h.client()
    client.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert ct.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    _node, nt = h.node_connection()
    client.dataReceived(b"hello")
    assert nt.value().endswith(b"\r\n\r\nhello") and b"expect" not in nt.value().lower()


def test_a_refused_connect_moves_the_request_to_the_next_node_and_marks_it_down():
    h = Harness(nodes=2)
    client, ct = h.client()
    with capturedLogs() as events:
        client.dataReceived(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        h.fail_connect()
    assert h.nodes[0].down_until > h.reactor.seconds()
    node, nt = h.node_connection()
    assert nt.value().endswith(b"abc")  # the kept body is sent again
    node.dataReceived(response())
    assert ct.take().startswith(b"HTTP/1.1 200")
    assert any("marked down" in e.get("log_format", "") for e in events)


def test_a_node_that_stays_silent_gives_504_after_upstream_read_timeout():
    h = Harness(nodes=1, upstream_read_timeout=5.0)
    _client, ct, _node, nt = h.forwarded(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
    h.settle(4.9)
    assert not nt.aborted
    h.settle(0.2)
    h.settle(0)
    assert nt.aborted and ct.take().startswith(b"HTTP/1.1 504 ")


def test_a_head_that_never_completes_is_closed_after_client_timeout():
    h = Harness(client_timeout=2.0)
    client, ct = h.client()
    client.dataReceived(b"GET /x HTTP/1.1\r\nHost:")
    assert client.state is ConnState.HEAD
    h.settle(2.1)
    assert ct.aborted and h.pending_connects() == []


def test_a_response_of_unknown_length_is_chunked_to_the_client():
    h = Harness(nodes=1)
    _client, ct, node, _nt = h.forwarded(GET)
    node.dataReceived(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nabc")
    node.connectionLost(None)
    out = ct.take()
    assert b"Transfer-Encoding: chunked" in out and out.endswith(b"3\r\nabc\r\n0\r\n\r\n")


def test_interim_responses_from_the_node_are_not_forwarded():
    h = Harness(nodes=1)
    _client, ct, node, _ = h.forwarded(GET)
    node.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + response())
    assert ct.take().startswith(b"HTTP/1.1 200 ")


def test_a_websocket_upgrade_becomes_a_tunnel_both_ways():
    h = Harness(nodes=1)
    upgrade = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    client, ct, node, nt = h.forwarded(upgrade)
    node.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert ct.take().startswith(b"HTTP/1.1 101 ") and client.state is ConnState.TUNNEL
    nt.clear()
    client.dataReceived(b"\x81\x02hi")
    node.dataReceived(b"\x81\x02yo")
    assert nt.value() == b"\x81\x02hi" and ct.value() == b"\x81\x02yo"


def test_a_client_leaving_mid_response_closes_the_node_connection():
    h = Harness(nodes=1)
    _client, ct, node, nt = h.forwarded(GET)
    node.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    ct.abortConnection()
    h.settle(0)
    assert nt.aborted and h.ctx.active == 0


def test_a_request_guard_answers_before_any_node_is_contacted():
    h = Harness(nodes=1)
    h.ctx.guards.append(lambda ex: HTTPError(403, "guarded") if ex.head.target == b"/secret" else None)
    client, ct = h.client()
    client.dataReceived(b"GET /secret HTTP/1.1\r\nHost: a\r\n\r\n")
    assert ct.take().startswith(b"HTTP/1.1 403 ") and h.pending_connects() == []
    client.dataReceived(GET)
    assert h.pending_connects() == [("10.0.0.1", 443)]


def test_a_request_guard_may_decide_later():
    h = Harness(nodes=1)
    decision: Deferred = Deferred()
    h.ctx.guards.append(lambda ex: decision)
    client, _ct = h.client()
    client.dataReceived(GET)
    assert h.pending_connects() == []
    decision.callback(None)
    assert h.pending_connects() == [("10.0.0.1", 443)]


def test_the_redirect_listener_sends_301_to_https_keeping_path_and_query():
    proto, t = Harness().redirect()
    proto.dataReceived(b"\r\nGET /a?b=1 HTTP/1.1\r\nHost: meet.example.com:80\r\n")
    proto.dataReceived(b"\r\n")
    assert b"Location: https://meet.example.com:443/a?b=1" not in t.value()
    assert b"Location: https://meet.example.com/a?b=1\r\n" in t.value()


def test_the_redirect_listener_uses_the_hostname_for_http_1_0_without_host():
    proto, t = Harness().redirect()
    proto.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
    assert b"Location: https://proxy.example.com/\r\n" in t.value()
