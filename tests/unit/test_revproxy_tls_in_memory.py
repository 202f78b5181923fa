"""A client connection behind real TLS, with no socket: `twisted.test.iosim` carries the TLS records between a
client and the proxy's listener factory (the TLS transport around `ClientConnection`), the node side stays in
memory (`tests.support.revproxy_memory`)."""

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.test import iosim

from appliance.certs import ServerTLS
from appliance.tls_transport import TLSConnection, TLSFactory
from revproxy import node_tls
from revproxy.client import ConnState, ProxyFactory
from tests.support.revproxy_memory import Harness, response
from tests.support.revproxy_process import Pki


class Browser(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def connect(h: Harness, pki: Pki) -> tuple[Browser, iosim.IOPump, object]:
    addr = IPv4Address("TCP", "192.0.2.44", 40000)
    server = TLSFactory(ServerTLS(str(pki.bundle)), ProxyFactory(h.ctx)).buildProtocol(addr)
    browser = Browser()
    client = TLSConnection(node_tls.client_creator("127.0.0.1", "localhost", True, str(pki.root)), browser)
    pump = iosim.connect(server, iosim.FakeTransport(server, True, peerAddress=addr),
                         client, iosim.FakeTransport(client, False))
    return browser, pump, server.wrapped


def test_a_request_over_tls_reaches_the_node_and_the_answer_comes_back(tmp_path):
    h = Harness(nodes=1)
    browser, pump, conn = connect(h, Pki(tmp_path))
    assert conn.state is ConnState.IDLE and conn.deadline - h.reactor.seconds() == h.config.keepalive_timeout
    browser.transport.write(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
    pump.flush()
    node, nt = h.node_connection()
    assert nt.value().startswith(b"GET /x HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 192.0.2.44\r\n")
    node.dataReceived(response(body=b"through TLS"))
    pump.flush()
    assert browser.received.startswith(b"HTTP/1.1 200 ") and browser.received.endswith(b"through TLS")
    assert h.ctx.open == 1 and h.ctx.per_ip == {"192.0.2.44": 1}


def test_a_client_that_never_finishes_its_handshake_is_closed_after_tls_handshake_timeout(tmp_path):
    h = Harness(nodes=1, tls_handshake_timeout=10.0)
    addr = IPv4Address("TCP", "192.0.2.45", 40000)
    server = TLSFactory(ServerTLS(str(Pki(tmp_path).bundle)), ProxyFactory(h.ctx)).buildProtocol(addr)
    transport = iosim.FakeTransport(server, True, peerAddress=addr)
    server.makeConnection(transport)
    server.dataReceived(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, no more
    h.settle(9.9)
    assert not transport.disconnecting
    h.settle(0.2)
    assert transport.disconnecting
