"""The sans-I/O TURN client: transactions, timers, long-term auth, allocation state, data framing. No sockets:
the tests play the server with the real codec."""

from __future__ import annotations

import pytest

from relay import stun
from relay.client import (
    TIMEOUT,
    ClientError,
    Credentials,
    DataReceived,
    Failure,
    Success,
    TurnClient,
)
from relay.client_stream import StreamFramer, data_payload_offset
from relay.stun import Attr, Message, MessageClass, Method

PEER = ("192.0.2.10", 5000)
RELAYED = ("198.51.100.1", 50000)
MAPPED = ("203.0.113.7", 40000)
KEY = stun.long_term_key("u", "r", "p")


def only_request(client: TurnClient) -> Message:
    out = client.data_to_send()
    assert len(out) == 1
    return stun.parse(out[0])


def success(request: Message, *attributes: tuple[int, object], key: bytes | None = KEY) -> bytes:
    response = stun.success_response(request)
    for attr, value in attributes:
        response.add(attr, value)
    return stun.encode(response, integrity_key=key)


def challenge(request: Message, code: int = 401, nonce: str = "n1") -> bytes:
    response = stun.error_response(request, code).add(Attr.REALM, "r").add(Attr.NONCE, nonce)
    return stun.encode(response)


def allocated_client(now: float = 0.0, **options: object) -> TurnClient:
    """A client with an allocation, having gone through the 401 challenge."""
    client = TurnClient(Credentials("u", "p"), **options)  # type: ignore[arg-type]
    client.request_allocate(now)
    client.receive(challenge(only_request(client)), now)
    request = only_request(client)
    client.receive(success(request, (Attr.XOR_RELAYED_ADDRESS, RELAYED), (Attr.XOR_MAPPED_ADDRESS, MAPPED),
                           (Attr.LIFETIME, 600)), now)
    return client


def bound_client(now: float = 0.0, **options: object) -> TurnClient:
    client = allocated_client(now, **options)
    client.request_channel_bind(now, PEER)
    client.receive(success(only_request(client)), now)
    return client


def test_binding_success_is_reported_with_its_handle() -> None:
    client = TurnClient()
    handle = client.request_binding(0.0)
    request = only_request(client)
    assert (request.method, request.msg_class) == (Method.BINDING, MessageClass.REQUEST)
    events = client.receive(success(request, (Attr.XOR_MAPPED_ADDRESS, MAPPED), key=None), 0.01)
    assert len(events) == 1 and isinstance(events[0], Success)
    assert events[0].handle == handle and events[0].message.get(Attr.XOR_MAPPED_ADDRESS) == MAPPED


def test_udp_retransmits_on_rfc5389_schedule_then_times_out_at_39_5_s() -> None:
    client = TurnClient()
    handle = client.request_binding(0.0)
    sends = [0.0]
    client.data_to_send()
    events: list = []
    while not events:
        when = client.next_timeout()
        events = client.handle_timeout(when)
        if client.data_to_send():
            sends.append(when)
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert when == pytest.approx(39.5) and client.next_timeout() is None
    assert isinstance(events[0], Failure) and (events[0].code, events[0].handle) == (TIMEOUT, handle)


def test_tcp_sends_once_and_times_out_after_ti() -> None:
    client = TurnClient(reliable=True)
    client.request_binding(0.0)
    assert len(client.data_to_send()) == 1
    assert client.next_timeout() == pytest.approx(39.5)
    events = client.handle_timeout(39.5)
    assert client.data_to_send() == []
    assert isinstance(events[0], Failure) and events[0].code == TIMEOUT


def test_transaction_timeout_caps_the_schedule() -> None:
    client = TurnClient(transaction_timeout=2.0)
    client.request_binding(0.0)
    client.data_to_send()
    events: list = []
    while not events:
        events = client.handle_timeout(client.next_timeout())
    assert isinstance(events[0], Failure) and client.next_timeout() is None
    assert events[0].code == TIMEOUT


def test_401_is_answered_with_credentials_and_message_integrity() -> None:
    client = TurnClient(Credentials("u", "p"))
    handle = client.request_allocate(0.0)
    first = only_request(client)
    assert client.receive(challenge(first), 0.0) == []
    retry = only_request(client)
    assert retry.transaction_id != first.transaction_id
    assert (retry.get(Attr.USERNAME), retry.get(Attr.REALM), retry.get(Attr.NONCE)) == ("u", "r", "n1")
    assert stun.check_integrity(retry, KEY)
    events = client.receive(success(retry, (Attr.XOR_RELAYED_ADDRESS, RELAYED)), 0.0)
    assert isinstance(events[0], Success) and events[0].handle == handle


def test_401_to_an_authenticated_request_is_a_final_failure() -> None:
    client = TurnClient(Credentials("u", "wrong"))
    client.request_allocate(0.0)
    client.receive(challenge(only_request(client)), 0.0)
    events = client.receive(challenge(only_request(client)), 0.0)
    assert isinstance(events[0], Failure) and events[0].code == 401
    assert client.data_to_send() == []


def test_later_requests_carry_credentials_from_the_start() -> None:
    client = allocated_client()
    client.request_create_permission(1.0, [PEER])
    request = only_request(client)
    assert request.get(Attr.NONCE) == "n1" and stun.check_integrity(request, KEY)


def test_438_is_retried_with_the_fresh_nonce() -> None:
    client = allocated_client()
    handle = client.request_refresh(1.0)
    assert client.receive(challenge(only_request(client), code=438, nonce="n2"), 1.0) == []
    retry = only_request(client)
    assert retry.get(Attr.NONCE) == "n2" and stun.check_integrity(retry, KEY)
    events = client.receive(success(retry, (Attr.LIFETIME, 600)), 1.0)
    assert isinstance(events[0], Success) and events[0].handle == handle


def test_response_with_bad_integrity_is_discarded() -> None:
    client = allocated_client()
    client.request_refresh(1.0)
    request = only_request(client)
    assert client.receive(success(request, (Attr.LIFETIME, 600), key=b"x" * 16), 1.0) == []
    assert client.next_timeout() is not None  # still waiting for the genuine answer


def test_response_to_an_unknown_transaction_is_ignored() -> None:
    client = TurnClient()
    client.request_binding(0.0)
    stray = Message(method=Method.BINDING, msg_class=MessageClass.REQUEST, transaction_id=b"z" * 12, attributes=[])
    assert client.receive(success(stray, key=None), 0.0) == []


def test_malformed_datagram_is_dropped() -> None:
    assert TurnClient().receive(b"\x00\x01\x00\x05garbage", 0.0) == []


def test_allocate_success_records_relayed_and_mapped_addresses() -> None:
    client = allocated_client()
    assert client.allocation is not None
    assert (client.allocation.relayed, client.allocation.mapped, client.allocation.lifetime) == (RELAYED, MAPPED, 600)


def test_channel_bind_picks_the_first_channel_and_sends_channel_data() -> None:
    client = bound_client()
    assert client.channel_of[PEER] == 0x4000 and client.channels[0x4000] == PEER
    client.send_data(PEER, b"hello")
    assert client.data_to_send() == [stun.encode_channel_data(0x4000, b"hello")]


def test_send_without_channel_is_a_send_indication() -> None:
    client = allocated_client()
    client.send_data(PEER, b"hello")
    assert stun.parse_send_indication(client.data_to_send()[0]) == (PEER, b"hello")


def test_channel_number_out_of_range_is_refused() -> None:
    with pytest.raises(ClientError):
        allocated_client().request_channel_bind(0.0, PEER, channel=0x3FFF)


def test_channel_data_from_the_server_is_data_from_the_bound_peer() -> None:
    client = bound_client()
    events = client.receive(stun.encode_channel_data(0x4000, b"echo"), 1.0)
    assert len(events) == 1 and isinstance(events[0], DataReceived)
    assert (events[0].peer, events[0].payload, events[0].channel) == (PEER, b"echo", 0x4000)


def test_data_indication_is_data_from_its_peer() -> None:
    events = allocated_client().receive(stun.encode_data_indication(b"t" * 12, PEER, b"echo"), 1.0)
    assert isinstance(events[0], DataReceived) and (events[0].peer, events[0].payload) == (PEER, b"echo")


def test_channel_template_is_channel_data_with_payload_at_offset() -> None:
    template = bound_client().packet_template(PEER, 10, channel=True)
    template.buffer[template.payload_offset:template.payload_offset + 10] = b"0123456789"
    assert stun.parse_channel_data(bytes(template.buffer)) == (0x4000, b"0123456789")


def test_channel_template_over_tcp_is_padded() -> None:
    template = bound_client(reliable=True).packet_template(PEER, 10, channel=True)
    assert len(template.buffer) == 16


def test_send_indication_template_carries_peer_and_payload() -> None:
    template = allocated_client().packet_template(PEER, 10, channel=False)
    template.buffer[template.payload_offset:template.payload_offset + 10] = b"0123456789"
    assert stun.parse_send_indication(bytes(template.buffer)) == (PEER, b"0123456789")


def test_channel_template_needs_a_bound_channel() -> None:
    with pytest.raises(ClientError):
        allocated_client().packet_template(PEER, 10, channel=True)


def test_payload_offset_of_channel_data_and_data_indication() -> None:
    channel_data = stun.encode_channel_data(0x4001, b"abc")
    indication = stun.encode_data_indication(b"t" * 12, PEER, b"abc")
    assert channel_data[data_payload_offset(channel_data):][:3] == b"abc"
    offset = data_payload_offset(indication)
    assert indication[offset:offset + 3] == b"abc"


def test_payload_offset_of_anything_else_is_minus_one() -> None:
    client = TurnClient()
    client.request_binding(0.0)
    assert data_payload_offset(client.data_to_send()[0]) == -1
    assert data_payload_offset(b"") == -1


def test_keepalive_refreshes_the_allocation_a_minute_before_expiry() -> None:
    client = allocated_client(keepalive=True)
    assert client.next_timeout() == pytest.approx(540.0)
    client.handle_timeout(540.0)
    refresh = only_request(client)
    assert refresh.method == Method.REFRESH and refresh.get(Attr.NONCE) == "n1"


def test_keepalive_rebinds_channels_before_they_expire() -> None:
    client = bound_client(keepalive=True)
    client.handle_timeout(540.0)
    methods = sorted(stun.parse(d).method for d in client.data_to_send())
    assert methods == [Method.REFRESH, Method.CHANNEL_BIND]


def test_refresh_to_lifetime_zero_forgets_the_allocation() -> None:
    client = bound_client()
    client.request_refresh(1.0, 0)
    client.receive(success(only_request(client), (Attr.LIFETIME, 0)), 1.0)
    assert client.allocation is None and client.channels == {}


def test_stream_framer_reassembles_split_and_joined_frames() -> None:
    client = TurnClient()
    client.request_binding(0.0)
    message = client.data_to_send()[0]
    channel_data = stun.encode_channel_data(0x4000, b"abcde", pad=True)
    stream = message + channel_data + message
    framer = StreamFramer()
    frames = framer.feed(stream[:7]) + framer.feed(stream[7:30]) + framer.feed(stream[30:])
    assert frames == [message, channel_data, message]
