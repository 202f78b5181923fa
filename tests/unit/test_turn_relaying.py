"""Data relaying in the TURN core: ChannelData both ways (RFC 5766 11, padded for TCP clients) and Send and Data
indications (RFC 5766 10), what a permission lets through, and every packet dropped for want of an allocation,
a channel, a permission or a well-formed frame. Fixtures: tests/unit/conftest.py.
"""

from relay.stun import Attr, MessageClass, Method, encode, encode_channel_data, parse, parse_channel_data
from tests.support.relay_fakes import DENIED_PEER, OTHER_PEER, PEER, error_code

# --- ChannelData (RFC 5766 11) ---


def test_channel_bind_relays_channel_data_both_ways(allocated):
    assert error_code(allocated.channel_bind(0x4000, PEER)) is None
    allocated.channel_data(0x4000, b"to peer")
    socket = allocated.relay_socket()
    assert socket.writes == [(b"to peer", PEER)]
    socket.receive(b"to client", PEER)
    assert allocated.received.sent == [encode_channel_data(0x4000, b"to client")]


def test_channel_data_to_a_tcp_client_is_padded_to_4_bytes(harness):
    client = harness.client("alice", transport="tcp")
    client.allocate()
    client.channel_bind(0x7FFF, PEER)
    client.relay_socket().receive(b"abcde", PEER)
    (frame,) = client.received.sent
    assert len(frame) == 12 and parse_channel_data(frame) == (0x7FFF, b"abcde")


def test_channel_data_on_an_unbound_channel_is_dropped(allocated):
    allocated.create_permission(PEER)
    allocated.channel_data(0x4000, b"x")
    assert allocated.relay_socket().writes == [] and allocated.allocation.client_packets_dropped == 1


def test_channel_data_with_length_past_its_end_is_dropped(harness, allocated):
    allocated.channel_bind(0x4000, PEER)
    harness.server.handle_channel_data(b"\x40\x00\x00\x10abc", allocated.five_tuple)
    assert allocated.relay_socket().writes == []


def test_channel_data_shorter_than_its_header_is_dropped(harness, allocated):
    allocated.channel_bind(0x4000, PEER)
    harness.server.handle_channel_data(b"\x40\x00", allocated.five_tuple)
    assert allocated.relay_socket().writes == [] and harness.server.stats["channel_data_dropped"] == 1


def test_channel_data_without_allocation_is_dropped(harness, client):
    client.channel_data(0x4000, b"x")
    assert harness.server.stats["channel_data_dropped"] == 1


def test_channel_data_after_its_permission_expired_is_dropped(harness, allocated):
    allocated.channel_bind(0x4000, PEER)
    harness.advance(300)  # the permission (300 s) ran out, the channel (600 s) did not
    allocated.channel_data(0x4000, b"x")
    allocated.relay_socket().receive(b"y", PEER)
    assert allocated.relay_socket().writes == [] and allocated.received.sent == []


# --- Send and Data indications (RFC 5766 10) ---


def test_send_indication_is_relayed_to_a_peer_with_permission(allocated):
    allocated.create_permission(PEER)
    allocated.send_indication(PEER, b"hello")
    assert allocated.relay_socket().writes == [(b"hello", PEER)]
    assert (allocated.allocation.packets_from_client, allocated.allocation.bytes_from_client) == (1, 5)


def test_send_indication_to_a_peer_without_permission_is_dropped(allocated):
    allocated.create_permission(PEER)
    allocated.send_indication(OTHER_PEER, b"hello")
    assert allocated.relay_socket().writes == []


def test_send_indication_to_a_denied_peer_is_never_relayed(allocated):
    allocated.create_permission(DENIED_PEER)
    allocated.send_indication(DENIED_PEER, b"hello")
    assert allocated.relay_socket().writes == []


def test_send_indication_with_dont_fragment_is_relayed_ignoring_it(harness, allocated):
    allocated.create_permission(PEER)
    message = allocated.message(Method.SEND, [(Attr.XOR_PEER_ADDRESS, PEER), (Attr.DONT_FRAGMENT, True),
                                              (Attr.DATA, b"df")], msg_class=MessageClass.INDICATION)
    assert harness.server.handle_stun(encode(message), allocated.five_tuple, allocated.received) is None
    assert allocated.relay_socket().writes == [(b"df", PEER)]


def test_send_indication_without_allocation_is_dropped(harness, client):
    client.send_indication(PEER, b"hello")
    assert harness.server.stats["send_dropped"] == 1


def test_peer_datagram_without_channel_reaches_the_client_as_a_data_indication(allocated):
    allocated.create_permission(PEER)
    allocated.relay_socket().receive(b"from peer", PEER)
    (data,) = allocated.received.sent
    indication = parse(data)
    assert (indication.method, indication.msg_class) == (Method.DATA, MessageClass.INDICATION)
    assert indication.get(Attr.XOR_PEER_ADDRESS) == PEER and indication.get(Attr.DATA) == b"from peer"
    assert (allocated.allocation.packets_to_client, allocated.allocation.bytes_to_client) == (1, 9)


def test_data_indications_get_distinct_transaction_ids(allocated):
    allocated.create_permission(PEER)
    for _ in range(3):
        allocated.relay_socket().receive(b"x", PEER)
    assert len({parse(data).transaction_id for data in allocated.received.sent}) == 3


def test_peer_datagram_from_an_ip_without_permission_is_dropped_and_counted(allocated):
    allocated.create_permission(PEER)
    allocated.relay_socket().receive(b"intruder", OTHER_PEER)
    assert allocated.received.sent == [] and allocated.allocation.peer_packets_dropped == 1


def test_permission_covers_every_port_of_the_peer_ip(allocated):
    allocated.create_permission(PEER)
    allocated.relay_socket().receive(b"other port", (PEER[0], 1234))
    assert len(allocated.received.sent) == 1
