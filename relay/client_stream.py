"""What a TURN client gets back from the server, read without building Messages: whole frames cut from a TCP byte
stream (RFC 5766 11.5), and where the payload starts in a ChannelData message or a Data indication. For the drivers
of the sans-I/O `relay.client.TurnClient` and the load generator (relay.harness)."""

from __future__ import annotations

import struct

from relay import stun
from relay.stun import Attr

_CHANNEL_HEADER = struct.Struct("!HH")
_ATTR_HEADER = struct.Struct("!HH")
_COOKIE_BYTES = struct.pack("!I", stun.MAGIC_COOKIE)
_DATA_INDICATION_TYPE = 0x0017  # Method.DATA | MessageClass.INDICATION, as on the wire


class StreamFramer:
    """Cuts a TCP byte stream from the server into whole STUN messages and ChannelData frames (RFC 5766 11.5)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Append `data`; return the whole frames now available. Raises `stun.StunDecodeError` if the stream
        cannot be framed (the connection is then useless)."""
        self._buffer += data
        frames = []
        while True:
            length = stun.tcp_frame_length(self._buffer)
            if length is None or length > len(self._buffer):
                return frames
            frames.append(bytes(self._buffer[:length]))
            del self._buffer[:length]


def data_payload_offset(data: bytes) -> int:
    """Where the application payload starts in a ChannelData message or a Data indication from the server,
    or -1 if `data` is neither. Cheap enough for every packet of the load generator: no objects built."""
    if not data:
        return -1
    first = data[0]
    if 0x40 <= first <= 0x7F:
        return _CHANNEL_HEADER.size if len(data) >= _CHANNEL_HEADER.size else -1
    if len(data) < 20 or data[4:8] != _COOKIE_BYTES:
        return -1
    message_type, length = _ATTR_HEADER.unpack_from(data, 0)
    if message_type != _DATA_INDICATION_TYPE:
        return -1
    end = min(20 + length, len(data))
    offset = 20
    while offset + 4 <= end:
        attr_type, attr_length = _ATTR_HEADER.unpack_from(data, offset)
        if attr_type == Attr.DATA:
            return offset + 4 if offset + 4 + attr_length <= end else -1
        offset += 4 + ((attr_length + 3) & ~3)
    return -1
