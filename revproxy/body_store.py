"""A request body kept until the node has answered, so a failover can send it again: memory, then a temp file."""

from __future__ import annotations

import os
import tempfile
from typing import Any

MEMORY_BODY = 64 * 1024  # request bodies beyond this are kept in a temporary file


class BodyStore:
    __slots__ = ("file", "mem", "size")

    def __init__(self) -> None:
        self.mem = bytearray()
        self.file: Any = None
        self.size = 0

    def append(self, data: bytes) -> None:
        if self.file is None and self.size + len(data) > MEMORY_BODY:
            self.file = tempfile.TemporaryFile(prefix="revproxy-body-")  # noqa: SIM115 (closed by close())
            self.file.write(self.mem)
            self.mem = bytearray()
        if self.file is None:
            self.mem += data
        else:
            self.file.seek(0, os.SEEK_END)
            self.file.write(data)
        self.size += len(data)

    def read(self, offset: int, n: int) -> bytes:
        if self.file is None:
            return bytes(self.mem[offset: offset + n])
        self.file.seek(offset)
        return self.file.read(n)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.mem = bytearray()
