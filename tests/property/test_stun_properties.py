"""Property tests of the STUN codec: total decoding, round trips, integrity/fingerprint, TCP framing."""

from __future__ import annotations

import contextlib

from hypothesis import assume, given
from hypothesis import strategies as st

from relay import stun
from relay.stun import Attr, Message, MessageClass, Method
from tests.support.strategies import (
    addresses,
    channel_numbers,
    encoded_messages,
    integrity_keys,
    messages,
    mutated,
    payloads,
    scaled,
    stun_shaped_bytes,
    tcp_frames,
    transaction_ids,
)


def parses_or_raises_decode_error(data: bytes) -> Message | None:
    try:
        return stun.parse(data)
    except stun.StunDecodeError:
        return None


# --- (1) anything either parses or raises StunDecodeError, nothing else ---


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_decode_error(data):
    parses_or_raises_decode_error(data)


@scaled(0.3)
@given(stun_shaped_bytes())
def test_stun_shaped_bytes_parse_or_raise_decode_error(data):
    parses_or_raises_decode_error(data)


@scaled(0.15)
@given(mutated(encoded_messages()))
def test_mutated_messages_parse_or_raise_decode_error(data):
    parses_or_raises_decode_error(data)


@scaled(0.15)
@given(st.one_of(st.binary(max_size=100), stun_shaped_bytes(), mutated(encoded_messages())))
def test_hot_path_parsers_never_raise_anything_else(data):
    found = stun.parse_send_indication(data)  # None or (peer, payload), never an exception
    assert found is None or (isinstance(found[0], tuple) and isinstance(found[1], bytes))
    with contextlib.suppress(stun.StunDecodeError):
        stun.parse_channel_data(data)
    with contextlib.suppress(stun.StunDecodeError):
        stun.tcp_frame_length(data)


# --- (2) encode -> parse round trips ---


@scaled(0.25)
@given(messages())
def test_encode_parse_round_trip(message):
    parsed = stun.parse(stun.encode(message))
    assert (parsed.method, parsed.msg_class, parsed.transaction_id, parsed.cookie) == (
        message.method,
        message.msg_class,
        message.transaction_id,
        message.cookie,
    )
    assert parsed.attributes == message.attributes


@scaled(0.1)
@given(messages())
def test_unknown_required_lists_each_unknown_type_below_0x8000_once(message):
    parsed = stun.parse(stun.encode(message))
    expected = []
    for kind, _ in message.attributes:
        if kind < 0x8000 and kind not in Attr._value2member_map_ and kind not in expected:
            expected.append(kind)
    assert parsed.unknown_required == expected


@scaled(0.15)
@given(messages(rfc3489=False), st.booleans(), integrity_keys | st.none())
def test_round_trip_with_integrity_and_fingerprint_appends_them_last(message, fingerprint, key):
    parsed = stun.parse(stun.encode(message, integrity_key=key, fingerprint=fingerprint))
    n = len(message.attributes)
    assert parsed.attributes[:n] == message.attributes
    assert [kind for kind, _ in parsed.attributes[n:]] == [Attr.MESSAGE_INTEGRITY] * (key is not None) + [
        Attr.FINGERPRINT
    ] * fingerprint


@scaled(0.5)
@given(transaction_ids, addresses, payloads)
def test_data_indication_encoder_matches_the_general_encoder(tid, peer, payload):
    message = Message(Method.DATA, MessageClass.INDICATION, tid, [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, payload)])
    assert stun.encode_data_indication(tid, peer, payload) == stun.encode(message)


@scaled(0.15)
@given(messages(rfc3489=False), st.booleans())
def test_send_indication_fast_path_agrees_with_parse(message, fingerprint):
    message.method, message.msg_class = Method.SEND, MessageClass.INDICATION
    data = stun.encode(message, fingerprint=fingerprint)
    parsed = stun.parse(data)
    peer, payload = parsed.get(Attr.XOR_PEER_ADDRESS), parsed.get(Attr.DATA)
    if peer is None or payload is None or parsed.unknown_required:
        assert stun.parse_send_indication(data) is None
    else:
        assert stun.parse_send_indication(data) == (peer, payload)


@scaled(0.5)
@given(channel_numbers, payloads, st.booleans())
def test_channel_data_round_trip(channel, payload, pad):
    assert stun.parse_channel_data(stun.encode_channel_data(channel, payload, pad=pad)) == (channel, payload)


# --- (3) integrity and fingerprint verify, and fail after any single-bit flip of a protected byte ---


@scaled(0.1)
@given(messages(rfc3489=False), integrity_keys, st.booleans())
def test_integrity_verifies_after_encode(message, key, fingerprint):
    assert stun.check_integrity(stun.parse(stun.encode(message, integrity_key=key, fingerprint=fingerprint)), key)


@scaled(0.15)
@given(messages(rfc3489=False), integrity_keys, st.data())
def test_integrity_fails_after_any_bit_flip_before_its_end(message, key, data):
    encoded = stun.encode(message, integrity_key=key)
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1), label="bit")  # MESSAGE-INTEGRITY ends the message
    flipped = bytearray(encoded)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    parsed = parses_or_raises_decode_error(bytes(flipped))
    assert parsed is None or not stun.check_integrity(parsed, key)


@scaled(0.1)
@given(messages(rfc3489=False), st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_integrity_fails_with_another_key(message, key, other):
    # Same-length keys: HMAC zero-pads keys, so b"k" and b"k\0" are one key.
    assume(key != other)
    assert not stun.check_integrity(stun.parse(stun.encode(message, integrity_key=key)), other)


@scaled(0.15)
@given(messages(), st.data())
def test_fingerprint_fails_after_any_bit_flip(message, data):
    encoded = stun.encode(message, fingerprint=True)
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1), label="bit")
    flipped = bytearray(encoded)
    flipped[bit // 8] ^= 0x80 >> (bit % 8)
    parsed = parses_or_raises_decode_error(bytes(flipped))
    # Either rejected, or the flip hit the FINGERPRINT type so the message no longer claims one.
    assert parsed is None or parsed.get(Attr.FINGERPRINT) is None


# --- (4) TCP framing across arbitrary segment boundaries ---


@scaled(0.06)
@given(st.lists(tcp_frames(), min_size=1, max_size=8), st.data())
def test_tcp_frame_length_frames_a_stream_split_anywhere(frames, data):
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts"))
    segments = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    buffer = bytearray()
    received = []
    for segment in segments:
        buffer += segment
        while (size := stun.tcp_frame_length(buffer)) is not None and len(buffer) >= size:
            received.append(bytes(buffer[:size]))
            del buffer[:size]
    assert received == frames
    assert buffer == b""
