"""The set-up wizard's questions as pure functions: validating one answer, pre-filling from the current config, and
applying a complete set of answers to the config document.

No I/O here: `appliance.commands.setup` asks (terminal, serial console or `--answers FILE`) and writes the files.
Every validator takes the operator's text and returns the value to store or raises `ValueError` whose message is
the reason shown before the question is asked again. The same validators serve the interactive and the
`--answers` paths, so automation cannot write what a person could not.

The config is edited with tomlkit, so the operator's comments, key order and any table the wizard does not ask
about survive a re-run.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

import tomlkit

from appliance.config import format_hostport, parse_hostport
from relay.auth import check_username

HEADER_MARK = "# Written by rpturn setup"
# How an earlier `rpturn setup` wrote "TURN disabled" (a `turn_clients` source that never occurs), before `[relay]
# turn = false` existed: read as DISABLED, rewritten as `turn = false`.
LEGACY_TURN_DISABLED = ("0.0.0.0/32",)
DEFAULT_MANAGEMENT = "127.0.0.1:9641"
DEFAULT_TURN_USER = "pexip"
MIN_PASSWORD = 8

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class TurnMode(Enum):
    """Who may use the TURN relay (STUN Binding is answered for everyone in every mode)."""

    RESTRICTED = "restricted"  # only the Conferencing Nodes' addresses (turn_clients), with a static user
    CLIENT = "client"  # anyone holding time-limited credentials made with the shared secret (browsers)
    DISABLED = "disabled"  # nobody


MODE_HELP = {
    TurnMode.RESTRICTED: "only the Conferencing Nodes may use TURN (their addresses), with a static user",
    TurnMode.CLIENT: "clients (browsers) use TURN with time-limited credentials from a shared secret",
    TurnMode.DISABLED: "no TURN; STUN still answered",
}
CLIENT_MODE_WARNING = ("Client TURN lets anyone with valid time-limited credentials relay through this host: it must "
                       "sit in a DMZ, never on the internal network.")


# --- validators: text -> value, or ValueError(reason) ---------------------------------------------------------


def validate_hostname(text: str) -> str:
    name = text.strip().rstrip(".").lower()
    if not name:
        raise ValueError("a hostname is needed")
    if len(name) > 253:
        raise ValueError("longer than 253 characters")
    labels = name.split(".")
    if len(labels) < 2:
        raise ValueError(f"{name!r} is not fully qualified: give host and domain, e.g. meet.example.com")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"{label!r} is not a valid DNS label (letters, digits, '-', at most 63)")
    if labels[-1].isdigit():
        raise ValueError(f"{name!r} is an address, not a hostname")
    return name


def validate_node(text: str) -> str:
    """'10.40.0.10', '10.40.0.10:443', '[fd00::10]:443' or 'node1.example.com:8443' -> 'host:port'."""
    text = text.strip()
    if not text:
        raise ValueError("empty")
    host, port = parse_hostport(text, 443)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        name = host.lower().rstrip(".")
        if not name or any(not _LABEL.fullmatch(label) for label in name.split(".")) or name.split(".")[-1].isdigit():
            raise ValueError(f"{host!r} is neither an IP address nor a DNS name") from None
        return f"{name}:{port}"
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"{host} cannot be a Conferencing Node's address")
    return format_hostport(str(address), port)


def node_address(node: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(parse_hostport(node, 443)[0])
    except ValueError:
        return None


def validate_mode(text: str) -> TurnMode:
    word = text.strip().lower()
    for number, mode in enumerate(TurnMode, start=1):
        if word in (mode.value, mode.value[0], str(number)):
            return mode
    raise ValueError(f"expected restricted, client or disabled (or 1, 2, 3), got {text.strip()!r}")


def validate_mode_for_nodes(mode: TurnMode, nodes: list[str]) -> TurnMode:
    if mode is TurnMode.RESTRICTED:
        names = [n for n in nodes if node_address(n) is None]
        if names:
            raise ValueError(f"restricted mode lets only the nodes' addresses use TURN, so the nodes must be given "
                             f"as IP addresses ({names[0]} is a name)")
    return mode


def validate_username(text: str) -> str:
    name = text.strip()
    problem = check_username(name)
    if problem:
        raise ValueError(problem)
    return name


def validate_password(text: str) -> str:
    if len(text) < MIN_PASSWORD:
        raise ValueError(f"at least {MIN_PASSWORD} characters")
    if not text.isprintable():
        raise ValueError("control characters are not allowed")
    if text != text.strip():
        raise ValueError("no spaces at the start or end (they are easily lost when typed into a node's config)")
    return text


def validate_yes_no(text: str) -> bool:
    word = text.strip().lower()
    if word in ("y", "yes", "true", "on", "1"):
        return True
    if word in ("n", "no", "false", "off", "0"):
        return False
    raise ValueError(f"expected yes or no, got {text.strip()!r}")


def validate_management(text: str) -> str:
    """'127.0.0.1:9641', '[::1]:9641', or 'off' / '' (no management listener) -> the `listen` value."""
    text = text.strip()
    if text.lower() in ("off", "none", "-"):
        return ""
    try:
        host, port = parse_hostport(text, numeric=True)
    except ValueError as e:
        raise ValueError(f"{e}: give address:port, e.g. {DEFAULT_MANAGEMENT}, or 'off'") from None
    return format_hostport(host, port)


# --- answers and defaults -------------------------------------------------------------------------------------


@dataclass
class Answers:
    """Everything the wizard asks. `turn_password` None: keep the user's current key, or generate a password."""

    hostname: str | None = None
    nodes: tuple[str, ...] = ()
    turn_mode: TurnMode = TurnMode.RESTRICTED
    turn_user: str = DEFAULT_TURN_USER
    turn_password: str | None = None
    turn_on_https: bool = False
    management: str = DEFAULT_MANAGEMENT
    pin_guard: bool = True  # off in the services' defaults, as in the old appliance; the wizard suggests it

    @property
    def needs_user(self) -> bool:
        return self.turn_mode is not TurnMode.DISABLED


def _table(document: dict[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name, {})
    return value if isinstance(value, dict) else {}


def current_answers(document: dict[str, Any], userdb_users: list[str]) -> Answers:
    """The answers a re-run starts from: what the current config (and userdb) say; defaults where they say nothing."""
    relay, proxy, mgmt = _table(document, "relay"), _table(document, "revproxy"), _table(document, "management")
    answers = Answers()
    try:
        answers.hostname = validate_hostname(str(proxy.get("hostname", "")))
    except ValueError:
        answers.hostname = None
    nodes = []
    for node in proxy.get("nodes", []) if isinstance(proxy.get("nodes"), list) else []:
        try:
            nodes.append(validate_node(str(node)))
        except ValueError:
            continue
    answers.nodes = tuple(nodes)
    clients = relay.get("turn_clients", [])
    if relay.get("turn") is False or (isinstance(clients, list) and tuple(clients) == LEGACY_TURN_DISABLED):
        answers.turn_mode = TurnMode.DISABLED
    elif not clients and (relay.get("auth_secrets_file") or relay.get("auth_secrets")):
        answers.turn_mode = TurnMode.CLIENT
    inline = _table(relay, "users")
    for name in [*userdb_users, *inline]:
        if check_username(name) is None:
            answers.turn_user = name
            break
    answers.turn_on_https = proxy.get("turn_on_https") is True
    listen = mgmt.get("listen", DEFAULT_MANAGEMENT)
    answers.management = listen if isinstance(listen, str) else DEFAULT_MANAGEMENT
    guard = _table(proxy, "pin_guard")
    if isinstance(guard.get("enabled"), bool):
        answers.pin_guard = guard["enabled"]
    return answers


# --- the config document --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """Where the wizard keeps the secrets (absolute, written into the config)."""

    userdb: str
    secrets: str


def _subtable(doc: Any, name: str) -> Any:
    if name not in doc or not isinstance(doc[name], dict):
        doc[name] = tomlkit.table()
    return doc[name]


def turn_clients_for(answers: Answers) -> list[str]:
    if answers.turn_mode is not TurnMode.RESTRICTED:
        return []
    cidrs = []
    for node in answers.nodes:
        address = node_address(node)
        assert address is not None, "validate_mode_for_nodes lets only addresses through"
        cidr = str(ipaddress.ip_network(address))
        if cidr not in cidrs:
            cidrs.append(cidr)
    return cidrs


def apply_answers(text: str, answers: Answers, paths: Paths, header: str) -> str:
    """The config file's new text: `text` (the current file, or the sample) with the answered keys set.

    Inline passwords ([relay.users]) and inline secrets (auth_secrets) leave the config: they live in
    files of their own, written private (appliance.atomic.secret_file_mode).
    """
    doc = tomlkit.parse(_strip_header(text))
    relay = _subtable(doc, "relay")
    if "users" in relay:
        del relay["users"]
    if "auth_secrets" in relay:
        del relay["auth_secrets"]
    relay["userdb"] = paths.userdb
    if answers.turn_mode is TurnMode.DISABLED:
        if "turn_clients" in relay:
            del relay["turn_clients"]
        relay["turn"] = tomlkit.item(False).comment("TURN disabled: nobody may use TURN; STUN Binding for all")
    else:
        if "turn" in relay:
            del relay["turn"]
        clients = tomlkit.item(turn_clients_for(answers))
        clients.comment({TurnMode.RESTRICTED: "restricted: only the Conferencing Nodes may use TURN",
                         TurnMode.CLIENT: "client TURN: anyone with credentials from auth_secrets_file",
                         }[answers.turn_mode])
        relay["turn_clients"] = clients
    if answers.turn_mode is TurnMode.CLIENT:
        relay["auth_secrets_file"] = paths.secrets
    elif "auth_secrets_file" in relay:
        del relay["auth_secrets_file"]
    proxy = _subtable(doc, "revproxy")
    assert answers.hostname is not None
    proxy["hostname"] = answers.hostname
    proxy["nodes"] = list(answers.nodes)
    weights = proxy.get("weights")
    if isinstance(weights, dict):
        for name in [n for n in weights if n not in answers.nodes]:
            del weights[name]
    if answers.turn_on_https:
        proxy["turn_on_https"] = True
    elif "turn_on_https" in proxy:  # false is the default: leave the key out
        del proxy["turn_on_https"]
    guard = _subtable(proxy, "pin_guard")
    guard["enabled"] = answers.pin_guard
    _subtable(doc, "management")["listen"] = answers.management
    return header + tomlkit.dumps(doc)


def _strip_header(text: str) -> str:
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith(HEADER_MARK):
        lines.pop(0)
    return "".join(lines)


def summary(answers: Answers, paths: Paths, password_note: str) -> list[str]:
    """The lines shown before anything is written."""
    lines = [
        f"  hostname             {answers.hostname}",
        f"  Conferencing Nodes   {', '.join(answers.nodes)}",
        f"  TURN mode            {answers.turn_mode.value}: {MODE_HELP[answers.turn_mode]}",
    ]
    if answers.turn_mode is TurnMode.RESTRICTED:
        lines.append(f"  TURN clients         {', '.join(turn_clients_for(answers))}")
    if answers.needs_user:
        lines.append(f"  TURN user            {answers.turn_user} (password {password_note}; key in {paths.userdb})")
    if answers.turn_mode is TurnMode.CLIENT:
        lines.append(f"  shared secret        in {paths.secrets}")
    lines += [
        f"  TURN on HTTPS port   {'yes' if answers.turn_on_https else 'no'}",
        f"  management listener  {answers.management or 'off'}",
        f"  PIN guard            {'on' if answers.pin_guard else 'off'}",
    ]
    return lines
