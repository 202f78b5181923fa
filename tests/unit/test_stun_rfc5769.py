"""The STUN codec against outside references: the RFC 5769 test vectors byte for byte (parse, integrity with the
short-term and long-term keys, re-encoding) and aioice's independent codec both ways.
"""

from __future__ import annotations

import hashlib

import aioice.stun
import pytest

from relay import stun
from relay.stun import Attr, Message, MessageClass, Method
from tests.support import stun_vectors as vectors
from tests.support.stun_vectors import TID

SHORT_TERM_KEY = vectors.SHORT_TERM_PASSWORD.encode()


def without_integrity(message: Message) -> Message:
    """The message as encode() takes it: MESSAGE-INTEGRITY and FINGERPRINT are encode()'s to add."""
    attributes = [(k, v) for k, v in message.attributes if k not in (Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT)]
    return Message(message.method, message.msg_class, message.transaction_id, attributes, cookie=message.cookie)


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
