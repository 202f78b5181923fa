"""`webapp_dir`: a customised web app served from disk (GET/HEAD), never outside its directory."""

from __future__ import annotations

import mimetypes
import os
from typing import TYPE_CHECKING
from urllib.parse import unquote

from twisted.protocols.basic import FileSender

if TYPE_CHECKING:
    from revproxy.forward import Forwarder


class StaticFiles:
    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)

    def resolve(self, rel: bytes) -> str | None:
        """The file for a path under the web app prefix, or None (outside the directory, or no such file)."""
        text = unquote(rel.split(b"?", 1)[0].decode("latin-1"))
        parts = [p for p in text.split("/") if p not in ("", ".")]
        if any(p == ".." or "\\" in p or "\x00" in p for p in parts):
            return None
        path = os.path.realpath(os.path.join(self.root, *parts))
        if path != self.root and not path.startswith(self.root + os.sep):
            return None
        if os.path.isdir(path):
            path = os.path.join(path, "index.html")
        return path

    def serve(self, fw: Forwarder, rel: bytes) -> None:
        ex = fw.ex
        if ex.head.method not in (b"GET", b"HEAD"):
            return fw.fail(405, "only GET and HEAD here")
        path = self.resolve(rel)
        if path is None:
            return fw.fail(404, "not found")
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed when the transfer ends)
            size = os.fstat(f.fileno()).st_size
        except OSError:
            return fw.fail(404, "not found")
        ctype = (mimetypes.guess_type(path)[0] or "application/octet-stream").encode()
        ex.static(200)
        close = not (ex.request_complete and ex.keep_alive)
        ex.keep_alive = not close
        transport = fw.conn.transport
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
                        % (ctype, size, b"Connection: close\r\n" if close else b""))
        if ex.head.method == b"HEAD":
            f.close()
            return fw.finish()
        ex.sent = size

        def done(result: object) -> None:
            f.close()
            fw.finish()

        FileSender().beginFileTransfer(f, transport).addBoth(done)
