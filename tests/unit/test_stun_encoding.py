"""The STUN codec's wire formats: message types, every TURN attribute's encoding, the Message API, the rules for
MESSAGE-INTEGRITY and FINGERPRINT and what encode() refuses, unknown attributes, error and success responses, and
RFC 3489 messages without the magic cookie. Malformed input: test_stun_malformed.py.
"""

from __future__ import annotations

import struct
from ipaddress import IPv6Address

import pytest

from relay import stun
from relay.stun import Attr, Message, MessageClass, Method
from tests.support.stun_vectors import TID, attribute, header

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
