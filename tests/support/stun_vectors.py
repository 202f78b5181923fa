"""RFC 5769 STUN test vectors, byte for byte, with the credentials they were built with, and the helpers the codec's
tests write STUN bytes with by hand (`header`, `attribute`), so that they can write what encode() never would.

Each vector is written as the RFC dumps it: the header's type and length, the transaction id, then one attribute a
line (its hex digits, two spaces, what it is); `_message` puts the magic cookie between and joins the rest.
"""

import struct

from relay import stun


def _message(type_and_length: str, transaction_id: str, attributes: str) -> bytes:
    dumped = (line.strip().partition("  ")[0] for line in attributes.strip().splitlines())
    return bytes.fromhex(type_and_length + "2112a442" + transaction_id + "".join(dumped))


# Sections 2.1-2.3 share one transaction id; both responses (2.2, 2.3) carry the same SOFTWARE.
_TRANSACTION_ID = "b7e7a701bc34d686fa87dfae"
_SOFTWARE_TEST_VECTOR = '8022000b 7465737420766563746f7220  SOFTWARE "test vector"'

# Section 2.1: sample request (short-term credentials; USERNAME padded with 0x20, as are the responses' SOFTWARE).
REQUEST = _message("00010058", _TRANSACTION_ID, """
    80220010 5354554e207465737420636c69656e74  SOFTWARE "STUN test client"
    00240004 6e0001ff  PRIORITY (ICE, unknown to us)
    80290008 932ff9b151263b36  ICE-CONTROLLED (ICE, unknown to us)
    00060009 6576746a3a68367659202020  USERNAME "evtj:h6vY"
    00080014 9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2  MESSAGE-INTEGRITY
    80280004 e57a3bcf  FINGERPRINT
""")

# Section 2.2: sample IPv4 response, XOR-MAPPED-ADDRESS 192.0.2.1:32853.
RESPONSE_IPV4 = _message("0101003c", _TRANSACTION_ID, _SOFTWARE_TEST_VECTOR + """
    00200008 0001a147e112a643  XOR-MAPPED-ADDRESS
    00080014 2b91f599fd9e90c38c7489f92af9ba53f06be7d7  MESSAGE-INTEGRITY
    80280004 c07d4c96  FINGERPRINT
""")

# Section 2.3: sample IPv6 response, XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853.
RESPONSE_IPV6 = _message("01010048", _TRANSACTION_ID, _SOFTWARE_TEST_VECTOR + """
    00200014 0002a1470113a9faa5d3f179bc25f4b5bed2b9d9  XOR-MAPPED-ADDRESS
    00080014 a382954e4be67bf11784c97c8292c275bfe3ed41  MESSAGE-INTEGRITY
    80280004 c8fb0b4c  FINGERPRINT
""")

# Section 2.4: request with long-term authentication (padding 0x00).
REQUEST_LONG_TERM = _message("00010060", "78ad3433c6ad72c029da412e", """
    00060012 e3839ee38388e383aae38383e382afe382b90000  USERNAME "マトリックス"
    0015001c 662f2f3439396b39353464364f4c33346f4c39465354767936347341  NONCE
    0014000b 6578616d706c652e6f726700  REALM "example.org"
    00080014 f67024656dd64a3e02b8e0712e85c9a28ca89666  MESSAGE-INTEGRITY
""")

TRANSACTION_ID = bytes.fromhex(_TRANSACTION_ID)
SHORT_TERM_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"  # the key of sections 2.1-2.3 is the password itself
LONG_TERM_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"  # "マトリックス"
LONG_TERM_PASSWORD = "TheMatrIX"  # SASLprep("The\u00adM\u00aatr\u2168")
LONG_TERM_REALM = "example.org"
LONG_TERM_NONCE = "f//499k954d6OL34oL9FSTvy64sA"


# Hand-written STUN bytes for the codec's tests: a fixed transaction id, a header over any body, one attribute.
TID = bytes(range(12))


def header(message_type: int, body: bytes, cookie: int = stun.MAGIC_COOKIE, tid: bytes = TID) -> bytes:
    return struct.pack(">HHI", message_type, len(body), cookie) + tid + body


def attribute(kind: int, value: bytes) -> bytes:
    return struct.pack(">HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)
