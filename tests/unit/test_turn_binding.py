"""The TURN core's answer to requests that need no credentials: Binding (RFC 5389, and RFC 3489 clients without the
magic cookie), unknown comprehension-required attributes, unknown methods, malformed datagrams and responses a
client sends. Fixtures: tests/unit/conftest.py; harness and helpers: tests/support/relay_fakes.py.
"""

import os

from relay.stun import Attr, Message, MessageClass, Method, encode, parse
from tests.support.relay_fakes import error_code, raw_handle

# --- Binding (RFC 5389) ---


def test_binding_gets_xor_mapped_address_and_software_without_auth(harness):
    request = Message(Method.BINDING, MessageClass.REQUEST)
    reply = parse(raw_handle(harness, encode(request)))
    assert reply.msg_class == MessageClass.SUCCESS and reply.transaction_id == request.transaction_id
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) == ("198.51.100.7", 40000)
    assert reply.get(Attr.SOFTWARE) == "rpturn"
    assert reply.get(Attr.MESSAGE_INTEGRITY) is None


def test_binding_response_has_fingerprint_when_request_had_one(harness):
    reply = parse(raw_handle(harness, encode(Message(Method.BINDING, MessageClass.REQUEST), fingerprint=True)))
    assert reply.get(Attr.FINGERPRINT) is not None


def test_binding_response_has_no_fingerprint_when_request_had_none(harness):
    reply = parse(raw_handle(harness, encode(Message(Method.BINDING, MessageClass.REQUEST))))
    assert reply.get(Attr.FINGERPRINT) is None


def test_binding_from_rfc3489_client_gets_mapped_address_and_its_transaction_id(harness):
    request = Message(Method.BINDING, MessageClass.REQUEST, cookie=0x01020304)
    reply = parse(raw_handle(harness, encode(request)))
    assert reply.cookie == 0x01020304 and reply.transaction_id == request.transaction_id
    assert reply.get(Attr.MAPPED_ADDRESS) == ("198.51.100.7", 40000)
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) is None


def test_binding_over_ipv6_reports_the_ipv6_address(harness):
    reply = parse(raw_handle(harness, encode(Message(Method.BINDING, MessageClass.REQUEST)), ("2001:db8::7", 5)))
    assert reply.get(Attr.XOR_MAPPED_ADDRESS) == ("2001:db8::7", 5)


def test_binding_indication_is_ignored_silently(harness):
    assert raw_handle(harness, encode(Message(Method.BINDING, MessageClass.INDICATION))) is None
    assert harness.server.stats["indications"] == 1


def test_binding_with_unknown_comprehension_required_attribute_gets_420_listing_it(harness):
    request = Message(Method.BINDING, MessageClass.REQUEST).add(0x0031, b"\0\0\0\0")
    reply = parse(raw_handle(harness, encode(request)))
    assert error_code(reply) == 420 and reply.get(Attr.UNKNOWN_ATTRIBUTES) == (0x0031,)


def test_binding_with_unknown_comprehension_optional_attribute_succeeds(harness):
    request = Message(Method.BINDING, MessageClass.REQUEST).add(0x8031, b"\0\0\0\0")
    assert error_code(parse(raw_handle(harness, encode(request)))) is None


def test_rfc3489_change_request_without_flags_is_ignored(harness):
    request = Message(Method.BINDING, MessageClass.REQUEST, cookie=0x01020304).add(0x0003, b"\0\0\0\0")
    assert error_code(parse(raw_handle(harness, encode(request)))) is None


def test_rfc3489_change_request_asking_for_another_address_gets_420(harness):
    request = Message(Method.BINDING, MessageClass.REQUEST, cookie=0x01020304).add(0x0003, b"\0\0\0\x06")
    reply = parse(raw_handle(harness, encode(request)))
    assert error_code(reply) == 420 and reply.get(Attr.UNKNOWN_ATTRIBUTES) == (0x0003,)


def test_malformed_datagram_is_dropped_and_counted(harness):
    assert raw_handle(harness, b"\x00\x01\x00\x04" + os.urandom(16)) is None
    assert raw_handle(harness, b"") is None
    assert harness.server.stats["malformed"] == 2


def test_request_with_unknown_method_gets_400(harness):
    reply = parse(raw_handle(harness, encode(Message(0x0EF, MessageClass.REQUEST))))
    assert error_code(reply) == 400


def test_response_sent_by_a_client_is_ignored(harness):
    assert raw_handle(harness, encode(Message(Method.BINDING, MessageClass.SUCCESS))) is None
