"""`rpturn setup`: the install wizard, over a terminal, a serial console or SSH, or from an answers file.

Plain prompts on stdin/stdout (no TTY needed; on a TTY passwords are read without echo and asked twice). Every
answer is validated on the spot (appliance.wizard) and, when wrong, the reason is shown and the question asked
again; defaults are shown in brackets and Enter takes them; a re-run starts from the current config. Nothing is
written before the operator confirms a summary. Then:

- the userdb (the static TURN user's key, never the password) and the shared-secret file go to 0600 files beside
  the config, and the config names them;
- the config is replaced atomically (appliance.atomic), the previous file kept as `FILE.bak`, with a header saying
  what wrote it and when; the first time the wizard replaces a file it did not write (the sample), that file is also
  kept as `FILE.orig` for `rpturn reset`;
- `rpturn check` runs on the result, and the last lines say how to apply it.

`--answers FILE` (TOML: hostname, nodes, turn_mode, turn_user, turn_password, turn_on_https, management, pin_guard)
runs the same validation without asking; a missing answer takes the current value or the default.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import grp
import os
import secrets
import socket
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any, TextIO

from appliance import wizard
from appliance.atomic import write_atomically
from appliance.cli import SUBCOMMANDS, CommandError
from appliance.prompt import Console
from appliance.wizard import Answers, Paths, TurnMode
from relay.auth import UserDbError, iter_userdb, read_userdb_bytes
from relay.users_cli import NEW_FILE_HEADER, key_line

HELP = "install wizard: hostname, Conferencing Nodes, TURN mode, management listener, PIN guard"
SAMPLE = Path(__file__).resolve().parents[2] / "conf" / "rpturn.toml"
USERDB_NAME = "turnuserdb.conf"
SECRETS_NAME = "turn-secrets"
ANSWER_KEYS = ("hostname", "nodes", "turn_mode", "turn_user", "turn_password", "turn_on_https", "management",
               "pin_guard")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="conf/rpturn.toml", metavar="FILE",
                        help="the config file to write (default: %(default)s; started from the sample if missing)")
    parser.add_argument("--answers", metavar="FILE", help="answer every question from this TOML file, no prompts")


# --- reading the operator's input -----------------------------------------------------------------------------


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def ask_nodes(console: Console, current: tuple[str, ...]) -> tuple[str, ...]:
    console.say("Conferencing Nodes, one per line: address or address:port (port 443 by default); an empty line "
                "ends.")
    if current:
        console.say(f"  Enter on the first line keeps: {', '.join(current)}")
    nodes: list[str] = []
    while True:
        text = console.line(f"  node {len(nodes) + 1}: ").strip()
        if not text:
            if nodes:
                return tuple(nodes)
            if current:
                return current
            console.say("  at least one node is needed")
            continue
        try:
            node = wizard.validate_node(text)
        except ValueError as e:
            console.say(f"  not accepted: {e}; try again")
            continue
        if node in nodes:
            console.say(f"  not accepted: {node} is already listed; try again")
            continue
        nodes.append(node)


def ask_password(console: Console, user: str, keep_possible: bool, typed: str | None) -> str | None:
    """The new password, or None: keep the user's key (or generate a password for a new user)."""
    if typed is not None:
        enter = "keep the one typed before"
    else:
        enter = "keep the current one" if keep_possible else "generate one"
    while True:
        text = console.secret(f"TURN password for {user} (at least {wizard.MIN_PASSWORD} characters; Enter: {enter}): ")
        if not text:
            return typed
        try:
            password = wizard.validate_password(text)
        except ValueError as e:
            console.say(f"  not accepted: {e}; try again")
            continue
        if console.stdin.isatty() and console.secret("Again: ") != password:
            console.say("  not accepted: the two passwords differ; try again")
            continue
        return password


def interview(console: Console, start: Answers, existing_users: set[str]) -> Answers:
    a = Answers(**vars(start))
    a.hostname = console.ask("Hostname of this appliance (FQDN)", a.hostname, wizard.validate_hostname)
    a.nodes = ask_nodes(console, a.nodes)
    console.say("TURN mode:")
    for number, mode in enumerate(TurnMode, start=1):
        console.say(f"  {number}. {mode.value:<10} {wizard.MODE_HELP[mode]}")
    nodes = list(a.nodes)
    a.turn_mode = console.ask("TURN mode", a.turn_mode, lambda t: wizard.validate_mode_for_nodes(
        wizard.validate_mode(t), nodes), shown=a.turn_mode.value)
    if a.turn_mode is TurnMode.CLIENT:
        console.say(f"  WARNING: {wizard.CLIENT_MODE_WARNING}")
    if a.needs_user:
        a.turn_user = console.ask("TURN username (the nodes' TURN credentials)", a.turn_user,
                                  wizard.validate_username)
        a.turn_password = ask_password(console, a.turn_user, a.turn_user in existing_users, a.turn_password)
    a.turn_on_https = console.ask("TURN on the HTTPS port too (turns: on 443 for strict firewalls)?",
                                  a.turn_on_https, wizard.validate_yes_no, shown=yes_no(a.turn_on_https))
    a.management = console.ask("Management listener (address:port for /metrics and /status, or off)",
                               a.management, wizard.validate_management, shown=a.management or "off")
    a.pin_guard = console.ask("PIN guard: answer 429 to an address after repeated wrong PINs?", a.pin_guard,
                              wizard.validate_yes_no, shown=yes_no(a.pin_guard))
    return a


# --- answers from a file --------------------------------------------------------------------------------------


def answers_from_file(path: str, start: Answers) -> Answers:
    try:
        with open(path, "rb") as f:
            given = tomllib.load(f)
    except OSError as e:
        raise CommandError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise CommandError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(given) - set(ANSWER_KEYS))
    if unknown:
        raise CommandError(f"{path}: {unknown[0]}: unknown answer (known: {', '.join(ANSWER_KEYS)})")
    a = Answers(**vars(start))

    def take(key: str, validate) -> Any:
        value = given[key]
        text = yes_no(value) if isinstance(value, bool) else value
        if not isinstance(text, str):
            raise CommandError(f"{path}: {key}: expected a string, got {value!r}")
        try:
            return validate(text)
        except ValueError as e:
            raise CommandError(f"{path}: {key}: {e}") from None

    if "hostname" in given:
        a.hostname = take("hostname", wizard.validate_hostname)
    if a.hostname is None:
        raise CommandError(f"{path}: hostname: missing, and the current config has none")
    if "nodes" in given:
        if not isinstance(given["nodes"], list) or not given["nodes"]:
            raise CommandError(f"{path}: nodes: expected a non-empty list of \"address:port\" strings")
        nodes: list[str] = []
        for i, node in enumerate(given["nodes"]):
            if not isinstance(node, str):
                raise CommandError(f"{path}: nodes: entry {i + 1}: expected a string, got {node!r}")
            try:
                checked = wizard.validate_node(node)
            except ValueError as e:
                raise CommandError(f"{path}: nodes: {e}") from None
            if checked in nodes:
                raise CommandError(f"{path}: nodes: {checked} is listed twice")
            nodes.append(checked)
        a.nodes = tuple(nodes)
    if not a.nodes:
        raise CommandError(f"{path}: nodes: missing, and the current config has none")
    if "turn_mode" in given:
        a.turn_mode = take("turn_mode", wizard.validate_mode)
    try:
        wizard.validate_mode_for_nodes(a.turn_mode, list(a.nodes))
    except ValueError as e:
        raise CommandError(f"{path}: turn_mode: {e}") from None
    if "turn_user" in given:
        a.turn_user = take("turn_user", wizard.validate_username)
    if "turn_password" in given:
        a.turn_password = take("turn_password", wizard.validate_password)
    if "turn_on_https" in given:
        a.turn_on_https = take("turn_on_https", wizard.validate_yes_no)
    if "management" in given:
        a.management = take("management", lambda t: wizard.validate_management(t) if t else "")
    if "pin_guard" in given:
        a.pin_guard = take("pin_guard", wizard.validate_yes_no)
    return a


# --- the files ------------------------------------------------------------------------------------------------


def read_document(config: str) -> tuple[str, dict[str, Any], bool]:
    """(text, parsed, exists) of the current config, or of the sample when there is none yet."""
    source = config if os.path.exists(config) else str(SAMPLE)
    try:
        text = Path(source).read_text()
        return text, tomllib.loads(text), source == config
    except OSError as e:
        raise CommandError(f"{source}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise CommandError(f"{source}: not valid TOML (fix or remove it, then run setup again): {e}") from None


def resolve(config_dir: str, value: Any, name: str) -> str:
    if isinstance(value, str) and value:
        return os.path.abspath(value)
    return os.path.join(config_dir, name)


def userdb_lines(path: str) -> list[tuple[str, str | None]]:
    if not os.path.exists(path):
        return []
    try:
        return [(text, e.username if e else None) for _, text, e in iter_userdb(read_userdb_bytes(path), path)]
    except UserDbError as e:
        raise CommandError(f"{e} (fix it with rpturn-users or remove it, then run setup again)") from None


def write_userdb(path: str, lines: list[tuple[str, str | None]], user: str | None, line: str | None) -> None:
    texts = [text for text, _ in lines] or [NEW_FILE_HEADER]
    if user is not None and line is not None:
        names = [name for _, name in lines]
        if user in names:
            texts[names.index(user)] = line
        else:
            texts.append(line)
    write_atomically(path, "".join(t + "\n" for t in texts).encode(), secret=True)


def write_secrets(path: str, inline: list[str]) -> bool:
    """Make sure the shared-secret file holds a secret (keeping the ones it has); True when one was generated."""
    try:
        have = [s.strip() for s in Path(path).read_text().splitlines() if s.strip() and not s.startswith("#")]
    except FileNotFoundError:
        have = []
    except OSError as e:
        raise CommandError(f"{path}: cannot read: {e.strerror}") from None
    merged = have + [s for s in inline if s not in have]
    generated = not merged
    if generated:
        merged = [secrets.token_hex(32)]
    if merged != have:
        header = "# TURN REST API shared secrets, one per line (rpturn setup); keep this file private\n"
        write_atomically(path, (header + "".join(s + "\n" for s in merged)).encode(), secret=True)
    return generated


def header_line() -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    return (f"{wizard.HEADER_MARK} on {when} by {who}; run `rpturn setup` again to change it "
            f"(the previous file is kept as .bak).\n")


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    console = Console(stdin or sys.stdin, stdout or sys.stdout)
    config = os.path.abspath(args.config)
    config_dir = os.path.dirname(config)
    if not os.path.isdir(config_dir):
        raise CommandError(f"{config_dir}: no such directory")
    text, document, exists = read_document(config)
    relay = document.get("relay", {}) if isinstance(document.get("relay"), dict) else {}
    paths = Paths(resolve(config_dir, relay.get("userdb"), USERDB_NAME),
                  resolve(config_dir, relay.get("auth_secrets_file"), SECRETS_NAME))
    realm = relay.get("realm") if isinstance(relay.get("realm"), str) and relay.get("realm") else "example.com"
    lines = userdb_lines(paths.userdb)
    existing = {name for _, name in lines if name}
    start = wizard.current_answers(document, sorted(existing))
    if args.answers:
        answers = answers_from_file(args.answers, start)
    else:
        console.say(f"rpturn setup: writing {config}" + ("" if exists else f" (starting from the sample {SAMPLE})"))
        console.say("Enter takes the value in [brackets].")
        answers = start
        while True:
            answers = interview(console, answers, existing)
            console.say("")
            console.say("Summary:")
            for line in wizard.summary(answers, paths, password_note(answers, existing)):
                console.say(line)
            choice = console.ask("Write this configuration? yes / no (ask again) / quit", "yes",
                                 validate_confirm)
            if choice == "yes":
                break
            if choice == "quit":
                console.say("nothing was written")
                return 1
    generated_password = write_all(config, text, exists, answers, paths, realm, lines, existing, relay)
    console.say(f"wrote {config}" + (f" (previous kept as {config}.bak)" if exists else ""))
    if answers.needs_user:
        console.say(f"TURN user {answers.turn_user}: key in {paths.userdb} ({_ownership(paths.userdb)})")
        if generated_password is not None:
            console.say(f"  generated password: {generated_password}  (give it to the Conferencing Nodes; it is "
                        f"stored only as a key and shown only now)")
    if answers.turn_mode is TurnMode.CLIENT:
        console.say(f"shared secret for time-limited TURN credentials: in {paths.secrets} "
                    f"({_ownership(paths.secrets)})")
    return finish(console, config)


def validate_confirm(text: str) -> str:
    word = text.strip().lower()
    for choice in ("yes", "no", "quit"):
        if word in (choice, choice[0]):
            return choice
    raise ValueError(f"expected yes, no or quit, got {text.strip()!r}")


def password_note(answers: Answers, existing: set[str]) -> str:
    if answers.turn_password is not None:
        return "new, as typed"
    return "unchanged" if answers.turn_user in existing else "generated, shown once after writing"


def _ownership(path: str) -> str:
    """"mode 0640, group rpturn": what the operator needs to know about who may read a file of secrets."""
    status = os.stat(path)
    try:
        group = grp.getgrgid(status.st_gid).gr_name
    except KeyError:
        group = str(status.st_gid)
    return f"mode {stat.S_IMODE(status.st_mode):04o}, group {group}"


def write_all(config: str, text: str, exists: bool, answers: Answers, paths: Paths, realm: str,
              lines: list[tuple[str, str | None]], existing: set[str], relay: dict[str, Any]) -> str | None:
    """Secrets first (the config never names a missing file), then the config. The generated password, if any."""
    generated = None
    if answers.needs_user:
        password = answers.turn_password
        if password is None and answers.turn_user not in existing:
            password = generated = secrets.token_urlsafe(15)
        line = None if password is None else key_line(answers.turn_user, realm, password)
        write_userdb(paths.userdb, lines, answers.turn_user, line)
    elif not lines:
        write_userdb(paths.userdb, lines, None, None)  # the relay wants a userdb, even an empty one
    if answers.turn_mode is TurnMode.CLIENT:
        inline = relay.get("auth_secrets", [])
        write_secrets(paths.secrets, [s for s in inline if isinstance(s, str)] if isinstance(inline, list) else [])
    new_text = wizard.apply_answers(text, answers, paths, header_line())
    if exists and not text.startswith(wizard.HEADER_MARK) and not os.path.exists(config + ".orig"):
        # The first file the wizard replaces (usually the sample): `rpturn reset` restores it from here.
        write_atomically(config + ".orig", text.encode(), mode=0o644)
    mode = os.stat(config).st_mode & 0o777 if exists else 0o644
    write_atomically(config, new_text.encode(), mode=mode, keep_backup=True)
    return generated


def finish(console: Console, config: str) -> int:
    status = 0
    if "check" in SUBCOMMANDS:
        from appliance.cli import main as rpturn_main

        console.say(f"running: rpturn check --config {config}")
        status = rpturn_main(["check", "--config", config])
        if status != 0:
            console.say("rpturn check found problems (above): fix them and run rpturn setup again")
    else:
        console.say("(rpturn check is not available in this installation: the config was not checked)")
    console.say("To apply: reload the running appliance (systemctl reload rpturn, or kill -HUP <its pid>), "
                f"or start it: twistd -n --pidfile= rpturn --config {config}")
    return status
