"""Files of secrets written by the operator commands: modes and groups the unprivileged service can read, never others.

The systemd install keeps its files in `/etc/rpturn`, `root:rpturn 0750`, and runs the services as `rpturn`; the
commands run as root. A secret written there must be `root:rpturn 0640` (the relay accepts a group-readable secrets
file only when root owns it), anywhere else 0600. The reading side is checked for real: a child process running as
`nobody:nogroup` (standing in for `rpturn`) reads the file through the relay's own reader.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import stat
import tempfile

import pytest

from appliance.atomic import write_atomically
from relay.restauth import read_secrets_file

SERVICE_GROUP = 65534  # nogroup stands in for rpturn
SECRET = "a-shared-secret-of-thirty-two-chars"


@pytest.fixture
def service_directory():
    """A directory laid out like /etc/rpturn: root-owned, group = the service's, closed to others. Made under /tmp
    (not pytest's 0700 base) so the child running as nobody can get to it."""
    parent = tempfile.mkdtemp(prefix="rpturn-etc-")
    try:
        os.chmod(parent, 0o755)
        directory = os.path.join(parent, "rpturn")
        os.mkdir(directory)
        os.chown(directory, 0, SERVICE_GROUP)
        os.chmod(directory, 0o750)
        yield pathlib.Path(directory)
    finally:
        shutil.rmtree(parent)


def mode_owner_group(path) -> tuple[int, int, int]:
    st = os.stat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def read_as_service_user(path) -> str:
    """What the relay's reader says when a process of the service's user and group reads `path` (a forked child
    that drops root, so the interpreter need not be reachable by that user)."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(SERVICE_GROUP)
            os.setuid(65534)
            try:
                answer = repr(read_secrets_file(str(path)))
            except Exception as exc:  # what the relay would log, as text for the parent to assert on
                answer = f"{type(exc).__name__}: {exc}"
            os.write(writer, answer.encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


def test_a_new_secret_in_the_service_directory_is_root_and_service_group_0640(service_directory):
    path = service_directory / "turn-secrets"
    write_atomically(str(path), f"{SECRET}\n".encode(), secret=True)
    assert mode_owner_group(path) == (0o640, 0, SERVICE_GROUP)
    assert read_secrets_file(str(path)) == (SECRET,)
    assert read_as_service_user(path) == repr((SECRET,))


def test_the_service_user_cannot_read_a_0600_secret_which_is_why_the_group_bit_is_needed(service_directory):
    path = service_directory / "turn-secrets"
    path.write_text(f"{SECRET}\n")
    os.chmod(path, 0o600)
    assert "cannot read: Permission denied" in read_as_service_user(path)


def test_a_new_secret_elsewhere_is_0600(tmp_path):
    os.chown(tmp_path, 0, 0)
    path = tmp_path / "turn-secrets"
    write_atomically(str(path), f"{SECRET}\n".encode(), secret=True)
    assert mode_owner_group(path) == (0o600, 0, 0)


def test_a_directory_open_to_others_gets_0600_even_with_a_service_group(service_directory):
    os.chmod(service_directory, 0o755)
    path = service_directory / "turn-secrets"
    write_atomically(str(path), f"{SECRET}\n".encode(), secret=True)
    assert mode_owner_group(path)[0] == 0o600


def test_replacing_keeps_a_root_owned_files_group_read_and_owner(tmp_path):
    path = tmp_path / "bundle.pem"
    path.write_text("old\n")
    os.chown(path, 0, SERVICE_GROUP)
    os.chmod(path, 0o640)
    write_atomically(str(path), b"new\n", secret=True)
    assert mode_owner_group(path) == (0o640, 0, SERVICE_GROUP)
    assert path.read_text() == "new\n"


@pytest.mark.parametrize("old_mode", [0o600, 0o644, 0o666])
def test_replacing_never_leaves_more_than_0600_on_a_file_that_was_not_root_group_readable(tmp_path, old_mode):
    path = tmp_path / "userdb"
    path.write_text("old\n")
    os.chmod(path, old_mode)
    if old_mode != 0o600:
        os.chown(path, 65534, SERVICE_GROUP)  # group or world bits on a file root does not own: not kept
    write_atomically(str(path), b"new\n", secret=True)
    assert mode_owner_group(path)[0] == 0o600
