"""The STUN codec on malformed input: every way a datagram can be wrong (header, lengths, address families, value
lengths, FINGERPRINT, text, ERROR-CODE) raises the one StunDecodeError, with a message naming the fault.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from relay import stun
from relay.stun import Attr
from tests.support import stun_vectors as vectors
from tests.support.stun_vectors import attribute, header


def with_fingerprint(data: bytes) -> bytes:
    data = data[:2] + struct.pack(">H", len(data) - 20 + 8) + data[4:]
    return data + attribute(Attr.FINGERPRINT, struct.pack(">I", zlib.crc32(data) ^ 0x5354554E))


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
