"""No input makes the TURN core raise: any bytes get a response or nothing, and any authenticated sequence of
requests with arbitrary attributes leaves no allocation or port behind once time has passed (hypothesis).
"""

from hypothesis import given
from hypothesis import strategies as st

from relay.stun import Attr, MessageClass, Method, parse
from tests.support.relay_fakes import TurnHarness, raw_handle
from tests.support.strategies import scaled


@scaled(0.5)
@given(st.binary(max_size=200))
def test_any_bytes_get_a_response_or_none_never_an_exception(data):
    harness = TurnHarness()
    reply = raw_handle(harness, data)
    assert reply is None or parse(reply).msg_class in (MessageClass.SUCCESS, MessageClass.ERROR)


KNOWN_ATTRIBUTES = frozenset(Attr)


_ATTRIBUTE_VALUES = st.one_of(
    st.tuples(st.sampled_from([Attr.LIFETIME, Attr.CHANNEL_NUMBER]), st.integers(0, 0xFFFF)),
    st.tuples(st.just(Attr.LIFETIME), st.integers(0, 0xFFFFFFFF)),
    st.tuples(st.just(Attr.REQUESTED_TRANSPORT), st.integers(0, 255)),
    st.tuples(st.just(Attr.XOR_PEER_ADDRESS), st.tuples(
        st.sampled_from(["127.0.0.2", "10.0.0.1", "::1", "2001:db8::1", "0.0.0.0", "198.51.100.1"]),
        st.integers(0, 65535))),
    st.tuples(st.just(Attr.EVEN_PORT), st.booleans()),
    st.tuples(st.just(Attr.RESERVATION_TOKEN), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just(Attr.DONT_FRAGMENT), st.just(True)),
    st.tuples(st.just(Attr.DATA), st.binary(max_size=20)),
    st.tuples(st.integers(0x0000, 0xFFFF).filter(lambda kind: kind not in KNOWN_ATTRIBUTES), st.binary(max_size=12)),
)


@scaled(0.25)
@given(st.lists(st.tuples(st.sampled_from([Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION,
                                           Method.CHANNEL_BIND, Method.BINDING, Method.SEND]),
                          st.lists(_ATTRIBUTE_VALUES, max_size=5)), min_size=1, max_size=6))
def test_authenticated_requests_with_arbitrary_attributes_never_raise(requests):
    harness = TurnHarness()
    client = harness.client("alice")
    for method, attributes in requests:
        message = client.message(method, attributes)
        try:
            data = client.signed(message)
        except (ValueError, OverflowError, KeyError):
            continue  # the codec refuses to encode it: nothing to send
        reply = harness.server.handle_stun(data, client.five_tuple, client.received)
        if reply is not None:
            parse(reply)
    harness.advance(4000)
    assert not harness.server.allocations and harness.ports.held == set()
