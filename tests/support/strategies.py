"""Hypothesis strategies shared by the property tests, and the hypothesis profiles.

Profiles: "default" (thousands of examples, the normal test run) and "fuzz" (the larger budget of the tox `fuzz`
environment), chosen by the HYPOTHESIS_PROFILE environment variable. A test that is expensive per example
overrides `max_examples` with its own `@settings`.
"""

from __future__ import annotations

import itertools
import os
import struct
from ipaddress import IPv4Address, IPv6Address

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from relay import stun
from relay.stun import Attr, Message, MessageClass, Method

settings.register_profile("default", max_examples=2000, deadline=None)
settings.register_profile("fuzz", max_examples=50_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def scaled(fraction: float) -> settings:
    """Settings for a test whose examples are costly: a fraction of the profile's budget (so "fuzz" scales it)."""
    return settings(max_examples=max(10, int(settings.default.max_examples * fraction)))


# --- addresses ---

# Built from integers: st.ip_addresses() is several times slower, and these run thousands of times.
ipv4_hosts = st.integers(0, 2**32 - 1).map(lambda n: str(IPv4Address(n)))
ipv6_hosts = st.one_of(
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**32 - 1).map(lambda n: n | 0xFFFF_0000_0000),  # IPv4-mapped, ::ffff:a.b.c.d
    st.integers(0, 2**32 - 1),  # IPv4-compatible, ::a.b.c.d
    st.integers(0, 2**64 - 1).map(lambda n: 0x2001_0DB8 << 96 | n),  # zero runs that compress
).map(lambda n: str(IPv6Address(n)))
ports = st.integers(0, 0xFFFF)
hosts = st.one_of(ipv4_hosts, ipv6_hosts)
addresses = st.tuples(hosts, ports)
ipv4_addresses = st.tuples(ipv4_hosts, ports)
ipv6_addresses = st.tuples(ipv6_hosts, ports)


# --- STUN messages ---

transaction_ids = st.binary(min_size=12, max_size=12)
methods = st.sampled_from(Method)
any_methods = st.one_of(methods, st.integers(0, 0xFFF))  # 12-bit method field, known or not
message_classes = st.sampled_from(MessageClass)
# Unknown attribute types, both comprehension-required (< 0x8000) and optional.
unknown_attribute_types = st.integers(0, 0xFFFF).filter(lambda t: t not in Attr._value2member_map_)


def _text(max_bytes: int) -> st.SearchStrategy[str]:
    # 128 characters of at most 4 UTF-8 bytes each stay within both limits (512 and 763 bytes).
    return st.text(max_size=min(128, max_bytes // 4))


# Every attribute the codec knows, except MESSAGE-INTEGRITY and FINGERPRINT which encode() adds itself.
ATTRIBUTE_VALUES: dict[Attr, st.SearchStrategy] = {
    Attr.MAPPED_ADDRESS: addresses,
    Attr.USERNAME: _text(stun.MAX_USERNAME_BYTES),
    Attr.ERROR_CODE: st.tuples(st.integers(300, 699), _text(stun.MAX_TEXT_BYTES)),
    Attr.UNKNOWN_ATTRIBUTES: st.lists(st.integers(0, 0xFFFF), max_size=8).map(tuple),
    Attr.CHANNEL_NUMBER: st.integers(0, 0xFFFF),
    Attr.LIFETIME: st.integers(0, 0xFFFFFFFF),
    Attr.XOR_PEER_ADDRESS: addresses,
    Attr.DATA: st.binary(max_size=300),
    Attr.REALM: _text(stun.MAX_TEXT_BYTES),
    Attr.NONCE: _text(stun.MAX_TEXT_BYTES),
    Attr.XOR_RELAYED_ADDRESS: addresses,
    Attr.EVEN_PORT: st.booleans(),
    Attr.REQUESTED_TRANSPORT: st.integers(0, 0xFF),
    Attr.DONT_FRAGMENT: st.just(True),
    Attr.XOR_MAPPED_ADDRESS: addresses,
    Attr.RESERVATION_TOKEN: st.binary(min_size=8, max_size=8),
    Attr.SOFTWARE: _text(stun.MAX_TEXT_BYTES),
    Attr.ALTERNATE_SERVER: addresses,
}
XOR_ATTRIBUTES = frozenset({Attr.XOR_MAPPED_ADDRESS, Attr.XOR_PEER_ADDRESS, Attr.XOR_RELAYED_ADDRESS})


def attributes(kind: int) -> st.SearchStrategy[tuple[int, object]]:
    """(kind, value) pairs of one attribute type; unknown types get raw bytes."""
    values = ATTRIBUTE_VALUES.get(kind, st.binary(max_size=40))  # type: ignore[call-overload]
    return values.map(lambda value: (kind, value))


def attribute_lists(*, xor: bool = True) -> st.SearchStrategy[list[tuple[int, object]]]:
    """Attribute lists in any order with repeats (several XOR-PEER-ADDRESS among them) and unknown types."""
    one = st.one_of(
        *(attributes(kind) for kind in ATTRIBUTE_VALUES if xor or kind not in XOR_ATTRIBUTES),
        st.tuples(unknown_attribute_types, st.binary(max_size=40)),
    )
    peers = st.lists(addresses.map(lambda a: (Attr.XOR_PEER_ADDRESS, a)), max_size=3) if xor else st.just([])
    return st.tuples(st.lists(one, max_size=8), peers).flatmap(lambda pair: st.permutations(pair[0] + pair[1]))


@st.composite
def messages(draw: st.DrawFn, *, rfc3489: bool | None = None) -> Message:
    """Messages of every method and class with every attribute type.

    rfc3489=True gives messages without the magic cookie (and so without XOR attributes); None mixes both.
    """
    if rfc3489 is None:
        rfc3489 = draw(st.booleans())
    cookie = draw(st.integers(0, 0xFFFFFFFF).filter(lambda c: c != stun.MAGIC_COOKIE)) if rfc3489 else stun.MAGIC_COOKIE
    return Message(
        draw(any_methods),
        draw(message_classes),
        draw(transaction_ids),
        draw(attribute_lists(xor=not rfc3489)),
        cookie=cookie,
    )


integrity_keys = st.binary(min_size=1, max_size=32)


@st.composite
def encoded_messages(draw: st.DrawFn) -> bytes:
    """Valid encoded messages, some with MESSAGE-INTEGRITY and/or FINGERPRINT."""
    key = draw(st.none() | integrity_keys)
    return stun.encode(draw(messages()), integrity_key=key, fingerprint=draw(st.booleans()))


@st.composite
def stun_shaped_bytes(draw: st.DrawFn) -> bytes:
    """A well-framed header and a body of attribute headers of known and unknown types with random values.

    Random bytes almost never get past the header checks; these reach every attribute decoder with lengths
    and contents that are wrong in every way.
    """
    kinds = st.one_of(st.sampled_from(list(Attr)), st.integers(0, 0xFFFF))
    body = b""
    for kind, value in draw(st.lists(st.tuples(kinds, st.binary(max_size=32)), max_size=8)):
        declared = draw(st.one_of(st.just(len(value)), st.integers(0, 40)))
        body += struct.pack(">HH", kind, declared) + value + b"\0" * (-len(value) % 4)
    cookie = draw(st.sampled_from([stun.MAGIC_COOKIE, 0]))
    length = draw(st.one_of(st.just(len(body)), st.integers(0, 0xFFFF)))
    message_type = draw(st.integers(0, 0x3FFF))
    return struct.pack(">HHI", message_type, length, cookie) + draw(transaction_ids) + body


@st.composite
def mutated(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> bytes:
    """Bytes from `data` with a few bytes flipped, cut, inserted or the length field rewritten."""
    buffer = bytearray(draw(data))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "truncate", "insert", "set_length"]))
        if action == "flip" and buffer:
            index = draw(st.integers(0, len(buffer) - 1))
            buffer[index] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del buffer[draw(st.integers(0, len(buffer))) :]
        elif action == "insert":
            index = draw(st.integers(0, len(buffer)))
            buffer[index:index] = draw(st.binary(min_size=1, max_size=8))
        elif action == "set_length" and len(buffer) >= 4:
            buffer[2:4] = struct.pack(">H", max(0, len(buffer) - 20 + draw(st.integers(-8, 8))))
    return bytes(buffer)


# --- ChannelData and TCP streams ---

channel_numbers = st.integers(0x4000, 0x7FFF)
payloads = st.binary(max_size=200)


@st.composite
def tcp_frames(draw: st.DrawFn) -> bytes:
    """One frame as it appears on a TCP connection: a STUN message, or ChannelData padded to 4."""
    if draw(st.booleans()):
        return draw(encoded_messages())
    return stun.encode_channel_data(draw(channel_numbers), draw(payloads), pad=True)


# --- byte streams ---


@st.composite
def pieces(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` cut at arbitrary points, as reads from a socket deliver it."""
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=12))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# --- the management listener's worker snapshots (appliance.stats) ---

def figure_snapshots() -> st.SearchStrategy[list[dict]]:
    """Snapshots as workers publish them: a service, a worker index, a pid (several pids per slot are restarts),
    counters (flat and labelled) and gauges; pids 1-6, of which the test decides which are alive."""
    numbers = st.integers(min_value=0, max_value=10**9)
    counters = st.fixed_dictionaries({"requests": numbers},
                                     optional={"errors": st.dictionaries(st.sampled_from(["401", "438", "486"]),
                                                                         numbers, max_size=3)})
    gauges = st.fixed_dictionaries({"allocations": st.fixed_dictionaries({"udp": numbers, "tcp": numbers})})
    one = st.builds(lambda service, worker, pid, c, g: {"service": service, "worker": worker, "pid": pid,
                                                        "counters": c, "gauges": g, "info": {}},
                    st.sampled_from(["relay", "revproxy"]), st.integers(0, 2), st.integers(1, 6), counters, gauges)
    # one snapshot per pid, as in the spool (a file per process)
    return st.lists(one, max_size=8, unique_by=lambda s: s["pid"])
