"""Unit tests of the STUN codec: RFC 5769 vectors, wire formats, every malformed case, the hot-path helpers."""

from __future__ import annotations

import hashlib
import struct
import zlib
from ipaddress import IPv6Address

import aioice.stun
import pytest

from relay import stun
from relay.stun import Attr, Message, MessageClass, Method
from tests.support import stun_vectors as vectors

SHORT_TERM_KEY = vectors.SHORT_TERM_PASSWORD.encode()
TID = bytes(range(12))


def without_integrity(message: Message) -> Message:
    """The message as encode() takes it: MESSAGE-INTEGRITY and FINGERPRINT are encode()'s to add."""
    attributes = [(k, v) for k, v in message.attributes if k not in (Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT)]
    return Message(message.method, message.msg_class, message.transaction_id, attributes, cookie=message.cookie)


def header(message_type: int, body: bytes, cookie: int = stun.MAGIC_COOKIE, tid: bytes = TID) -> bytes:
    return struct.pack(">HHI", message_type, len(body), cookie) + tid + body


def attribute(kind: int, value: bytes) -> bytes:
    return struct.pack(">HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def with_fingerprint(data: bytes) -> bytes:
    data = data[:2] + struct.pack(">H", len(data) - 20 + 8) + data[4:]
    return data + attribute(Attr.FINGERPRINT, struct.pack(">I", zlib.crc32(data) ^ 0x5354554E))


# --- RFC 5769 test vectors ---


def test_rfc5769_request_parses():
    message = stun.parse(vectors.REQUEST)
    assert (message.method, message.msg_class, message.transaction_id) == (
        Method.BINDING,
        MessageClass.REQUEST,
        vectors.TRANSACTION_ID,
    )
    assert message.get(Attr.SOFTWARE) == "STUN test client"
    assert message.get(Attr.USERNAME) == "evtj:h6vY"
    assert message.get(0x0024) == bytes.fromhex("6e0001ff")  # PRIORITY, kept raw
    assert message.get(Attr.FINGERPRINT) == 0xE57A3BCF


def test_rfc5769_request_integrity_verifies_with_the_short_term_password():
    assert stun.check_integrity(stun.parse(vectors.REQUEST), SHORT_TERM_KEY)


def test_rfc5769_request_integrity_fails_with_another_password():
    assert not stun.check_integrity(stun.parse(vectors.REQUEST), b"VOkJxbRl1RmTxUk/WvJxBu")


def test_rfc5769_request_lists_ice_priority_as_unknown_required():
    assert stun.parse(vectors.REQUEST).unknown_required == [0x0024]  # ICE-CONTROLLED 0x8029 is optional


def test_rfc5769_request_reencodes_byte_for_byte():
    message = without_integrity(stun.parse(vectors.REQUEST))
    assert stun.encode(message, integrity_key=SHORT_TERM_KEY, fingerprint=True, padding=b" ") == vectors.REQUEST


def test_rfc5769_ipv4_response_decodes_xor_mapped_address():
    message = stun.parse(vectors.RESPONSE_IPV4)
    assert message.msg_class == MessageClass.SUCCESS
    assert message.get(Attr.XOR_MAPPED_ADDRESS) == ("192.0.2.1", 32853)
    assert message.get(Attr.SOFTWARE) == "test vector"


RESPONSES = [pytest.param(vectors.RESPONSE_IPV4, id="ipv4"), pytest.param(vectors.RESPONSE_IPV6, id="ipv6")]


@pytest.mark.parametrize("vector", RESPONSES)
def test_rfc5769_response_integrity_verifies(vector):
    assert stun.check_integrity(stun.parse(vector), SHORT_TERM_KEY)


@pytest.mark.parametrize("vector", RESPONSES)
def test_rfc5769_response_reencodes_byte_for_byte(vector):
    message = without_integrity(stun.parse(vector))
    assert stun.encode(message, integrity_key=SHORT_TERM_KEY, fingerprint=True, padding=b" ") == vector


def test_rfc5769_ipv6_response_decodes_xor_mapped_address():
    message = stun.parse(vectors.RESPONSE_IPV6)
    assert message.get(Attr.XOR_MAPPED_ADDRESS) == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)


def test_rfc5769_long_term_request_parses_username_nonce_realm():
    message = stun.parse(vectors.REQUEST_LONG_TERM)
    assert message.get(Attr.USERNAME) == vectors.LONG_TERM_USERNAME
    assert message.get(Attr.NONCE) == vectors.LONG_TERM_NONCE
    assert message.get(Attr.REALM) == vectors.LONG_TERM_REALM


def test_long_term_key_is_md5_of_username_realm_password():
    key = stun.long_term_key(vectors.LONG_TERM_USERNAME, vectors.LONG_TERM_REALM, vectors.LONG_TERM_PASSWORD)
    assert key == hashlib.md5("マトリックス:example.org:TheMatrIX".encode()).digest()


def test_rfc5769_long_term_request_integrity_verifies_with_long_term_key():
    key = stun.long_term_key(vectors.LONG_TERM_USERNAME, vectors.LONG_TERM_REALM, vectors.LONG_TERM_PASSWORD)
    assert stun.check_integrity(stun.parse(vectors.REQUEST_LONG_TERM), key)


def test_rfc5769_long_term_request_fails_with_the_unprepared_password():
    key = stun.long_term_key(vectors.LONG_TERM_USERNAME, vectors.LONG_TERM_REALM, "The\u00adM\u00aatr\u2168")
    assert not stun.check_integrity(stun.parse(vectors.REQUEST_LONG_TERM), key)


def test_rfc5769_long_term_request_reencodes_byte_for_byte():
    key = stun.long_term_key(vectors.LONG_TERM_USERNAME, vectors.LONG_TERM_REALM, vectors.LONG_TERM_PASSWORD)
    reencoded = stun.encode(without_integrity(stun.parse(vectors.REQUEST_LONG_TERM)), integrity_key=key)
    assert reencoded == vectors.REQUEST_LONG_TERM


# --- wire formats of the TURN attributes and message types ---


@pytest.mark.parametrize(
    ("method", "msg_class", "message_type"),
    [
        (Method.BINDING, MessageClass.REQUEST, 0x0001),
        (Method.BINDING, MessageClass.SUCCESS, 0x0101),
        (Method.ALLOCATE, MessageClass.ERROR, 0x0113),
        (Method.CHANNEL_BIND, MessageClass.SUCCESS, 0x0109),
        (Method.SEND, MessageClass.INDICATION, 0x0016),
        (Method.DATA, MessageClass.INDICATION, 0x0017),
        (0xFFF, MessageClass.ERROR, 0x3FFF),
    ],
)
def test_message_type_interleaves_class_bits_with_method_bits(method, msg_class, message_type):
    data = stun.encode(Message(method, msg_class, TID))
    assert struct.unpack(">H", data[:2])[0] == message_type
    assert (stun.parse(data).method, stun.parse(data).msg_class) == (method, msg_class)


def test_unknown_method_parses_as_plain_int():
    message = stun.parse(header(0x0002, b""))  # method 0x002 (RFC 3489 Shared Secret), not ours
    assert message.method == 2 and not isinstance(message.method, Method)


@pytest.mark.parametrize(
    ("kind", "value", "wire"),
    [
        (Attr.CHANNEL_NUMBER, 0x4000, "000c000440000000"),
        (Attr.LIFETIME, 600, "000d000400000258"),
        (Attr.REQUESTED_TRANSPORT, 17, "0019000411000000"),
        (Attr.EVEN_PORT, True, "0018000180000000"),
        (Attr.EVEN_PORT, False, "0018000100000000"),
        (Attr.DONT_FRAGMENT, True, "001a0000"),
        (Attr.RESERVATION_TOKEN, bytes(range(8)), "002200080001020304050607"),
        (Attr.ERROR_CODE, (438, "Stale Nonce"), "0009000f000004265374616c65204e6f6e636500"),
        (Attr.UNKNOWN_ATTRIBUTES, (0x0024, 0x0031, 0x7FFF), "000a0006002400317fff0000"),
        (Attr.MAPPED_ADDRESS, ("192.0.2.1", 32853), "0001000800018055c0000201"),
        (Attr.ALTERNATE_SERVER, ("2001:db8::1", 3478), "8023001400020d9620010db8000000000000000000000001"),
        (Attr.XOR_PEER_ADDRESS, ("192.0.2.1", 32853), "001200080001a147e112a643"),
        (Attr.XOR_RELAYED_ADDRESS, ("192.0.2.1", 32853), "001600080001a147e112a643"),
        (Attr.DATA, b"\x01\x02\x03", "0013000301020300"),
        (Attr.NONCE, "abc", "0015000361626300"),
    ],
)
def test_attribute_wire_format(kind, value, wire):
    data = stun.encode(Message(Method.ALLOCATE, MessageClass.REQUEST, TID, [(kind, value)]))
    assert data[20:].hex() == wire
    assert stun.parse(data).attributes == [(kind, value)]


def test_xor_peer_address_may_repeat_in_order():
    peers = [("192.0.2.1", 1), ("2001:db8::2", 2), ("192.0.2.3", 3)]
    message = Message(Method.CREATE_PERMISSION, MessageClass.REQUEST, TID)
    for peer in peers:
        message.add(Attr.XOR_PEER_ADDRESS, peer)
    assert stun.parse(stun.encode(message)).get_all(Attr.XOR_PEER_ADDRESS) == peers


def test_ipv4_mapped_ipv6_address_stays_ipv6_in_ipaddress_spelling():
    message = Message(Method.BINDING, MessageClass.SUCCESS, TID, [(Attr.XOR_MAPPED_ADDRESS, ("::ffff:192.0.2.1", 9))])
    data = stun.encode(message)
    assert data[25] == 0x02  # family IPv6: normalising dual-stack addresses is the server's job
    assert stun.parse(data).get(Attr.XOR_MAPPED_ADDRESS) == (str(IPv6Address("::ffff:192.0.2.1")), 9)


def test_get_returns_default_when_absent():
    assert Message(Method.BINDING, MessageClass.REQUEST, TID).get(Attr.NONCE, "none") == "none"


def test_add_chains_and_appends_in_order():
    message = Message(Method.BINDING, MessageClass.REQUEST, TID).add(Attr.SOFTWARE, "a").add(Attr.REALM, "b")
    assert message.attributes == [(Attr.SOFTWARE, "a"), (Attr.REALM, "b")]


def test_new_message_gets_a_random_transaction_id():
    assert len(Message(Method.BINDING, MessageClass.REQUEST).transaction_id) == 12
    assert Message(1, 0).transaction_id != Message(1, 0).transaction_id


# --- MESSAGE-INTEGRITY and FINGERPRINT rules ---


def test_check_integrity_is_false_without_message_integrity():
    assert not stun.check_integrity(stun.parse(stun.encode(Message(Method.BINDING, MessageClass.REQUEST, TID))), b"key")


def test_check_integrity_is_false_for_a_message_not_from_parse():
    assert not stun.check_integrity(Message(Method.BINDING, MessageClass.REQUEST, TID), b"key")


def test_integrity_offset_points_at_message_integrity_header():
    data = stun.encode(Message(Method.BINDING, MessageClass.REQUEST, TID, [(Attr.SOFTWARE, "x")]), integrity_key=b"k")
    offset = stun.parse(data).integrity_offset
    assert offset == 28 and data[offset : offset + 4] == bytes.fromhex("00080014")


def test_attributes_after_message_integrity_are_ignored():
    request = Message(Method.ALLOCATE, MessageClass.REQUEST, TID, [(Attr.USERNAME, "u")])
    signed = stun.encode(request, integrity_key=b"k")
    extra = attribute(Attr.LIFETIME, struct.pack(">I", 0)) + attribute(0x0031, b"zz")
    data = signed[:2] + struct.pack(">H", len(signed) - 20 + len(extra)) + signed[4:] + extra
    message = stun.parse(data)
    assert message.get(Attr.LIFETIME) is None
    assert message.unknown_required == []
    assert stun.check_integrity(message, b"k")  # the HMAC covers only what precedes MESSAGE-INTEGRITY


def test_fingerprint_after_message_integrity_is_checked_and_kept():
    data = stun.encode(Message(Method.BINDING, MessageClass.REQUEST, TID), integrity_key=b"k", fingerprint=True)
    message = stun.parse(data)
    assert [kind for kind, _ in message.attributes] == [Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT]
    assert stun.check_integrity(message, b"k")


def test_encode_refuses_message_integrity_in_attributes():
    message = Message(Method.BINDING, MessageClass.REQUEST, TID, [(Attr.MESSAGE_INTEGRITY, bytes(20))])
    with pytest.raises(ValueError, match="MESSAGE-INTEGRITY"):
        stun.encode(message)


def test_encode_refuses_fingerprint_in_attributes():
    message = Message(Method.BINDING, MessageClass.REQUEST, TID, [(Attr.FINGERPRINT, 0)])
    with pytest.raises(ValueError, match="FINGERPRINT"):
        stun.encode(message)


def test_encode_refuses_xor_address_without_magic_cookie():
    message = Message(Method.BINDING, MessageClass.SUCCESS, TID, [(Attr.XOR_MAPPED_ADDRESS, ("192.0.2.1", 1))])
    message.cookie = 0x01020304
    with pytest.raises(ValueError, match="magic cookie"):
        stun.encode(message)


def test_encode_refuses_a_transaction_id_that_is_not_12_bytes():
    with pytest.raises(ValueError, match="12 bytes"):
        stun.encode(Message(Method.BINDING, MessageClass.REQUEST, b"short"))


def test_encode_refuses_an_int_for_a_raw_attribute():
    message = Message(Method.SEND, MessageClass.INDICATION, TID, [(Attr.DATA, 5)])
    with pytest.raises(TypeError, match="expected bytes"):
        stun.encode(message)


# --- unknown attributes and responses ---


def test_unknown_comprehension_required_attributes_are_listed_once_in_order():
    body = attribute(0x0031, b"a") + attribute(0x0024, b"b") + attribute(0x0031, b"c")
    assert stun.parse(header(0x0003, body)).unknown_required == [0x0031, 0x0024]


def test_unknown_comprehension_optional_attributes_are_not_listed():
    assert stun.parse(header(0x0003, attribute(0x8031, b"a"))).unknown_required == []


def test_unknown_attribute_value_is_kept_raw():
    assert stun.parse(header(0x0003, attribute(0x7777, b"\x01\x02\x03"))).attributes == [(0x7777, b"\x01\x02\x03")]


def test_error_response_carries_code_and_standard_reason():
    request = stun.parse(header(0x0003, b""))
    response = stun.error_response(request, 437)
    assert (response.method, response.msg_class, response.transaction_id) == (
        Method.ALLOCATE,
        MessageClass.ERROR,
        TID,
    )
    assert response.get(Attr.ERROR_CODE) == (437, "Allocation Mismatch")


def test_error_response_takes_a_custom_reason():
    response = stun.error_response(stun.parse(header(0x0003, b"")), 400, "Bad channel")
    assert response.get(Attr.ERROR_CODE) == (400, "Bad channel")


def test_error_response_420_lists_the_unknown_attributes():
    request = stun.parse(header(0x0003, attribute(0x0031, b"a") + attribute(0x0032, b"b")))
    response = stun.parse(stun.encode(stun.error_response(request, 420)))
    assert response.get(Attr.ERROR_CODE) == (420, "Unknown Attribute")
    assert response.get(Attr.UNKNOWN_ATTRIBUTES) == (0x0031, 0x0032)


def test_error_reasons_cover_every_code_the_relay_sends():
    assert set(stun.ERROR_REASONS) == {300, 400, 401, 403, 420, 437, 438, 441, 442, 486, 500, 508}


def test_success_response_echoes_method_and_transaction_id():
    response = stun.success_response(stun.parse(header(0x0009, b"")))
    assert (response.method, response.msg_class, response.transaction_id, response.attributes) == (
        Method.CHANNEL_BIND,
        MessageClass.SUCCESS,
        TID,
        [],
    )


# --- RFC 3489 (no magic cookie) ---

RFC3489_TID = bytes.fromhex("0102030405060708090a0b0c0d0e0f10")


def test_rfc3489_binding_request_parses_with_its_16_byte_transaction_id():
    message = stun.parse(b"\x00\x01\x00\x00" + RFC3489_TID)
    assert message.method == Method.BINDING and message.cookie != stun.MAGIC_COOKIE
    assert struct.pack(">I", message.cookie) + message.transaction_id == RFC3489_TID


def test_rfc3489_response_echoes_the_16_byte_transaction_id_with_mapped_address():
    response = stun.success_response(stun.parse(b"\x00\x01\x00\x00" + RFC3489_TID)).add(
        Attr.MAPPED_ADDRESS, ("198.51.100.7", 40000)
    )
    data = stun.encode(response)
    assert data[4:20] == RFC3489_TID
    assert stun.parse(data).get(Attr.MAPPED_ADDRESS) == ("198.51.100.7", 40000)


# --- malformed input: one StunDecodeError per case ---


def test_parse_rejects_empty_datagram():
    with pytest.raises(stun.StunDecodeError):
        stun.parse(b"")


def test_parse_rejects_truncated_header():
    with pytest.raises(stun.StunDecodeError, match="shorter than a STUN header"):
        stun.parse(vectors.REQUEST[:19])


def test_parse_rejects_first_two_bits_not_zero():
    with pytest.raises(stun.StunDecodeError, match="first two bits"):
        stun.parse(b"\x40" + vectors.REQUEST[1:])


def test_parse_rejects_length_not_a_multiple_of_4():
    with pytest.raises(stun.StunDecodeError, match="multiple of 4"):
        stun.parse(header(0x0001, b"")[:2] + b"\x00\x02" + header(0x0001, b"")[4:] + b"\0\0")


def test_parse_rejects_length_longer_than_the_datagram():
    with pytest.raises(stun.StunDecodeError, match="does not match"):
        stun.parse(vectors.REQUEST[:-4])


def test_parse_rejects_bytes_after_the_declared_length():
    with pytest.raises(stun.StunDecodeError, match="does not match"):
        stun.parse(vectors.REQUEST + b"\0\0\0\0")


def test_parse_rejects_attribute_running_past_the_end():
    data = header(0x0001, struct.pack(">HH", Attr.SOFTWARE, 8) + b"abcd")
    with pytest.raises(stun.StunDecodeError, match="runs past the end"):
        stun.parse(data)


def test_parse_rejects_bad_address_family():
    with pytest.raises(stun.StunDecodeError, match="address family"):
        stun.parse(header(0x0101, attribute(Attr.MAPPED_ADDRESS, bytes.fromhex("00038055c0000201"))))


def test_parse_rejects_ipv4_address_of_ipv6_length():
    with pytest.raises(stun.StunDecodeError, match="length 20"):
        stun.parse(header(0x0101, attribute(Attr.MAPPED_ADDRESS, bytes.fromhex("00018055") + bytes(16))))


def test_parse_rejects_ipv6_address_of_ipv4_length():
    with pytest.raises(stun.StunDecodeError, match="length 8"):
        stun.parse(header(0x0101, attribute(Attr.XOR_MAPPED_ADDRESS, bytes.fromhex("00028055c0000201"))))


def test_parse_rejects_empty_address():
    with pytest.raises(stun.StunDecodeError, match="address family"):
        stun.parse(header(0x0101, attribute(Attr.XOR_PEER_ADDRESS, b"")))


@pytest.mark.parametrize(
    ("kind", "length"),
    [
        (Attr.CHANNEL_NUMBER, 2),
        (Attr.LIFETIME, 8),
        (Attr.REQUESTED_TRANSPORT, 1),
        (Attr.EVEN_PORT, 4),
        (Attr.DONT_FRAGMENT, 4),
        (Attr.RESERVATION_TOKEN, 4),
        (Attr.MESSAGE_INTEGRITY, 16),
        (Attr.ERROR_CODE, 3),
        (Attr.UNKNOWN_ATTRIBUTES, 3),
    ],
)
def test_parse_rejects_bad_value_length(kind, length):
    with pytest.raises(stun.StunDecodeError):
        stun.parse(header(0x0003, attribute(kind, bytes(length))))


def test_parse_rejects_fingerprint_of_bad_length():
    data = header(0x0001, attribute(Attr.FINGERPRINT, bytes(8)))
    with pytest.raises(stun.StunDecodeError, match="expected 4"):
        stun.parse(data)


def test_parse_rejects_xor_attribute_without_magic_cookie():
    data = header(0x0101, attribute(Attr.XOR_MAPPED_ADDRESS, bytes.fromhex("0001a147e112a643")), cookie=0x01020304)
    with pytest.raises(stun.StunDecodeError, match="magic cookie"):
        stun.parse(data)


def test_parse_rejects_fingerprint_not_last():
    fingerprinted = with_fingerprint(header(0x0001, b""))
    trailer = attribute(Attr.SOFTWARE, b"late")
    data = fingerprinted[:2] + struct.pack(">H", len(fingerprinted) - 20 + len(trailer)) + fingerprinted[4:] + trailer
    with pytest.raises(stun.StunDecodeError, match="not the last"):
        stun.parse(data)


def test_parse_rejects_wrong_fingerprint():
    data = bytearray(vectors.RESPONSE_IPV4)
    data[-1] ^= 1
    with pytest.raises(stun.StunDecodeError, match="wrong FINGERPRINT"):
        stun.parse(bytes(data))


def test_parse_rejects_fingerprint_over_changed_bytes():
    data = bytearray(vectors.REQUEST)
    data[27] = 23  # inside SOFTWARE, as coturn's rfc5769check does
    with pytest.raises(stun.StunDecodeError, match="wrong FINGERPRINT"):
        stun.parse(bytes(data))


def test_parse_rejects_text_that_is_not_utf8():
    with pytest.raises(stun.StunDecodeError, match="UTF-8"):
        stun.parse(header(0x0001, attribute(Attr.SOFTWARE, b"\xff\xfe")))


def test_parse_rejects_username_of_513_bytes():
    with pytest.raises(stun.StunDecodeError, match="limit 512"):
        stun.parse(header(0x0003, attribute(Attr.USERNAME, b"u" * 513)))


def test_parse_rejects_realm_over_763_bytes():
    with pytest.raises(stun.StunDecodeError, match="limit 763"):
        stun.parse(header(0x0003, attribute(Attr.REALM, b"r" * 764)))


def test_parse_rejects_error_code_class_out_of_range():
    with pytest.raises(stun.StunDecodeError, match="class 2"):
        stun.parse(header(0x0113, attribute(Attr.ERROR_CODE, bytes((0, 0, 2, 0)))))


def test_parse_rejects_error_code_number_over_99():
    with pytest.raises(stun.StunDecodeError, match="number 100"):
        stun.parse(header(0x0113, attribute(Attr.ERROR_CODE, bytes((0, 0, 4, 100)))))


def test_parse_accepts_bytearray_and_memoryview():
    assert stun.parse(bytearray(vectors.REQUEST)).raw == vectors.REQUEST
    assert stun.parse(memoryview(vectors.REQUEST)).get(Attr.USERNAME) == "evtj:h6vY"


# --- interoperability with aioice's independent codec ---


def test_aioice_parses_our_allocate_request_with_integrity():
    key = stun.long_term_key("user", "example.com", "secret")
    message = Message(Method.ALLOCATE, MessageClass.REQUEST, TID)
    message.add(Attr.REQUESTED_TRANSPORT, 17).add(Attr.USERNAME, "user").add(Attr.REALM, "example.com")
    theirs = aioice.stun.parse_message(stun.encode(message, integrity_key=key, fingerprint=True))
    assert theirs.attributes["REQUESTED-TRANSPORT"] == 17 << 24
    assert theirs.attributes["USERNAME"] == "user"
    assert theirs.check_message_integrity(key)


def test_we_parse_aioice_create_permission_with_integrity():
    key = stun.long_term_key("user", "example.com", "secret")
    theirs = aioice.stun.Message(aioice.stun.Method.CREATE_PERMISSION, aioice.stun.Class.REQUEST, TID)
    theirs.attributes["XOR-PEER-ADDRESS"] = ("2001:db8::7", 5000)
    theirs.attributes["USERNAME"] = "user"
    theirs.add_message_integrity(key)
    message = stun.parse(bytes(theirs))
    assert message.get(Attr.XOR_PEER_ADDRESS) == ("2001:db8::7", 5000)
    assert message.get(Attr.FINGERPRINT) is not None
    assert stun.check_integrity(message, key)


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
