"""The STUN/TURN vocabulary the codec (relay.stun) speaks: the numbers of RFC 5389 and RFC 5766 (message classes,
methods, attribute types, error reasons, limits) and the `Message` value. Import them from relay.stun."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

MAGIC_COOKIE = 0x2112A442
FINGERPRINT_XOR = 0x5354554E
HEADER_LENGTH = 20
MAX_USERNAME_BYTES = 512  # RFC 5389 15.3: "less than 513 bytes"
MAX_TEXT_BYTES = 763  # REALM, NONCE, SOFTWARE, reason phrase: "less than 128 characters ... 763 bytes"


class MessageClass(IntEnum):
    REQUEST = 0x000
    INDICATION = 0x010
    SUCCESS = 0x100
    ERROR = 0x110


class Method(IntEnum):
    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class Attr(IntEnum):
    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028


ERROR_REASONS: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    486: "Allocation Quota Reached",
    500: "Server Error",
    508: "Insufficient Capacity",
}


class StunDecodeError(ValueError):
    """The bytes are not a well-formed STUN message (or ChannelData, or TCP stream). The one error `parse` raises."""


def new_transaction_id() -> bytes:
    return os.urandom(12)


@dataclass(eq=False)
class Message:
    method: int
    msg_class: int
    transaction_id: bytes = field(default_factory=new_transaction_id)  # 12 bytes
    attributes: list[tuple[int, Any]] = field(default_factory=list)  # wire order; XOR-PEER-ADDRESS may repeat
    # Anything but MAGIC_COOKIE marks an RFC 3489 message: its 16-byte transaction id is cookie + transaction_id.
    cookie: int = MAGIC_COOKIE
    raw: bytes = b""  # set by parse(): the bytes it was parsed from
    integrity_offset: int | None = None  # set by parse(): offset of the MESSAGE-INTEGRITY attribute header
    unknown_required: list[int] = field(default_factory=list)  # set by parse(): unknown types < 0x8000

    def get(self, attr: int, default: Any = None) -> Any:
        """The first value of that attribute type, or `default`."""
        for kind, value in self.attributes:
            if kind == attr:
                return value
        return default

    def get_all(self, attr: int) -> list[Any]:
        return [value for kind, value in self.attributes if kind == attr]

    def add(self, attr: int, value: Any) -> Message:
        self.attributes.append((attr, value))
        return self
