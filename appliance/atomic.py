"""Replacing the operator's files safely: a temporary file in the same directory, fsync, rename, fsync the directory.

A reader (the running appliance on SIGHUP, `rpturn check`) sees either the old file or the new one, never half of
one, and a crash in between leaves the old file in place. `keep_backup` keeps the replaced file as `FILE.bak` (a
hard link made before the rename, so the backup is exactly the old bytes and its mode and owner).

Files that hold secrets (`secret=True`: keys, passwords, shared secrets, certificate bundles) get their mode before a
byte is written, so the temporary file is never readable by others. The mode is 0600, except where the unprivileged
service must read what root writes (the systemd install: `/etc/rpturn` is `root:rpturn 0750`): a new file in a
directory whose group is not root's and that others cannot enter is written `root:<that group> 0640`, and a
root-owned file an operator made group-readable keeps its 0640. That is the rule the relay enforces on its secrets
file (relay.restauth: 0600, or 0640 when root owns it — PostgreSQL's rule for its key).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile


def fsync_directory(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def secret_file_mode(old: os.stat_result | None, directory: str) -> tuple[int, int | None]:
    """(mode, group to set or None) for a file of secrets replacing `old` (None: a new file) in `directory`."""
    if old is not None:
        return (0o640 if old.st_uid == 0 and old.st_mode & stat.S_IRGRP else 0o600), None
    parent = os.stat(directory)
    if os.geteuid() == 0 and parent.st_gid != 0 and not parent.st_mode & stat.S_IRWXO:
        return 0o640, parent.st_gid
    return 0o600, None


def write_atomically(
    path: str, data: bytes, *, mode: int = 0o644, secret: bool = False, keep_backup: bool = False
) -> str | None:
    """Replace `path` with `data`; return the backup's path when one was kept.

    A symbolic link is followed: its target is replaced and the link stays. The directory must exist. The owner of
    an existing file is kept when we may (root), so a service user keeps reading it. `secret`: the mode (and for a
    new file the group) come from `secret_file_mode`, not from `mode`.
    """
    path = os.path.realpath(path)
    directory = os.path.dirname(path)
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    backup = None
    group = None
    if secret:
        mode, group = secret_file_mode(old, directory)
    try:
        if group is not None:
            os.fchown(fd, -1, group)
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
