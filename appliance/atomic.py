"""Replacing the operator's files safely: a temporary file in the same directory, fsync, rename, fsync the directory.

A reader (the running appliance on SIGHUP, `rpturn check`) sees either the old file or the new one, never half of
one, and a crash in between leaves the old file in place. `keep_backup` keeps the replaced file as `FILE.bak` (a
hard link made before the rename, so the backup is exactly the old bytes and its mode and owner). Files that hold
secrets are written with mode 0600 from the start: the temporary file is never readable by others.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def fsync_directory(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str, data: bytes, *, mode: int = 0o644, keep_backup: bool = False) -> str | None:
    """Replace `path` with `data`; return the backup's path when one was kept.

    A symbolic link is followed: its target is replaced and the link stays. The directory must exist. The owner of
    an existing file is kept when we may (root), so a service user keeps reading it.
    """
    path = os.path.realpath(path)
    directory = os.path.dirname(path)
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    backup = None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            with contextlib.suppress(PermissionError):
                os.chown(tmp, old.st_uid, old.st_gid)
        if keep_backup and old is not None:
            backup = path + ".bak"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup)
            os.link(path, backup)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)
    return backup


def remove_file(path: str) -> bool:
    """Delete `path` if it exists (True when it did); the directory entry is synced so the removal sticks."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_directory(os.path.dirname(os.path.abspath(path)))
    return True
