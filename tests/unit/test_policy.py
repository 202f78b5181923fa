"""Peer policy: every default deny range in every IPv6 form that carries an IPv4 address, hole punching,
own addresses and garbage. Pure functions only: nothing here sends a packet anywhere."""

from ipaddress import IPv4Address, IPv6Address

import pytest

from relay.policy import PeerPolicy, PeerPolicyError

# The IPv6 forms are built here by bit arithmetic from the RFCs, independently of the code under test.
PUBLIC_V4 = IPv4Address("192.0.2.33")  # TEST-NET-1: not in the default deny-list, never contacted


def mapped(v4: IPv4Address) -> str:  # ::ffff:0:0/96, RFC 4291
    return str(IPv6Address((0xFFFF << 32) | int(v4)))


def compatible(v4: IPv4Address) -> str:  # ::/96, RFC 4291 (deprecated)
    return str(IPv6Address(int(v4)))


def nat64(v4: IPv4Address) -> str:  # 64:ff9b::/96, RFC 6052
    return str(IPv6Address((0x0064FF9B << 96) | int(v4)))


def sixtofour(v4: IPv4Address) -> str:  # 2002:V4ADDR::/48, RFC 3056: bits 16-48
    return str(IPv6Address((0x2002 << 112) | (int(v4) << 80) | 0x1))


def teredo(server: IPv4Address, client: IPv4Address, port: int = 40000) -> str:
    # 2001:0000:<server 32 bits>:<flags 16>:<port xor ffff>:<client xor ffffffff>, RFC 4380 §4
    return str(IPv6Address((0x20010000 << 96) | (int(server) << 64) | (0x8000 << 48)
                           | ((port ^ 0xFFFF) << 32) | (int(client) ^ 0xFFFFFFFF)))


DENIED_V4 = [
    ("127.0.0.1", "loopback 127.0.0.0/8"),
    ("127.255.255.254", "loopback 127.0.0.0/8"),
    ("0.1.2.3", "unspecified 0.0.0.0/8"),
    ("10.0.0.1", "private 10.0.0.0/8"),
    ("10.255.255.255", "private 10.0.0.0/8"),
    ("172.16.0.1", "private 172.16.0.0/12"),
    ("172.31.255.254", "private 172.16.0.0/12"),
    ("192.168.0.1", "private 192.168.0.0/16"),
    ("192.168.255.255", "private 192.168.0.0/16"),
    ("100.64.0.1", "private 100.64.0.0/10"),
    ("100.127.255.254", "private 100.64.0.0/10"),
    ("169.254.169.254", "link-local 169.254.0.0/16"),
    ("169.254.0.1", "link-local 169.254.0.0/16"),
    ("224.0.0.1", "multicast 224.0.0.0/4"),
    ("239.255.255.250", "multicast 224.0.0.0/4"),
    ("255.255.255.255", "broadcast 255.255.255.255/32"),
    ("240.0.0.1", "reserved 240.0.0.0/4"),
    ("254.1.2.3", "reserved 240.0.0.0/4"),
]

FORMS = [
    ("plain", lambda v4: str(v4), ""),
    ("IPv4-mapped", mapped, " (IPv4-mapped)"),
    ("IPv4-compatible", compatible, " (IPv4-compatible)"),
    ("NAT64", nat64, " (NAT64)"),
    ("6to4", sixtofour, " (6to4)"),
    ("Teredo server", lambda v4: teredo(v4, PUBLIC_V4), " (Teredo server)"),
    ("Teredo client", lambda v4: teredo(PUBLIC_V4, v4), " (Teredo client)"),
]

# Addresses denied as they are, not in the forms above.
DENIED_AS_IS = [
    ("0.0.0.0", "unspecified 0.0.0.0/8"),
    ("::1", "loopback ::1/128"),
    ("::", "unspecified ::/128"),
    ("fc00::1", "private fc00::/7"),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "private fc00::/7"),
    ("fe80::1", "link-local fe80::/10"),
    ("fe80::1%eth0", "link-local fe80::/10"),
    ("febf:ffff::1", "link-local fe80::/10"),
    ("ff02::1", "multicast ff00::/8"),
    ("ff0e::1", "multicast ff00::/8"),
    ("fec0::1", "site-local fec0::/10"),
    ("64:ff9b:1::808:808", "local-use NAT64 64:ff9b:1::/48"),
]

DENY_TABLE = [
    pytest.param(make(IPv4Address(v4)), reason + suffix, id=f"{v4}-{form}")
    for v4, reason in DENIED_V4
    for form, make, suffix in FORMS
] + [pytest.param(host, reason, id=host) for host, reason in DENIED_AS_IS]


@pytest.mark.parametrize(("host", "reason"), DENY_TABLE)
def test_default_deny_list_refuses_every_form(host, reason):
    policy = PeerPolicy()
    assert policy.deny_reason(host) == reason
    assert policy.is_allowed(host) is False


ALLOWED_TABLE = [
    "8.8.8.8", "1.1.1.1", "9.255.255.255", "11.0.0.0", "172.15.255.255", "172.32.0.0", "192.167.255.255",
    "192.169.0.0", "100.63.255.255", "100.128.0.0", "169.253.255.255", "169.255.0.0", "223.255.255.255",
    "1.0.0.0", "2606:4700:4700::1111", "2a00:1450::1", "fbff:ffff::1", "fe00::1", "fe40::1",
    "64:ff9b:2::1", "64:ff9b::1:0:0:1",
    mapped(IPv4Address("8.8.8.8")), nat64(IPv4Address("8.8.8.8")), compatible(IPv4Address("8.8.8.8")),
    sixtofour(IPv4Address("8.8.8.8")), teredo(PUBLIC_V4, IPv4Address("8.8.8.8")),
]


@pytest.mark.parametrize("host", ALLOWED_TABLE)
def test_public_addresses_and_their_forms_are_allowed(host):
    assert PeerPolicy().deny_reason(host) is None
    assert PeerPolicy().is_allowed(host) is True


@pytest.mark.parametrize("host", [
    "", "garbage", "1.2.3", "256.1.1.1", "010.0.0.1", "8.8.8.8:3478", " 8.8.8.8", "8.8.8.8\n", "10.0.0.1/8",
    "::ffff:1.2.3.4.5", "[::1]", "2001:db8::g", "\x00", "8.8.8.8" * 40, None, b"8.8.8.8", 134744072,
])
def test_garbage_is_denied_with_a_reason_not_an_exception(host):
    policy = PeerPolicy(allowed=["0.0.0.0/0", "::/0"])
    assert policy.is_allowed(host) is False
    assert policy.deny_reason(host).startswith("not an IP address")


def test_allowed_peers_punch_a_hole_in_the_defaults():
    policy = PeerPolicy(allowed=["10.0.0.0/8"])
    assert policy.is_allowed("10.1.2.3")
    assert policy.deny_reason("192.168.1.1") == "private 192.168.0.0/16"


def test_allowed_ipv4_loopback_also_allows_its_ipv4_mapped_form():
    policy = PeerPolicy(allowed=["127.0.0.0/8"])
    assert policy.is_allowed("127.0.0.1")
    assert policy.is_allowed("::ffff:127.0.0.1")
    assert policy.is_allowed(nat64(IPv4Address("127.0.0.1")))


def test_allowed_ipv4_loopback_does_not_allow_ipv6_loopback():
    assert PeerPolicy(allowed=["127.0.0.0/8"]).deny_reason("::1") == "loopback ::1/128"


def test_allowed_peers_win_over_denied_peers():
    policy = PeerPolicy(allowed=["192.0.2.7"], denied=["192.0.2.0/24"])
    assert policy.is_allowed("192.0.2.7")
    assert policy.deny_reason("192.0.2.8") == "denied_peers 192.0.2.0/24"


def test_allowed_peers_win_over_own_addresses():
    policy = PeerPolicy(allowed=["127.0.0.0/8"], own_addresses=["127.0.0.1"])
    assert policy.is_allowed("127.0.0.1")


def test_allowed_entry_in_ipv4_mapped_notation_allows_the_ipv4_network():
    policy = PeerPolicy(allowed=["::ffff:127.0.0.0/104"])
    assert policy.is_allowed("127.0.0.1")
    assert policy.is_allowed("::ffff:127.0.0.2")


def test_allowed_outer_ipv6_network_wins_over_the_ipv4_it_carries():
    policy = PeerPolicy(allowed=["2002::/16"])
    assert policy.is_allowed(sixtofour(IPv4Address("10.0.0.1")))


def test_teredo_is_denied_when_only_one_of_its_two_addresses_is_allowed():
    policy = PeerPolicy(allowed=["10.0.0.0/8"])
    host = teredo(IPv4Address("10.0.0.1"), IPv4Address("192.168.0.1"))
    assert policy.deny_reason(host) == "private 192.168.0.0/16 (Teredo client)"


def test_denied_peers_add_to_the_defaults_in_every_form():
    policy = PeerPolicy(denied=["203.0.113.0/24", "2001:db8:1::/48"])
    v4 = IPv4Address("203.0.113.7")
    assert policy.deny_reason(str(v4)) == "denied_peers 203.0.113.0/24"
    for form, make, suffix in FORMS[1:]:
        assert policy.deny_reason(make(v4)) == "denied_peers 203.0.113.0/24" + suffix, form
    assert policy.deny_reason("2001:db8:1::5") == "denied_peers 2001:db8:1::/48"
    assert policy.is_allowed("203.0.114.7")
    assert policy.is_allowed("2001:db8:2::5")


def test_denied_bare_address_denies_only_that_address():
    policy = PeerPolicy(denied=["192.0.2.1"])
    assert policy.deny_reason("192.0.2.1") == "denied_peers 192.0.2.1/32"
    assert policy.is_allowed("192.0.2.2")


def test_own_addresses_are_denied_in_every_form():
    policy = PeerPolicy(own_addresses=["198.51.100.2", "2001:db8::5"])
    v4 = IPv4Address("198.51.100.2")
    for form, make, suffix in FORMS:
        assert policy.deny_reason(make(v4)) == "own address 198.51.100.2" + suffix, form
    assert policy.deny_reason("2001:db8::5") == "own address 2001:db8::5"
    assert policy.is_allowed("198.51.100.3")


def test_own_address_in_ipv4_mapped_form_denies_the_ipv4_address():
    assert PeerPolicy(own_addresses=["::ffff:198.51.100.2"]).deny_reason("198.51.100.2") == \
        "own address 198.51.100.2"


def test_wildcard_own_addresses_are_ignored():
    policy = PeerPolicy(own_addresses=["0.0.0.0", "::"])
    assert policy.is_allowed("8.8.8.8")
    assert policy.is_allowed("2606:4700:4700::1111")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"allowed": ["not-a-cidr"]}, "allowed_peers: 'not-a-cidr' is not an address or CIDR"),
    ({"denied": ["10.1.2.3/8"]}, "denied_peers: '10.1.2.3/8' is not an address or CIDR"),
    ({"denied": ["10.0.0.0/33"]}, "denied_peers: '10.0.0.0/33' is not an address or CIDR"),
    ({"own_addresses": ["10.0.0.0/8"]}, "own address: '10.0.0.0/8' is a network, not an address"),
    ({"allowed": [42]}, "allowed_peers: 42 is not a string"),
])
def test_bad_entries_raise_a_clear_policy_error(kwargs, message):
    with pytest.raises(PeerPolicyError) as e:
        PeerPolicy(**kwargs)
    assert str(e.value).startswith(message)
