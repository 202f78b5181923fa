"""The STUN codec's hot-path helpers, which relay data without building a Message: ChannelData framing, the Send
indication fast parser and the Data indication encoder, and TCP stream framing.
"""

from __future__ import annotations

import pytest

from relay import stun
from relay.stun import Attr, Message, MessageClass, Method
from tests.support import stun_vectors as vectors
from tests.support.stun_vectors import TID, attribute, header

# --- hot path: ChannelData ---


def test_is_channel_data_by_first_byte():
    assert stun.is_channel_data(b"\x40\x00\x00\x00")
    assert stun.is_channel_data(b"\x7f\xff\x00\x00")
    assert not stun.is_channel_data(vectors.REQUEST)
    assert not stun.is_channel_data(b"\x80\x00\x00\x00")
    assert not stun.is_channel_data(b"")


def test_channel_data_over_udp_is_not_padded():
    assert stun.encode_channel_data(0x4001, b"abcde") == bytes.fromhex("40010005") + b"abcde"


def test_channel_data_over_tcp_is_padded_to_4():
    assert stun.encode_channel_data(0x4001, b"abcde", pad=True) == bytes.fromhex("40010005") + b"abcde\0\0\0"


def test_parse_channel_data_strips_padding():
    assert stun.parse_channel_data(bytes.fromhex("40010005") + b"abcde\0\0\0") == (0x4001, b"abcde")


def test_parse_channel_data_accepts_empty_payload():
    assert stun.parse_channel_data(bytes.fromhex("7fff0000")) == (0x7FFF, b"")


def test_parse_channel_data_rejects_short_header():
    with pytest.raises(stun.StunDecodeError, match="4-byte header"):
        stun.parse_channel_data(b"\x40\x00\x00")


def test_parse_channel_data_rejects_length_past_the_end():
    with pytest.raises(stun.StunDecodeError, match="does not match"):
        stun.parse_channel_data(bytes.fromhex("40000008") + b"abcd")


def test_parse_channel_data_rejects_more_than_padding_after_the_data():
    with pytest.raises(stun.StunDecodeError, match="does not match"):
        stun.parse_channel_data(bytes.fromhex("40000001") + b"abcde")


def test_parse_channel_data_rejects_channel_outside_range():
    with pytest.raises(stun.StunDecodeError, match="outside 0x4000-0x7FFF"):
        stun.parse_channel_data(bytes.fromhex("80000000"))


# --- hot path: Send and Data indications ---


def send_indication(*attributes: tuple[int, object], fingerprint: bool = False) -> bytes:
    return stun.encode(Message(Method.SEND, MessageClass.INDICATION, TID, list(attributes)), fingerprint=fingerprint)


def test_parse_send_indication_ipv4():
    data = send_indication((Attr.XOR_PEER_ADDRESS, ("192.0.2.9", 5000)), (Attr.DATA, b"hello"))
    assert stun.parse_send_indication(data) == (("192.0.2.9", 5000), b"hello")


def test_parse_send_indication_ipv6_with_fingerprint():
    data = send_indication((Attr.DATA, b"x"), (Attr.XOR_PEER_ADDRESS, ("2001:db8::9", 7)), fingerprint=True)
    assert stun.parse_send_indication(data) == (("2001:db8::9", 7), b"x")


def test_parse_send_indication_takes_the_first_peer():
    data = send_indication(
        (Attr.XOR_PEER_ADDRESS, ("192.0.2.1", 1)), (Attr.XOR_PEER_ADDRESS, ("192.0.2.2", 2)), (Attr.DATA, b"")
    )
    assert stun.parse_send_indication(data) == (("192.0.2.1", 1), b"")


def test_parse_send_indication_accepts_dont_fragment():
    data = send_indication((Attr.DONT_FRAGMENT, True), (Attr.XOR_PEER_ADDRESS, ("192.0.2.9", 1)), (Attr.DATA, b"d"))
    assert stun.parse_send_indication(data) == (("192.0.2.9", 1), b"d")


def test_parse_send_indication_is_none_without_peer():
    assert stun.parse_send_indication(send_indication((Attr.DATA, b"hello"))) is None


def test_parse_send_indication_is_none_without_data():
    assert stun.parse_send_indication(send_indication((Attr.XOR_PEER_ADDRESS, ("192.0.2.9", 1)))) is None


def test_parse_send_indication_is_none_for_other_methods():
    data = stun.encode(
        Message(
            Method.DATA, MessageClass.INDICATION, TID, [(Attr.XOR_PEER_ADDRESS, ("192.0.2.9", 1)), (Attr.DATA, b"")]
        )
    )
    assert stun.parse_send_indication(data) is None


def test_parse_send_indication_is_none_with_unknown_required_attribute():
    data = send_indication((Attr.XOR_PEER_ADDRESS, ("192.0.2.9", 1)), (Attr.DATA, b"d"), (0x0031, b"?"))
    assert stun.parse_send_indication(data) is None


def test_parse_send_indication_is_none_with_wrong_fingerprint():
    data = bytearray(send_indication((Attr.XOR_PEER_ADDRESS, ("192.0.2.9", 1)), (Attr.DATA, b"d"), fingerprint=True))
    data[-1] ^= 1
    assert stun.parse_send_indication(bytes(data)) is None


def test_parse_send_indication_is_none_with_bad_address_family():
    body = attribute(Attr.XOR_PEER_ADDRESS, bytes.fromhex("0003a147e112a643")) + attribute(Attr.DATA, b"d")
    assert stun.parse_send_indication(header(0x0016, body)) is None


def test_parse_send_indication_is_none_when_truncated():
    data = send_indication((Attr.XOR_PEER_ADDRESS, ("192.0.2.9", 1)), (Attr.DATA, b"data"))
    assert stun.parse_send_indication(data[:-4]) is None


def test_data_indication_ipv4_parses_back():
    message = stun.parse(stun.encode_data_indication(TID, ("192.0.2.9", 5000), b"hello"))
    assert (message.method, message.msg_class) == (Method.DATA, MessageClass.INDICATION)
    assert message.attributes == [(Attr.XOR_PEER_ADDRESS, ("192.0.2.9", 5000)), (Attr.DATA, b"hello")]


def test_data_indication_ipv6_parses_back():
    message = stun.parse(stun.encode_data_indication(TID, ("2001:db8::9", 5000), b"hi"))
    assert message.attributes == [(Attr.XOR_PEER_ADDRESS, ("2001:db8::9", 5000)), (Attr.DATA, b"hi")]


def test_data_indication_rejects_a_host_that_is_not_an_address():
    with pytest.raises(ValueError, match="not an IP address"):
        stun.encode_data_indication(TID, ("example.com", 1), b"")


# --- hot path: TCP framing ---


def test_tcp_frame_length_needs_4_bytes():
    assert stun.tcp_frame_length(b"\x00\x01\x00") is None


def test_tcp_frame_length_of_a_stun_message_is_header_plus_length():
    assert stun.tcp_frame_length(vectors.REQUEST[:4]) == len(vectors.REQUEST)


def test_tcp_frame_length_of_channel_data_includes_padding():
    assert stun.tcp_frame_length(bytes.fromhex("40000005")) == 12


def test_tcp_frame_length_accepts_bytearray_and_memoryview():
    assert stun.tcp_frame_length(bytearray(b"\x40\x00\x00\x04")) == 8
    assert stun.tcp_frame_length(memoryview(b"\x40\x00\x00\x04xxxx")) == 8


def test_tcp_frame_length_rejects_a_stream_that_is_neither_stun_nor_channel_data():
    with pytest.raises(stun.StunDecodeError, match="neither STUN nor ChannelData"):
        stun.tcp_frame_length(b"\x80\x00\x00\x00")


def test_tcp_frame_length_rejects_stun_length_not_a_multiple_of_4():
    with pytest.raises(stun.StunDecodeError, match="multiple of 4"):
        stun.tcp_frame_length(b"\x00\x01\x00\x05")
