"""The client's back-pressure on a response from a node, in memory: the node's transport becomes the client
transport's producer only when the response goes on past one read from the node, and is unregistered and reading
resumed when it ends, so the pooled connection reads the next response."""

from tests.support.revproxy_memory import Harness, response


def test_a_response_whole_in_one_read_registers_no_producer_and_its_connection_is_pooled():
    h = Harness(nodes=1)
    conn, client = h.client()
    conn.dataReceived(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    node, node_transport = h.node_connection()
    node.dataReceived(response(body=b"whole"))
    assert client.value().startswith(b"HTTP/1.1 200 ") and client.value().endswith(b"whole")
    assert client.producer is None and node_transport.producerState == "producing"
    assert h.ctx.upstreams.idle[node.node.key] == [node]


def test_a_response_over_several_reads_lets_a_full_client_pause_the_node_until_it_ends():
    h = Harness(nodes=1)
    conn, client = h.client()
    conn.dataReceived(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    node, node_transport = h.node_connection()
    node.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")  # the head alone
    assert client.producer is node_transport and client.streaming
    client.producer.pauseProducing()  # the client's buffers are full: stop reading from the node
    assert node_transport.producerState == "paused"
    node.dataReceived(b"12345")
    assert client.producer is node_transport
    node.dataReceived(b"67890")
    assert client.value().endswith(b"\r\n\r\n1234567890")
    assert client.producer is None and node_transport.producerState == "producing"  # resumed for the next one
    assert h.ctx.upstreams.idle[node.node.key] == [node]
    conn.dataReceived(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert node_transport.value().endswith(b"GET /next HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.10\r\n"
                                           b"X-Forwarded-Proto: https\r\nX-Real-IP: 192.0.2.10\r\n\r\n")


def test_an_event_stream_keeps_the_node_as_the_clients_producer_while_it_flows():
    h = Harness(nodes=1)
    conn, client = h.client()
    conn.dataReceived(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    node, node_transport = h.node_connection()
    node.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"6\r\ndata 1\r\n")
    assert client.producer is node_transport
    node.dataReceived(b"6\r\ndata 2\r\n")
    assert client.producer is node_transport and client.value().endswith(b"6\r\ndata 2\r\n")
