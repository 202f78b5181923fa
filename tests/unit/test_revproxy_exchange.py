"""The proxy's pure cores: the exchange state machine, the failover decision and head rewriting (no I/O)."""

import pytest

from revproxy import heads, http1
from revproxy.balancer import Node
from revproxy.exchange import Body, Exchange, Phase, Step, TransitionError
from revproxy.failover import Action, NodeFailure, after_failure, retry_status

NODES = [Node(f"10.0.0.{i}:443", f"10.0.0.{i}", 443) for i in (1, 2, 3)]


def exchange(raw: bytes = b"GET /x HTTP/1.1\r\nHost: a", client_ip: str = "192.0.2.1") -> Exchange:
    return Exchange(http1.parse_request(raw), client_ip, 100.0)


def node_response(raw: bytes, method: bytes = b"GET") -> http1.Head:
    return http1.parse_response(raw, method)


# -- phases ---------------------------------------------------------------------------------------------------
def test_a_get_walks_deciding_connecting_sending_awaiting_responding_done():
    ex = exchange()
    assert (ex.phase, ex.body) == (Phase.DECIDING, Body.NONE)
    assert ex.begin(list(NODES)) is NODES[0] and ex.phase is Phase.CONNECTING
    ex.connected()
    assert ex.phase is Phase.SENDING
    ex.request_sent()
    assert ex.phase is Phase.AWAITING
    step, rh = ex.response_arrived(node_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2"), draining=False)
    assert step is Step.FORWARD and ex.phase is Phase.RESPONDING and rh.keep_alive
    ex.finish()
    assert ex.done


def test_a_transition_outside_the_table_is_refused():
    ex = exchange()
    with pytest.raises(TransitionError):
        ex.to(Phase.AWAITING)
    ex.finish()
    with pytest.raises(TransitionError):
        ex.to(Phase.CONNECTING)


def test_a_body_keeps_the_exchange_sending_until_it_is_complete():
    ex = exchange(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5")
    assert ex.body is Body.ARRIVING and not ex.request_complete
    ex.begin(list(NODES))
    ex.connected()
    ex.body_complete()
    assert ex.request_complete and ex.phase is Phase.SENDING
    ex.request_sent()
    assert ex.phase is Phase.AWAITING


def test_no_usable_node_gives_no_plan():
    ex = exchange()
    assert ex.begin([]) is None and ex.phase is Phase.DECIDING


# -- checks ---------------------------------------------------------------------------------------------------
def test_expect_100_continue_is_answered_only_for_a_request_with_a_body():
    ex = exchange(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue")
    assert ex.check(1000) is None and ex.interim() == b"HTTP/1.1 100 Continue\r\n\r\n"
    ex = exchange(b"GET /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue")
    assert ex.check(1000) is None and ex.interim() == b""


def test_other_expectations_get_417_and_big_bodies_413():
    assert exchange(b"GET /x HTTP/1.1\r\nHost: a\r\nExpect: magic").check(1000).status == 417
    assert exchange(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1001").check(1000).status == 413


def test_an_error_answer_keeps_the_connection_only_below_500_and_with_the_body_in():
    ex = exchange()
    assert b"Connection: close" not in ex.error(404, "not found") and ex.keep_alive
    ex = exchange()
    assert b"Connection: close" in ex.error(502, "no node") and not ex.keep_alive
    ex = exchange(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5")
    assert b"Connection: close" in ex.error(404, "not found")


# -- upgrades -------------------------------------------------------------------------------------------------
def test_only_a_websocket_upgrade_is_asked_of_the_node():
    ws = exchange(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket")
    assert ws.upgrade == b"websocket"
    assert b"Connection: upgrade\r\nUpgrade: websocket\r\n" in ws.request_head(b"192.0.2.1")
    h2c = exchange(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                   b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA")
    assert h2c.upgrade == b""
    sent = h2c.request_head(b"192.0.2.1").lower()
    assert b"upgrade" not in sent and b"http2-settings" not in sent


def test_a_101_becomes_a_tunnel_for_a_websocket_and_a_502_otherwise():
    ws = exchange(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket")
    ws.begin(list(NODES))
    ws.connected()
    ws.request_sent()
    step, head = ws.response_arrived(node_response(b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n"
                                                   b"Connection: Upgrade"), False)
    assert step is Step.TUNNEL and ws.phase is Phase.TUNNEL and head.endswith(b"Upgrade: websocket\r\n\r\n")
    plain = exchange()
    plain.begin(list(NODES))
    plain.connected()
    step, _ = plain.response_arrived(node_response(b"HTTP/1.1 101 Switching\r\nUpgrade: h2c"), False)
    assert step is Step.UNEXPECTED_101


# -- failover -------------------------------------------------------------------------------------------------
def test_a_503_moves_an_idempotent_request_to_the_next_node():
    ex = exchange()
    ex.begin(list(NODES))
    ex.connected()
    ex.request_sent()
    step, _ = ex.response_arrived(node_response(b"HTTP/1.1 503 Busy\r\nContent-Length: 0"), False)
    assert step is Step.RETRY and ex.node is NODES[1] and ex.phase is Phase.CONNECTING


def test_a_503_on_the_last_node_is_passed_on():
    ex = exchange()
    ex.begin([NODES[0]])
    ex.connected()
    step, _ = ex.response_arrived(node_response(b"HTTP/1.1 503 Busy\r\nContent-Length: 0"), False)
    assert step is Step.FORWARD and ex.status == 503


def test_a_stale_keep_alive_connection_is_retried_once_on_the_same_node():
    ex = exchange(b"POST /x HTTP/1.1\r\nHost: a")
    ex.begin(list(NODES))
    ex.connected()
    ex.request_sent()
    assert ex.node_failed(NodeFailure.STALE).action is Action.RETRY_SAME and ex.node is NODES[0]
    ex.connected()
    ex.request_sent()
    verdict = ex.node_failed(NodeFailure.STALE)
    assert (verdict.action, verdict.status) == (Action.FAIL, 502)  # a POST is not moved once it may have arrived


@pytest.mark.parametrize("kind, idempotent, action, status, mark_down", [
    (NodeFailure.CONNECT, False, Action.RETRY_NEXT, 0, True),
    (NodeFailure.TIMEOUT, True, Action.RETRY_NEXT, 0, True),
    (NodeFailure.TIMEOUT, False, Action.FAIL, 504, False),
    (NodeFailure.LOST, True, Action.RETRY_NEXT, 0, True),
    (NodeFailure.LOST, False, Action.FAIL, 502, False),
    (NodeFailure.BAD, True, Action.FAIL, 502, False),
])
def test_failover_decision(kind, idempotent, action, status, mark_down):
    v = after_failure(kind, idempotent=idempotent, response_started=False, stale_retried=False,
                      request_complete=True, attempts_left=2)
    assert (v.action, v.status, v.mark_down) == (action, status, mark_down)


def test_the_last_node_failing_answers_with_the_kinds_status_and_still_marks_it_down():
    v = after_failure(NodeFailure.TIMEOUT, idempotent=True, response_started=False, stale_retried=False,
                      request_complete=True, attempts_left=0)
    assert (v.action, v.status, v.mark_down) == (Action.FAIL, 504, True)


def test_a_failure_mid_response_aborts_the_client():
    v = after_failure(NodeFailure.LOST, idempotent=True, response_started=True, stale_retried=False,
                      request_complete=True, attempts_left=2)
    assert v.action is Action.ABORT


def test_a_failure_while_the_client_still_sends_is_neither_retried_nor_held_against_the_node():
    for kind in (NodeFailure.TIMEOUT, NodeFailure.LOST):
        v = after_failure(kind, idempotent=True, response_started=False, stale_retried=True,
                          request_complete=False, attempts_left=2)
        assert v.action is Action.FAIL and not v.mark_down


def test_only_gateway_errors_of_idempotent_requests_are_retried():
    assert retry_status(503, idempotent=True, attempts_left=1)
    assert not retry_status(503, idempotent=False, attempts_left=1)
    assert not retry_status(500, idempotent=True, attempts_left=1)
    assert not retry_status(502, idempotent=True, attempts_left=0)


# -- head rewriting -------------------------------------------------------------------------------------------
def test_request_head_drops_hop_by_hop_and_sets_forwarded_fields():
    head = http1.parse_request(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: X-Secret\r\nX-Secret: 1\r\n"
                               b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: http\r\nX-Real-IP: 1.1.1.1\r\n"
                               b"TE: trailers\r\nX-Kept: yes")
    out = heads.request_head(head, b"192.0.2.1")
    assert out == (b"GET /x HTTP/1.1\r\nHost: a\r\nX-Kept: yes\r\nX-Forwarded-For: 203.0.113.9, 192.0.2.1\r\n"
                   b"X-Forwarded-Proto: https\r\nX-Real-IP: 192.0.2.1\r\n\r\n")


def test_response_head_is_chunked_for_http_1_1_and_closes_for_http_1_0():
    resp = node_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1")
    rh = heads.response_head(resp, b"1.1", True)
    assert rh.chunked and rh.keep_alive and b"".join(rh.parts).endswith(b"X-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
    rh = heads.response_head(resp, b"1.0", True)
    assert not rh.chunked and not rh.keep_alive and b"Connection: close" in b"".join(rh.parts)


def test_response_head_recognises_an_event_stream():
    resp = node_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked")
    assert heads.response_head(resp, b"1.1", True).streaming


def test_response_body_framing_round_trips_through_the_chunked_reader():
    ex = exchange()
    ex.chunked = True
    out: list[bytes] = []
    ex.frame([b"hello", b" ", b"world"], out)
    out.append(ex.trailer())
    reader = http1.BodyReader(http1.CHUNKED)
    pieces, rest = reader.feed(b"".join(out))
    assert b"".join(pieces) == b"hello world" and reader.done and rest == b"" and ex.sent == 11
