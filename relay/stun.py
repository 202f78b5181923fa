"""STUN (RFC 5389) and TURN (RFC 5766) message codec: pure bytes in, values out.

One attribute table, one `parse`, one `encode`. MESSAGE-INTEGRITY and FINGERPRINT are computed and verified
exactly as RFC 5389 sections 15.4 and 15.5 say (the length field is rewritten to end at the attribute being
computed). RFC 3489 messages (no magic cookie) parse too, so a Binding response can echo their 16-byte
transaction id through `Message.cookie` + `Message.transaction_id`.

The relay's hot path (ChannelData, Send and Data indications, TCP framing) has its own small functions at the
end of the module that never build `Message` objects. The numbers (classes, methods, attributes, error reasons) and
the `Message` value are in relay/stun_message.py; import them from here.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from collections.abc import Callable
from ipaddress import IPv6Address
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any

from relay.stun_message import (  # noqa: F401 (relay.stun is where the codec's names are imported from)
    ERROR_REASONS,
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    MAGIC_COOKIE,
    MAX_TEXT_BYTES,
    MAX_USERNAME_BYTES,
    Attr,
    Message,
    MessageClass,
    Method,
    StunDecodeError,
    new_transaction_id,
)

# --- message type: the class bits C1 C0 sit between method bits (RFC 5389 6) ---


def _message_type(method: int, msg_class: int) -> int:
    return (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | (msg_class & 0x0110)


def _split_message_type(message_type: int) -> tuple[int, int]:
    method = (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    # An unknown method stays a plain int; the server answers it with 400.
    return _METHODS.get(method, method), _CLASSES[message_type & 0x0110]


_METHODS = {int(method): method for method in Method}
_CLASSES = {int(msg_class): msg_class for msg_class in MessageClass}


# --- attribute values: decode(value bytes, cookie, transaction id) and encode(value, cookie, transaction id) ---

_HEADER = struct.Struct(">HHI12s")
_ATTR_HEADER = struct.Struct(">HH")
_UINT32 = struct.Struct(">I")
_ADDRESS_V4 = struct.Struct(">xBH4s")
_ADDRESS_V6 = struct.Struct(">xBH16s")
_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02
_COOKIE_BYTES = _UINT32.pack(MAGIC_COOKIE)
_PORT_MASK = MAGIC_COOKIE >> 16


def _decode_address(value: bytes, cookie: int, tid: bytes) -> tuple[str, int]:
    if len(value) == 8 and value[1] == _FAMILY_IPV4:
        _, port, packed = _ADDRESS_V4.unpack(value)
        return inet_ntop(AF_INET, packed), port
    if len(value) == 20 and value[1] == _FAMILY_IPV6:
        _, port, packed = _ADDRESS_V6.unpack(value)
        return _unpack_host(packed), port
    raise StunDecodeError(f"bad address family {value[1:2].hex() or 'missing'} or length {len(value)}")


def _encode_address(value: tuple[str, int], cookie: int, tid: bytes) -> bytes:
    host, port = value
    try:
        return _ADDRESS_V4.pack(_FAMILY_IPV4, port, inet_pton(AF_INET, host))
    except OSError:
        return _ADDRESS_V6.pack(_FAMILY_IPV6, port, _pack_ipv6(host))


def _pack_ipv6(host: str) -> bytes:
    try:
        return inet_pton(AF_INET6, host)
    except OSError:
        raise ValueError(f"not an IP address: {host!r}") from None


def _xor_bytes(packed: bytes, tid: bytes) -> bytes:
    # RFC 5389 15.2: IPv4 is XORed with the magic cookie, IPv6 with the cookie followed by the transaction id.
    mask = _COOKIE_BYTES + tid
    return (int.from_bytes(packed) ^ int.from_bytes(mask[: len(packed)])).to_bytes(len(packed))


def _decode_xor_address(value: bytes, cookie: int, tid: bytes) -> tuple[str, int]:
    if cookie != MAGIC_COOKIE:
        raise StunDecodeError("XOR address attribute in a message without the magic cookie")
    _, port = _decode_address(value, cookie, tid)  # validates family and length
    return _unpack_host(_xor_bytes(value[4:], tid)), port ^ _PORT_MASK


def _unpack_host(packed: bytes) -> str:
    """The host as str(ipaddress.ip_address(packed)) spells it, at inet_ntop's speed."""
    if len(packed) == 4:
        return inet_ntop(AF_INET, packed)
    host = inet_ntop(AF_INET6, packed)
    # inet_ntop writes embedded IPv4 (::ffff:a.b.c.d) dotted; ipaddress does so only from Python 3.13.
    return host if "." not in host else str(IPv6Address(packed))


def _encode_xor_address(value: tuple[str, int], cookie: int, tid: bytes) -> bytes:
    if cookie != MAGIC_COOKIE:
        raise ValueError("XOR address attributes need the magic cookie (not an RFC 3489 message)")
    host, port = value
    encoded = _encode_address((host, port ^ _PORT_MASK), cookie, tid)
    return encoded[:4] + _xor_bytes(encoded[4:], tid)


def _text_codec(limit: int) -> tuple[Callable[..., str], Callable[..., bytes]]:
    def decode(value: bytes, cookie: int, tid: bytes) -> str:
        if len(value) > limit:
            raise StunDecodeError(f"text attribute of {len(value)} bytes (limit {limit})")
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise StunDecodeError("text attribute is not UTF-8") from None

    def encode(value: str, cookie: int, tid: bytes) -> bytes:
        encoded = value.encode("utf-8")
        if len(encoded) > limit:
            raise ValueError(f"text attribute of {len(encoded)} bytes (limit {limit})")
        return encoded

    return decode, encode


def _fixed_length(length: int, value: bytes) -> bytes:
    if len(value) != length:
        raise StunDecodeError(f"attribute value of {len(value)} bytes, expected {length}")
    return value


def _decode_error_code(value: bytes, cookie: int, tid: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise StunDecodeError("ERROR-CODE shorter than 4 bytes")
    error_class, number = value[2] & 0x07, value[3]
    if not 3 <= error_class <= 6 or number > 99:
        raise StunDecodeError(f"ERROR-CODE class {error_class} number {number} out of range")
    return error_class * 100 + number, _decode_text(value[4:], cookie, tid)


def _encode_error_code(value: tuple[int, str], cookie: int, tid: bytes) -> bytes:
    code, reason = value
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} out of range 300-699")
    return bytes((0, 0, code // 100, code % 100)) + _encode_text(reason, cookie, tid)


def _decode_unknown_attributes(value: bytes, cookie: int, tid: bytes) -> tuple[int, ...]:
    if len(value) % 2:
        raise StunDecodeError("UNKNOWN-ATTRIBUTES of odd length")
    return struct.unpack(f">{len(value) // 2}H", value)


def _decode_uint32(value: bytes, cookie: int, tid: bytes) -> int:
    return _UINT32.unpack(_fixed_length(4, value))[0]


_decode_text, _encode_text = _text_codec(MAX_TEXT_BYTES)
_decode_username, _encode_username = _text_codec(MAX_USERNAME_BYTES)


def _raw(value: bytes, cookie: int, tid: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, not {type(value).__name__}")  # bytes(5) would be 5 zero bytes
    return bytes(value)


_Decoder = Callable[[bytes, int, bytes], Any]
_Encoder = Callable[[Any, int, bytes], bytes]

# The attribute table: type -> (decode, encode). Anything not listed is kept as raw bytes.
_ATTRIBUTES: dict[int, tuple[_Decoder, _Encoder]] = {
    Attr.MAPPED_ADDRESS: (_decode_address, _encode_address),
    Attr.USERNAME: (_decode_username, _encode_username),
    Attr.MESSAGE_INTEGRITY: (lambda v, c, t: _fixed_length(20, v), lambda v, c, t: bytes(v)),
    Attr.ERROR_CODE: (_decode_error_code, _encode_error_code),
    Attr.UNKNOWN_ATTRIBUTES: (_decode_unknown_attributes, lambda v, c, t: struct.pack(f">{len(v)}H", *v)),
    # CHANNEL-NUMBER: 16-bit number and 16 bits RFFU; REQUESTED-TRANSPORT: protocol byte and 24 bits RFFU.
    Attr.CHANNEL_NUMBER: (lambda v, c, t: _fixed_length(4, v)[0] << 8 | v[1], lambda v, c, t: struct.pack(">H2x", v)),
    Attr.LIFETIME: (_decode_uint32, lambda v, c, t: _UINT32.pack(v)),
    Attr.XOR_PEER_ADDRESS: (_decode_xor_address, _encode_xor_address),
    Attr.DATA: (lambda v, c, t: v, _raw),
    Attr.REALM: (_decode_text, _encode_text),
    Attr.NONCE: (_decode_text, _encode_text),
    Attr.XOR_RELAYED_ADDRESS: (_decode_xor_address, _encode_xor_address),
    Attr.EVEN_PORT: (lambda v, c, t: bool(_fixed_length(1, v)[0] & 0x80), lambda v, c, t: b"\x80" if v else b"\0"),
    Attr.REQUESTED_TRANSPORT: (lambda v, c, t: _fixed_length(4, v)[0], lambda v, c, t: struct.pack(">B3x", v)),
    Attr.DONT_FRAGMENT: (lambda v, c, t: _fixed_length(0, v) == b"", lambda v, c, t: b""),
    Attr.XOR_MAPPED_ADDRESS: (_decode_xor_address, _encode_xor_address),
    Attr.RESERVATION_TOKEN: (lambda v, c, t: _fixed_length(8, v), lambda v, c, t: _fixed_token(v)),
    Attr.SOFTWARE: (_decode_text, _encode_text),
    Attr.ALTERNATE_SERVER: (_decode_address, _encode_address),
    Attr.FINGERPRINT: (_decode_uint32, lambda v, c, t: _UINT32.pack(v)),
}


_ATTRS = {int(attr): attr for attr in Attr}


def _fixed_token(value: bytes) -> bytes:
    if len(value) != 8:
        raise ValueError("RESERVATION-TOKEN must be 8 bytes")
    return bytes(value)


# --- parse and encode ---


def parse(data: bytes) -> Message:
    """Decode one STUN message (a whole UDP datagram or TCP frame). Raises only StunDecodeError."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) < HEADER_LENGTH:
        raise StunDecodeError(f"{len(data)} bytes is shorter than a STUN header")
    message_type, length, cookie, tid = _HEADER.unpack_from(data)
    if message_type & 0xC000:
        raise StunDecodeError("first two bits of a STUN message must be zero")
    if length % 4:
        raise StunDecodeError(f"message length {length} is not a multiple of 4")
    if HEADER_LENGTH + length != len(data):
        raise StunDecodeError(f"message length {length} does not match the {len(data) - 20} bytes after the header")
    method, msg_class = _split_message_type(message_type)
    message = Message(method, msg_class, tid, [], cookie=cookie, raw=data)
    end = len(data)
    pos = HEADER_LENGTH
    while pos < end:  # pos and end stay 4-aligned, so an attribute header always fits
        kind, value_length = _ATTR_HEADER.unpack_from(data, pos)
        value_end = pos + 4 + value_length
        if value_end > end:
            raise StunDecodeError(f"attribute 0x{kind:04x} runs past the end of the message")
        value = data[pos + 4 : value_end]
        next_pos = value_end + (-value_length % 4)
        if kind == Attr.FINGERPRINT:
            if next_pos != end:
                raise StunDecodeError("FINGERPRINT is not the last attribute")
            fingerprint = _decode_uint32(value, cookie, tid)
            if fingerprint != zlib.crc32(data[:pos]) ^ FINGERPRINT_XOR:
                raise StunDecodeError("wrong FINGERPRINT")
            message.attributes.append((Attr.FINGERPRINT, fingerprint))
        elif message.integrity_offset is not None:
            pass  # RFC 5389 15.4: attributes after MESSAGE-INTEGRITY, other than FINGERPRINT, are ignored
        elif kind in _ATTRIBUTES:
            message.attributes.append((_ATTRS[kind], _ATTRIBUTES[kind][0](value, cookie, tid)))
            if kind == Attr.MESSAGE_INTEGRITY:
                message.integrity_offset = pos
        else:
            message.attributes.append((kind, value))
            if kind < 0x8000 and kind not in message.unknown_required:
                message.unknown_required.append(kind)
        pos = next_pos
    return message


def encode(
    message: Message,
    *,
    integrity_key: bytes | None = None,
    fingerprint: bool = False,
    padding: bytes = b"\0",
) -> bytes:
    """Serialise `message`, appending MESSAGE-INTEGRITY (if a key is given) and FINGERPRINT (if asked).

    `padding` is the byte that pads attribute values to 4 bytes; receivers ignore it (RFC 5389 15), it only
    matters to reproduce captured bytes such as the RFC 5769 vectors.
    """
    cookie, tid = message.cookie, message.transaction_id
    if len(tid) != 12:
        raise ValueError(f"transaction id must be 12 bytes, not {len(tid)}")
    parts = []
    for kind, value in message.attributes:
        if kind in (Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT):
            raise ValueError("encode() adds MESSAGE-INTEGRITY and FINGERPRINT itself")
        codec = _ATTRIBUTES.get(kind)
        encoded = codec[1](value, cookie, tid) if codec else _raw(value, cookie, tid)
        parts.append(_ATTR_HEADER.pack(kind, len(encoded)))
        parts.append(encoded)
        parts.append(padding * (-len(encoded) % 4))
    body = b"".join(parts)
    message_type = _message_type(message.method, message.msg_class)
    if integrity_key is not None:
        # The HMAC covers the header with a length that ends at MESSAGE-INTEGRITY, whatever follows it.
        head = _HEADER.pack(message_type, len(body) + 24, cookie, tid)
        mac = hmac.new(integrity_key, head + body, hashlib.sha1).digest()
        body += _ATTR_HEADER.pack(Attr.MESSAGE_INTEGRITY, 20) + mac
    if fingerprint:
        head = _HEADER.pack(message_type, len(body) + 8, cookie, tid)
        crc = zlib.crc32(head + body) ^ FINGERPRINT_XOR
        body += _ATTR_HEADER.pack(Attr.FINGERPRINT, 4) + _UINT32.pack(crc)
    if len(body) > 0xFFFF:
        raise ValueError(f"message body of {len(body)} bytes does not fit the 16-bit length")
    return _HEADER.pack(message_type, len(body), cookie, tid) + body


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 5389 15.4 long-term credential key: MD5(username ":" realm ":" SASLprep(password)).

    The caller passes a password that is already SASLprep'd (for ASCII passwords that is the password itself).
    """
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def check_integrity(message: Message, key: bytes) -> bool:
    """Verify MESSAGE-INTEGRITY against the bytes the message was parsed from. False when there is none."""
    offset = message.integrity_offset
    raw = message.raw
    if offset is None or len(raw) < offset + 24:
        return False
    # Recompute with the length field covering up to and including MESSAGE-INTEGRITY (RFC 5389 15.4).
    covered = raw[:2] + struct.pack(">H", offset + 24 - HEADER_LENGTH) + raw[4:offset]
    expected = hmac.new(key, covered, hashlib.sha1).digest()
    return hmac.compare_digest(expected, raw[offset + 4 : offset + 24])


def success_response(request: Message) -> Message:
    return Message(request.method, MessageClass.SUCCESS, request.transaction_id, [], cookie=request.cookie)


def error_response(request: Message, code: int, reason: str | None = None) -> Message:
    """An error response carrying ERROR-CODE; a 420 also lists the request's unknown_required attributes."""
    if reason is None:
        reason = ERROR_REASONS.get(code, "Error")
    response = Message(request.method, MessageClass.ERROR, request.transaction_id, [], cookie=request.cookie)
    response.add(Attr.ERROR_CODE, (code, reason))
    if code == 420 and request.unknown_required:
        response.add(Attr.UNKNOWN_ATTRIBUTES, tuple(request.unknown_required))
    return response


# --- hot path: ChannelData, Send/Data indications, TCP framing. No Message objects, few copies. ---

_CHANNEL_HEADER = struct.Struct(">HH")
_SEND_INDICATION = _message_type(Method.SEND, MessageClass.INDICATION)
_DATA_INDICATION = _message_type(Method.DATA, MessageClass.INDICATION)
_KNOWN_TYPES = frozenset(_ATTRIBUTES)
_SEND_HEADER = struct.Struct(">HHI")
_XOR_V4_VALUE = struct.Struct(">HI")
# Data indication = header, XOR-PEER-ADDRESS (IPv4 or IPv6), DATA attribute header; the payload follows. Per
# family: the packer, the family byte, XOR-PEER-ADDRESS's value length and the message length before DATA's value.
_DATA_INDICATION_IPV4 = (struct.Struct(">HHI12sHHxBHIHH").pack, _FAMILY_IPV4, 8, 4 + 8 + 4)
_DATA_INDICATION_IPV6 = (struct.Struct(">HHI12sHHxBH16sHH").pack, _FAMILY_IPV6, 20, 4 + 20 + 4)
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length % 4


def is_channel_data(data: bytes) -> bool:
    """ChannelData starts with a channel number 0x4000-0x7FFF; STUN messages start with two zero bits."""
    return len(data) > 0 and 0x40 <= data[0] <= 0x7F


def encode_channel_data(channel: int, payload: bytes, pad: bool = False) -> bytes:
    """RFC 5766 11.4 ChannelData; `pad=True` pads to a multiple of 4 as TCP requires (11.5)."""
    header = _CHANNEL_HEADER.pack(channel, len(payload))
    if pad and len(payload) % 4:
        return b"".join((header, payload, _PADDING[len(payload) % 4]))
    return header + payload


def parse_channel_data(data: bytes) -> tuple[int, bytes]:
    """(channel number, application data) of a ChannelData message, trailing padding allowed."""
    if len(data) < 4:
        raise StunDecodeError("ChannelData shorter than its 4-byte header")
    channel, length = _CHANNEL_HEADER.unpack_from(data)
    if not 0x4000 <= channel <= 0x7FFF:
        raise StunDecodeError(f"channel number 0x{channel:04x} outside 0x4000-0x7FFF")
    extra = len(data) - 4 - length
    if not 0 <= extra <= 3:
        raise StunDecodeError(f"ChannelData length {length} does not match {len(data) - 4} bytes of data")
    return channel, data[4 : 4 + length] if extra else data[4:]


def parse_send_indication(data: bytes) -> tuple[tuple[str, int], bytes] | None:
    """(peer, data) of a well-formed Send indication, else None (RFC 5766 10.2: such indications are dropped).

    Unknown comprehension-required attributes make the indication invalid (RFC 5389 7.3.1), so does a wrong
    FINGERPRINT; the first XOR-PEER-ADDRESS is the peer; what follows MESSAGE-INTEGRITY is ignored, as in parse().
    """
    end = len(data)
    if end < HEADER_LENGTH + 8:
        return None
    message_type, length, cookie = _SEND_HEADER.unpack_from(data)
    if message_type != _SEND_INDICATION or cookie != MAGIC_COOKIE or length + HEADER_LENGTH != end or length % 4:
        return None
    peer = payload = None
    after_integrity = False
    pos = HEADER_LENGTH
    while pos < end:
        kind, value_length = _ATTR_HEADER.unpack_from(data, pos)
        start = pos + 4
        pos = start + value_length + (-value_length % 4)
        if pos > end:
            return None
        if kind == 0x8028:  # FINGERPRINT
            if pos != end or value_length != 4:
                return None
            if _UINT32.unpack_from(data, start)[0] != zlib.crc32(data[: start - 4]) ^ FINGERPRINT_XOR:
                return None
        elif after_integrity:
            continue
        elif kind == 0x0012:  # XOR-PEER-ADDRESS
            if peer is not None:
                continue
            if value_length == 8 and data[start + 1] == _FAMILY_IPV4:
                port, address = _XOR_V4_VALUE.unpack_from(data, start + 2)
                peer = (inet_ntop(AF_INET, _UINT32.pack(address ^ MAGIC_COOKIE)), port ^ _PORT_MASK)
            elif value_length == 20 and data[start + 1] == _FAMILY_IPV6:
                port = _CHANNEL_HEADER.unpack_from(data, start + 2)[0]
                peer = (_unpack_host(_xor_bytes(data[start + 4 : start + 20], data[8:20])), port ^ _PORT_MASK)
            else:
                return None
        elif kind == 0x0013:  # DATA
            if payload is None:
                payload = data[start : start + value_length]
        elif kind == 0x0008:  # MESSAGE-INTEGRITY
            after_integrity = True
        elif kind < 0x8000 and kind not in _KNOWN_TYPES:
            return None
    if peer is None or payload is None:
        return None
    return peer, payload


def encode_data_indication(transaction_id: bytes, peer: tuple[str, int], payload: bytes) -> bytes:
    """A Data indication (RFC 5766 10.3) carrying XOR-PEER-ADDRESS and DATA, built with one struct pack."""
    host, port = peer
    padding = _PADDING[len(payload) % 4]
    try:
        address = _UINT32.unpack(inet_pton(AF_INET, host))[0] ^ MAGIC_COOKIE
        pack, family, value_length, length = _DATA_INDICATION_IPV4
    except OSError:
        address = _xor_bytes(_pack_ipv6(host), transaction_id)
        pack, family, value_length, length = _DATA_INDICATION_IPV6
    header = pack(
        _DATA_INDICATION, length + len(payload) + len(padding), MAGIC_COOKIE, transaction_id,
        0x0012, value_length, family, port ^ _PORT_MASK, address, 0x0013, len(payload),
    )  # fmt: skip
    return b"".join((header, payload, padding))


def tcp_frame_length(buffer: bytes | bytearray | memoryview) -> int | None:
    """Length of the next frame in a TCP stream: a STUN message, or ChannelData padded to 4 (RFC 5766 11.5).

    None until 4 bytes are buffered; StunDecodeError when the first bytes are neither.
    """
    if len(buffer) < 4:
        return None
    first, length = _CHANNEL_HEADER.unpack_from(buffer)
    if first < 0x4000:
        if length % 4:
            raise StunDecodeError(f"STUN message length {length} is not a multiple of 4")
        return HEADER_LENGTH + length
    if first < 0x8000:
        return 4 + length + (-length % 4)
    raise StunDecodeError(f"stream starts with 0x{first:04x}: neither STUN nor ChannelData")
