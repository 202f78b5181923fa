"""rpturn-users: add, change, delete and list TURN users in a userdb file (turnadmin format).

    rpturn-users [--config conf/rpturn.toml | --userdb PATH --realm REALM] add USER [--password P]
    rpturn-users ... passwd USER [--password P]
    rpturn-users ... delete USER
    rpturn-users ... list

The file holds ``user:0x<md5(user:realm:password)>`` lines: the tool writes the key, never the password. Without
``--password`` it asks twice on a terminal, or reads one line from standard input otherwise (for scripts:
``echo "$pw" | rpturn-users ... add alice``; ``--password`` is visible to other users in the process list).

With ``--config`` the userdb path and realm come from the ``[relay]`` table (``userdb``, ``realm``); ``--userdb``
and ``--realm`` override them. A relative userdb path is relative to the current directory, as for the relay.
Every change rewrites the file atomically (a temporary file in the same directory, fsync, rename), private (0600,
or root:<group> 0640 where the service must read it: appliance.atomic.secret_file_mode), keeping comments, blank
lines and the order of the other users; the relay picks it up on SIGHUP. Concurrent runs are
serialised with a lock on the file's directory.

Exit status: 0 done, 1 error (unknown or existing user, bad file, missing realm...), 2 bad command line.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import os
import sys
import tomllib
from collections.abc import Iterator, Sequence
from typing import NoReturn, TextIO

from appliance.atomic import write_atomically
from appliance.cli import ErrorReport, run_reporting
from relay.auth import UserDbError, check_username, iter_userdb, long_term_key, read_userdb_bytes

PROG = "rpturn-users"
NEW_FILE_HEADER = "# rpturn userdb: user:0x<md5(user:realm:password)> lines, managed with rpturn-users"


class UsageError(Exception):
    """A problem to report in one line, exit status 1."""


def fail(message: str) -> NoReturn:
    raise UsageError(message)


# --- settings -----------------------------------------------------------------------------------------------


def settings_from_config(path: str) -> tuple[str | None, str | None]:
    """(userdb, realm) from the [relay] table of the appliance's TOML config."""
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        fail(f"{path}: cannot read: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        fail(f"{path}: not valid TOML: {exc}")
    relay = document.get("relay", {})
    if not isinstance(relay, dict):
        fail(f"{path}: [relay]: must be a table")
    values = []
    for key in ("userdb", "realm"):
        value = relay.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            fail(f"{path}: [relay] {key}: must be a non-empty string")
        values.append(value)
    return values[0], values[1]


def resolve_settings(args: argparse.Namespace) -> tuple[str, str | None]:
    userdb, realm = (None, None) if args.config is None else settings_from_config(args.config)
    userdb = args.userdb or userdb
    realm = args.realm or realm
    if userdb is None:
        where = f"no [relay] userdb in {args.config}: " if args.config else ""
        fail(f"{where}give --userdb PATH (or --config FILE with [relay] userdb)")
    return userdb, realm


def require_realm(realm: str | None, args: argparse.Namespace) -> str:
    if realm is None:
        where = f"no [relay] realm in {args.config}: " if args.config else ""
        fail(f"{where}the key depends on the realm: give --realm REALM (or --config FILE with [relay] realm)")
    return realm


# --- the file -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def locked_directory(path: str) -> Iterator[None]:
    """Serialise read-modify-write runs: flock the directory (the file itself is replaced, so not it)."""
    try:
        fd = os.open(os.path.dirname(os.path.realpath(path)), os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        fail(f"{path}: cannot open its directory: {exc.strerror or exc}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_lines(path: str, *, missing_ok: bool) -> list[tuple[str, str | None]]:
    """(line text, username or None) for every line; a missing file is empty when ``missing_ok``."""
    if missing_ok and not os.path.lexists(path):
        return []
    data = read_userdb_bytes(path)
    return [(text, entry.username if entry else None) for _, text, entry in iter_userdb(data, path)]


def write_userdb(path: str, lines: Sequence[str]) -> None:
    """Replace ``path`` with ``lines`` as appliance.atomic does (never half a file; a symbolic link's target is
    replaced; the owner kept where we may), private from the start (appliance.atomic.secret_file_mode): the file
    holds keys."""
    write_atomically(path, "".join(line + "\n" for line in lines).encode(), secret=True)


def key_line(username: str, realm: str, password: str) -> str:
    return f"{username}:0x{long_term_key(username, realm, password).hex()}"


# --- passwords ----------------------------------------------------------------------------------------------


def read_password(username: str, given: str | None, stdin: TextIO) -> str:
    if given is not None:
        password = given
    elif stdin.isatty():
        password = getpass.getpass(f"Password for {username}: ")
        if getpass.getpass("Retype password: ") != password:
            fail("the two passwords differ; nothing changed")
    else:
        line = stdin.readline()
        if not line:
            fail("no password on standard input (give one line, or --password)")
        password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        fail("empty password")
    if not password.isprintable():
        fail("the password contains control characters")
    return password


# --- commands -----------------------------------------------------------------------------------------------


def index_of(lines: list[tuple[str, str | None]], username: str) -> int | None:
    return next((i for i, (_, name) in enumerate(lines) if name == username), None)


def check_new_username(username: str) -> None:
    problem = check_username(username)
    if problem:
        fail(f"{problem}: {username!r}")


def cmd_add(args: argparse.Namespace, userdb: str, realm: str | None, out: TextIO) -> None:
    realm = require_realm(realm, args)
    check_new_username(args.user)
    with locked_directory(userdb):
        lines = read_lines(userdb, missing_ok=True)
        if index_of(lines, args.user) is not None:
            fail(f"user {args.user!r} already exists in {userdb}; use 'passwd' to change the password")
        password = read_password(args.user, args.password, sys.stdin)
        texts = [text for text, _ in lines] or [NEW_FILE_HEADER]
        write_userdb(userdb, [*texts, key_line(args.user, realm, password)])
    print(f"added user {args.user} to {userdb} (realm {realm}); reload the relay (SIGHUP) to apply", file=out)


def cmd_passwd(args: argparse.Namespace, userdb: str, realm: str | None, out: TextIO) -> None:
    realm = require_realm(realm, args)
    with locked_directory(userdb):
        lines = read_lines(userdb, missing_ok=False)
        index = index_of(lines, args.user)
        if index is None:
            fail(f"no user {args.user!r} in {userdb}")
        password = read_password(args.user, args.password, sys.stdin)
        texts = [text for text, _ in lines]
        texts[index] = key_line(args.user, realm, password)
        write_userdb(userdb, texts)
    print(f"changed the password of {args.user} in {userdb} (realm {realm}); reload the relay (SIGHUP) to apply",
          file=out)


def cmd_delete(args: argparse.Namespace, userdb: str, realm: str | None, out: TextIO) -> None:
    with locked_directory(userdb):
        lines = read_lines(userdb, missing_ok=False)
        index = index_of(lines, args.user)
        if index is None:
            fail(f"no user {args.user!r} in {userdb}")
        write_userdb(userdb, [text for i, (text, _) in enumerate(lines) if i != index])
    print(f"deleted user {args.user} from {userdb}; reload the relay (SIGHUP) to apply", file=out)


def cmd_list(args: argparse.Namespace, userdb: str, realm: str | None, out: TextIO) -> None:
    entries = list(iter_userdb(read_userdb_bytes(userdb), userdb))  # a bad file: an error, not half a list
    for number, _, entry in entries:
        if entry is None:
            continue
        print(entry.username, file=out)
        if entry.password is not None:
            print(f"{PROG}: note: {userdb}:{number}: {entry.username} has a plain password; "
                  f"'{PROG} passwd {entry.username}' stores a key instead", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Manage TURN users in a userdb file (user:0x<md5(user:realm:password)> lines).")
    parser.add_argument("--config", metavar="FILE", help="appliance TOML config: [relay] userdb and realm")
    parser.add_argument("--userdb", metavar="PATH", help="userdb file (overrides the config)")
    parser.add_argument("--realm", metavar="REALM", help="TURN realm the keys are made for (overrides the config)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add = commands.add_parser("add", help="add a user (creates the file if needed)")
    add.add_argument("user")
    add.add_argument("--password", help="the password (default: ask, or read one line from stdin)")
    add.set_defaults(run=cmd_add)
    passwd = commands.add_parser("passwd", help="change a user's password")
    passwd.add_argument("user")
    passwd.add_argument("--password", help="the new password (default: ask, or read one line from stdin)")
    passwd.set_defaults(run=cmd_passwd)
    delete = commands.add_parser("delete", help="delete a user")
    delete.add_argument("user")
    delete.set_defaults(run=cmd_delete)
    listing = commands.add_parser("list", help="list the users, one per line")
    listing.set_defaults(run=cmd_list)
    return parser


REPORTS: tuple[ErrorReport, ...] = (
    ((UsageError, UserDbError), lambda exc: f"error: {exc}", 1),
    (OSError, lambda exc: f"error: {exc.filename}: {exc.strerror or exc}", 1),
    (KeyboardInterrupt, lambda _exc: "interrupted; nothing changed", 1),
)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        userdb, realm = resolve_settings(args)
        args.run(args, userdb, realm, sys.stdout)
        return 0

    return run_reporting(PROG, run, REPORTS)


if __name__ == "__main__":
    sys.exit(main())
