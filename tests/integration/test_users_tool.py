"""rpturn-users, run as the installed console script in a temporary directory."""

from __future__ import annotations

import fcntl
import hashlib
import os
import select
import stat
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from relay.auth import CredentialStore

SCRIPT = str(Path(sys.executable).with_name("rpturn-users"))
REALM = "example.com"


def run(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=30)


def key_hex(user: str, realm: str, password: str) -> str:
    return hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()


def db(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "turnuserdb.conf"
    if text is not None:
        path.write_text(text)
    return path


OPTS = ("--userdb", "turnuserdb.conf", "--realm", REALM)


def test_add_with_password_option_writes_the_key_with_mode_0600(tmp_path):
    result = run(tmp_path, *OPTS, "add", "alice", "--password", "wonder land")
    assert result.returncode == 0, result.stderr
    text = db(tmp_path).read_text()
    assert f"alice:0x{key_hex('alice', REALM, 'wonder land')}\n" in text
    assert "wonder land" not in text
    assert stat.S_IMODE(db(tmp_path).stat().st_mode) == 0o600


def test_add_reads_one_line_from_stdin_when_it_is_not_a_terminal(tmp_path):
    result = run(tmp_path, *OPTS, "add", "bob", stdin="from-stdin\nignored second line\n")
    assert result.returncode == 0, result.stderr
    assert f"bob:0x{key_hex('bob', REALM, 'from-stdin')}" in db(tmp_path).read_text()


def test_add_of_a_utf8_username_gives_the_key_the_relay_computes(tmp_path):
    user = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    assert run(tmp_path, *OPTS, "add", user, "--password", "TheMatrIX").returncode == 0
    store = CredentialStore(REALM, userdb=str(db(tmp_path)))
    assert store.key_for(user).hex() == key_hex(user, REALM, "TheMatrIX")


def test_add_leaves_no_temporary_file_behind(tmp_path):
    run(tmp_path, *OPTS, "add", "alice", "--password", "pw")
    run(tmp_path, *OPTS, "add", "bob", "--password", "pw")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turnuserdb.conf"]


def test_add_keeps_comments_and_other_users_in_order(tmp_path):
    db(tmp_path, "# appliance users\nalice:0x" + "a" * 32 + "\n\n# legacy\nbob:plain\n")
    assert run(tmp_path, *OPTS, "add", "carol", "--password", "pw").returncode == 0
    assert db(tmp_path).read_text() == (
        "# appliance users\nalice:0x" + "a" * 32 + "\n\n# legacy\nbob:plain\n"
        f"carol:0x{key_hex('carol', REALM, 'pw')}\n")


def test_add_of_an_existing_user_fails_and_changes_nothing(tmp_path):
    before = "alice:0x" + "a" * 32 + "\n"
    db(tmp_path, before)
    result = run(tmp_path, *OPTS, "add", "alice", "--password", "pw")
    assert result.returncode == 1
    assert "user 'alice' already exists" in result.stderr
    assert db(tmp_path).read_text() == before


def test_passwd_replaces_the_key_in_place(tmp_path):
    db(tmp_path, "# head\nalice:0x" + "a" * 32 + "\nbob:plain-password\n# tail\n")
    result = run(tmp_path, *OPTS, "passwd", "bob", stdin="new-pw\n")
    assert result.returncode == 0, result.stderr
    assert db(tmp_path).read_text() == (
        "# head\nalice:0x" + "a" * 32 + f"\nbob:0x{key_hex('bob', REALM, 'new-pw')}\n# tail\n")


def test_passwd_of_an_unknown_user_fails(tmp_path):
    db(tmp_path, "alice:pw\n")
    result = run(tmp_path, *OPTS, "passwd", "mallory", "--password", "x")
    assert result.returncode == 1
    assert "no user 'mallory' in turnuserdb.conf" in result.stderr
    assert db(tmp_path).read_text() == "alice:pw\n"


def test_delete_removes_only_that_user_and_keeps_comments(tmp_path):
    db(tmp_path, "# head\nalice:pw\nbob:pw\n")
    result = run(tmp_path, "--userdb", "turnuserdb.conf", "delete", "alice")
    assert result.returncode == 0, result.stderr
    assert db(tmp_path).read_text() == "# head\nbob:pw\n"


def test_delete_of_an_unknown_user_fails(tmp_path):
    db(tmp_path, "alice:pw\n")
    result = run(tmp_path, "--userdb", "turnuserdb.conf", "delete", "bob")
    assert result.returncode == 1
    assert "no user 'bob'" in result.stderr


def test_list_prints_one_user_per_line_and_notes_plain_passwords(tmp_path):
    db(tmp_path, "# c\nalice:0x" + "a" * 32 + "\nbob:plain\n")
    result = run(tmp_path, "--userdb", "turnuserdb.conf", "list")
    assert result.returncode == 0
    assert result.stdout == "alice\nbob\n"
    assert "turnuserdb.conf:3: bob has a plain password" in result.stderr


@pytest.mark.parametrize("command", [["list"], ["delete", "alice"], ["add", "carol", "--password", "pw"]])
def test_bad_file_is_an_error_naming_file_and_line_and_is_left_alone(tmp_path, command):
    before = "alice:pw\nthis line is wrong\n"
    db(tmp_path, before)
    result = run(tmp_path, *OPTS, *command)
    assert result.returncode == 1
    assert result.stdout == ""
    assert "error: turnuserdb.conf:2: expected user:0x<32 hex digits> or user:password" in result.stderr
    assert "Traceback" not in result.stderr
    assert db(tmp_path).read_text() == before


def test_missing_file_is_an_error_for_list(tmp_path):
    result = run(tmp_path, "--userdb", "absent.conf", "list")
    assert result.returncode == 1
    assert "absent.conf: cannot read: No such file or directory" in result.stderr


def test_add_without_a_realm_fails(tmp_path):
    result = run(tmp_path, "--userdb", "turnuserdb.conf", "add", "alice", "--password", "pw")
    assert result.returncode == 1
    assert "give --realm REALM" in result.stderr
    assert not db(tmp_path).exists()


def test_no_userdb_given_fails(tmp_path):
    result = run(tmp_path, "--realm", REALM, "list")
    assert result.returncode == 1
    assert "give --userdb PATH" in result.stderr


@pytest.mark.parametrize(("user", "message"), [
    ("al:ice", "a username cannot contain ':'"),
    ("al ice", "a username cannot contain spaces or control characters"),
])
def test_bad_username_is_refused(tmp_path, user, message):
    result = run(tmp_path, *OPTS, "add", user, "--password", "pw")
    assert result.returncode == 1
    assert message in result.stderr


@pytest.mark.parametrize(("stdin", "message"), [
    ("", "no password on standard input"),
    ("\n", "empty password"),
    ("tab\tinside\n", "the password contains control characters"),
])
def test_bad_password_on_stdin_is_refused(tmp_path, stdin, message):
    result = run(tmp_path, *OPTS, "add", "alice", stdin=stdin)
    assert result.returncode == 1
    assert message in result.stderr
    assert not db(tmp_path).exists()


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rpturn.toml"
    path.write_text(body)
    return path


def test_config_supplies_userdb_and_realm(tmp_path):
    write_config(tmp_path, '[relay]\nrealm = "conf.example"\nuserdb = "turnuserdb.conf"\n')
    result = run(tmp_path, "--config", "rpturn.toml", "add", "alice", "--password", "pw")
    assert result.returncode == 0, result.stderr
    assert db(tmp_path).read_text().endswith(f"alice:0x{key_hex('alice', 'conf.example', 'pw')}\n")


def test_command_line_realm_overrides_the_config(tmp_path):
    write_config(tmp_path, '[relay]\nrealm = "conf.example"\nuserdb = "turnuserdb.conf"\n')
    assert run(tmp_path, "--config", "rpturn.toml", "--realm", "other.example", "add", "a", "--password", "pw") \
        .returncode == 0
    assert f"a:0x{key_hex('a', 'other.example', 'pw')}" in db(tmp_path).read_text()


def test_config_without_realm_fails_naming_the_file(tmp_path):
    write_config(tmp_path, '[relay]\nuserdb = "turnuserdb.conf"\n')
    result = run(tmp_path, "--config", "rpturn.toml", "add", "alice", "--password", "pw")
    assert result.returncode == 1
    assert "no [relay] realm in rpturn.toml" in result.stderr


def test_unreadable_config_fails_naming_the_file(tmp_path):
    write_config(tmp_path, "[relay\n")
    result = run(tmp_path, "--config", "rpturn.toml", "list")
    assert result.returncode == 1
    assert "rpturn.toml: not valid TOML" in result.stderr


def test_symlinked_userdb_is_rewritten_through_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "users.conf"
    target.write_text("alice:pw\n")
    (tmp_path / "turnuserdb.conf").symlink_to(target)
    assert run(tmp_path, *OPTS, "add", "bob", "--password", "pw").returncode == 0
    assert (tmp_path / "turnuserdb.conf").is_symlink()
    assert target.read_text() == f"alice:pw\nbob:0x{key_hex('bob', REALM, 'pw')}\n"


# --- on a terminal: getpass asks twice ----------------------------------------------------------------------


def run_on_terminal(tmp_path: Path, args: list[str], answers: list[str]) -> tuple[int, str]:
    """Run the script with a pseudo-terminal as its controlling terminal, answering each password prompt."""
    master, slave = os.openpty()

    def take_terminal() -> None:  # runs in the child after setsid(): make the pty its controlling terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([SCRIPT, *args], cwd=tmp_path, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, preexec_fn=take_terminal)
    os.close(slave)
    seen, pending, deadline = b"", list(answers), time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            # Answer only after the prompt: getpass flushes input typed before it turns echo off.
            if pending and seen.count(b"assword") > len(answers) - len(pending):
                os.write(master, pending.pop(0).encode() + b"\n")
        return proc.wait(timeout=10), seen.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_add_on_a_terminal_asks_twice_and_does_not_echo(tmp_path):
    code, output = run_on_terminal(tmp_path, [*OPTS, "add", "alice"], ["typed-secret", "typed-secret"])
    assert code == 0, output
    assert "Password for alice:" in output and "Retype password:" in output
    assert "typed-secret" not in output
    assert f"alice:0x{key_hex('alice', REALM, 'typed-secret')}" in db(tmp_path).read_text()


def test_add_on_a_terminal_with_differing_passwords_fails(tmp_path):
    code, output = run_on_terminal(tmp_path, [*OPTS, "add", "alice"], ["one", "two"])
    assert code == 1
    assert "the two passwords differ" in output
    assert not db(tmp_path).exists()
