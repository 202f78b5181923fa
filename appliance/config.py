"""Reading the appliance's TOML file: the one error type, host:port, the `workers` key.

Each service keeps its own schema (`relay/config.py` for `[relay]`, `revproxy/config.py` for `[revproxy]`); what
they share is here, so an operator sees one kind of message and one address syntax everywhere:

- `ConfigError(path, table, key, problem)`: every bad setting, printed as exactly `FILE: [table] key: problem`
  (`key` is "-" for a problem with the file or the table as a whole). A twistd plugin turns it into that one line
  on stderr and a non-zero exit (`appliance.startup.exit_on_config_error`), never a traceback or a usage dump.
- `load_table(path, table)`: the file's `[table]` as a dict; an unreadable or invalid file is a ConfigError.
- `parse_hostport(text, default_port=None, numeric=False, port_zero=False)` / `format_hostport(host, port)`: the
  one address syntax: `1.2.3.4:443`, `[2001:db8::1]:443`, `name.example:443` (unless `numeric`), and a bare host
  when a default port is given. IPv6 addresses with a port need brackets; the parser raises ValueError with the
  reason.
- `parse_workers(value)`: the `workers` key of every service: 1-256 or "auto" (one per core).
- `checked(path, table, key, check, value)`: run a ValueError-raising check and name the file, table and key.

Nothing here touches the network: binding the listeners (and so finding a port in use or a `relay_ip` that is not
ours) is `appliance.sockets`' job at start.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

MAX_WORKERS = 256


class ConfigError(ValueError):
    """A bad configuration, naming the file, the table and the key: `FILE: [table] key: problem`."""

    def __init__(self, path: str, table: str, key: str, problem: str) -> None:
        self.path, self.table, self.key, self.problem = path, table, key, problem
        super().__init__(f"{path}: [{table}] {key}: {problem}")


def read_document(path: str, table: str) -> dict[str, Any]:
    """The whole TOML file; a missing or unparsable file is a ConfigError (key "-") for `table`'s reader."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(path, table, "-", f"cannot read the file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, table, "-", f"not valid TOML: {exc}") from None


def load_table(path: str, table: str, *, required: bool = False) -> dict[str, Any]:
    """`[table]` of the file at `path` (empty when absent, unless `required`)."""
    document = read_document(path, table)
    found = document.get(table)
    if found is None:
        if required:
            raise ConfigError(path, table, "-", f"no [{table}] table in the file")
        return {}
    if not isinstance(found, dict):
        raise ConfigError(path, table, "-", "must be a table")
    return found


def checked(path: str, table: str, key: str, check: Callable[[Any], T], value: Any) -> T:
    """`check(value)`, its ValueError turned into a ConfigError naming the file, table and key."""
    try:
        return check(value)
    except ValueError as exc:
        raise ConfigError(path, table, key, str(exc)) from None


def subtable_items(value: Any, known: Iterable[str], not_a_table: str) -> Iterator[tuple[str, Any]]:
    """The (key, value) pairs of a settings sub-table such as [revproxy.ldap]; ValueError(`not_a_table`) when it is
    not a table, ValueError('key: unknown key (known: ...)') for a key not in `known`."""
    if not isinstance(value, Mapping):
        raise ValueError(not_a_table)
    for key, raw in value.items():
        if key not in known:
            raise ValueError(f"{key}: unknown key (known: {', '.join(known)})")
        yield key, raw


def parse_hostport(text: str, default_port: int | None = None, *, numeric: bool = False,
                   port_zero: bool = False) -> tuple[str, int]:
    """`"10.0.0.1:443"`, `"[::1]:443"`, `"node.example.com:443"` -> (host, port); a numeric host comes back in
    its canonical form. Without a port: `default_port`, or ValueError. `numeric` refuses DNS names; `port_zero`
    accepts port 0 ("any free port", for tools that bind)."""
    if not isinstance(text, str):
        raise ValueError(f"expected an \"address:port\" string, got {text!r}")
    text = text.strip()
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [IPv6 address]:port")
        if rest:
            port_text = rest[1:]
        if not _is_ip(host, 6):
            raise ValueError(f"{text!r}: only an IPv6 address goes in brackets")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        if not _is_ip(text, 6) or default_port is None:
            raise ValueError(f"{text!r}: put an IPv6 address in brackets, as [::1]:443")
        host = text
    else:
        host = text
    if port_text is None:
        if default_port is None:
            raise ValueError(f"{text!r} has no port (address:port)")
        port = default_port
    elif port_text.isdigit() and (0 if port_zero else 1) <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ValueError(f"{text!r}: the port must be {0 if port_zero else 1}-65535")
    if not host:
        raise ValueError(f"{text!r} has no address")
    if _is_ip(host):
        return str(ipaddress.ip_address(host)), port
    if numeric:
        raise ValueError(f"{text!r}: {host!r} is not an IP address (expected a numeric IP address, not a name)")
    if any(c.isspace() or c in "/[]@" for c in host):
        raise ValueError(f"{text!r} is not a host name")
    return host, port


def format_hostport(host: str, port: int) -> str:
    """(host, port) -> `"host:port"`, IPv6 in brackets: what parse_hostport reads back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_workers(value: Any) -> int:
    """The `workers` key: a number of processes 1-256, or "auto" for one per core."""
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"expected 1-{MAX_WORKERS} or \"auto\", got {value!r}")
    return value


def _is_ip(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version
