"""`rpturn check [--config FILE]`: is this configuration good to start or reload with, like `nginx -t`.

Checks, collecting every problem rather than stopping at the first:
- the file: readable, TOML, tables where tables belong; unknown tables are warnings;
- each table through its service's own loader (`[relay]`, `[revproxy]`, `[management]`): a loader stops at its
  first bad key, so the key is set aside and the table loaded again until it passes — every bad key is reported
  once (a key's default then stands in for it, so a follow-on problem of a key that depends on it can show up);
- the relay's userdb, every bad line (up to `MAX_USERDB_LINES`);
- the certificate bundle(s) through `appliance.certs` (order, key match, encryption, validity, hostname, chain);
- that every listener can be bound here and `relay_ip` is an address of this host (bind and close at once).

Output: one line per problem, `FILE: [table] key: problem`, warnings prefixed `warning: `, then one summary line.
Exit 0 when there is no error (warnings allowed), 1 otherwise. Never a traceback: a loader that fails in a way it
should not is reported as one line too.

Next to the running appliance its own ports are of course in use. A port in use is an error, unless it is held by
the running rpturn: its pid file names a live twistd (or the management listener answers), and — where /proc lets
us see it — the socket on that port belongs to that process tree. Then it is a warning, "in use by the running
rpturn", because a reload keeps those sockets and a restart frees them first. When /proc does not tell us the owner
(another user's process), a port in use while rpturn runs is a warning that says we could not be sure.
A port below 1024 that this user may not bind is a warning too: the systemd units grant CAP_NET_BIND_SERVICE.
"""

from __future__ import annotations

import argparse
import errno
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance import certs, running
from appliance.certs import Severity
from appliance.config import ConfigError, format_hostport
from appliance.sockets import bind_tcp, bind_udp

HELP = "check the configuration, certificate, userdb and listen addresses before a start or reload (like nginx -t)"
MAX_USERDB_LINES = 20
SERVICES = ("relay", "revproxy")


@dataclass(frozen=True)
class Issue:
    severity: Severity
    text: str  # `FILE: [table] key: problem`

    def __str__(self) -> str:
        return self.text if self.severity is Severity.ERROR else f"warning: {self.text}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default="conf/rpturn.toml", metavar="FILE",
                        help="the appliance's TOML config file (default: %(default)s)")
    parser.add_argument("--service", choices=("all", *SERVICES), default="all",
                        help="check the tables of one service only, as for rpturn-relay.service (default: all)")
    parser.add_argument("--pidfile", default=None, metavar="FILE",
                        help="the running appliance's pid file, to tell its own ports from others' "
                             f"(default: $RPTURN_PIDFILE or {running.DEFAULT_PIDFILE})")
    parser.add_argument("--no-bind", action="store_true", help="do not test-bind the listen addresses")


def run(args: argparse.Namespace) -> int:
    issues = check(args.config, service=args.service, pidfile=args.pidfile, bind=not args.no_bind)
    for issue in issues:
        print(issue)
    errors = sum(1 for i in issues if i.severity is Severity.ERROR)
    warnings = len(issues) - errors
    if errors:
        print(f"{args.config}: {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}")
        return 1
    print(f"{args.config}: OK" + (f" ({warnings} warning{'s' * (warnings != 1)})" if warnings else ""))
    return 0


# -- the whole check -------------------------------------------------------------------------------------------


class _Report:
    def __init__(self, path: str) -> None:
        self.path = path
        self.issues: list[Issue] = []

    def add(self, table: str, key: str, problem: str, severity: Severity = Severity.ERROR) -> None:
        self.issues.append(Issue(severity, f"{self.path}: [{table}] {key}: {problem}"))

    def error(self, exc: ConfigError) -> None:
        self.issues.append(Issue(Severity.ERROR, str(exc)))


def check(path: str, *, service: str = "all", pidfile: str | None = None, bind: bool = True) -> list[Issue]:
    """Every problem of the config at `path`, as `Issue`s (file, tables, userdb, certificates, addresses); [] when
    all is well. `rpturn setup` and `rpturn cert install` call this too."""
    report = _Report(path)
    document = _read(path, report)
    if document is None:
        return report.issues
    wanted = SERVICES if service == "all" else (service,)
    known = {*SERVICES, "management"}
    for name, value in document.items():
        if name in known:
            continue
        if isinstance(value, dict):
            report.add(name, "-", f"unknown table, ignored (known: {', '.join(sorted(known))})", Severity.WARNING)
        else:
            report.issues.append(Issue(Severity.WARNING, f"{path}: {name}: a key outside any table, ignored "
                                                         f"(settings go in the tables {', '.join(sorted(known))})"))
    tables: dict[str, dict[str, Any]] = {}
    for name in (*wanted, "management"):
        value = document.get(name, {})
        if not isinstance(value, dict):
            report.add(name, "-", f"must be a table, got {value!r:.60}")
            continue
        tables[name] = value

    loaded: dict[str, tuple[Any, set[str]]] = {}
    for name, table in tables.items():
        loader = _loader(name)
        if loader is not None:
            loaded[name] = _load_collecting(report, name, table, loader)
    if "relay" in tables:
        _check_userdb(report, tables["relay"])
        _check_bundle(report, "relay", tables["relay"], hostname=None, guessed=False)
    if "revproxy" in tables:
        _check_revproxy_certificate(report, tables["revproxy"], loaded.get("revproxy"))
    if bind:
        _check_binding(report, loaded, tables, document, pidfile)
    return report.issues


def _read(path: str, report: _Report) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except IsADirectoryError:
        problem = "is a directory, not a config file"
    except OSError as exc:
        problem = f"cannot read the file: {exc.strerror or exc}"
    except UnicodeDecodeError:
        problem = "not valid TOML: the file is not UTF-8 text"
    except tomllib.TOMLDecodeError as exc:
        problem = f"not valid TOML: {exc}"
    report.issues.append(Issue(Severity.ERROR, f"{path}: {problem}"))
    return None


def _loader(name: str) -> Callable[[dict[str, Any], str], Any] | None:
    if name == "relay":
        from relay.config import relay_config_from_table

        return relay_config_from_table
    if name == "revproxy":
        from revproxy.config import from_table

        return from_table
    try:
        from appliance.management_config import management_config_from_table
    except ImportError:  # an appliance without the management listener: nothing to check
        return None
    return management_config_from_table


def _load_collecting(report: _Report, name: str, table: dict[str, Any],
                     loader: Callable[[dict[str, Any], str], Any]) -> tuple[Any, set[str]]:
    """(the config loaded with every bad key set aside or None, the keys set aside)."""
    remaining = dict(table)
    reported: set[str] = set()
    for _ in range(len(table) + 2):
        try:
            return loader(remaining, report.path), reported
        except ConfigError as exc:
            if exc.key in reported:
                return None, reported
            report.error(exc)
            reported.add(exc.key)
            if exc.key not in remaining:
                return None, reported
            del remaining[exc.key]
        except Exception as exc:  # a loader bug must still be one line, never a traceback
            report.add(name, "-", f"could not be checked ({type(exc).__name__}: {exc})")
            return None, reported
    return None, reported


# -- userdb and certificates -------------------------------------------------------------------------------------


def _check_userdb(report: _Report, table: dict[str, Any]) -> None:
    userdb = table.get("userdb")
    if not isinstance(userdb, str) or not userdb:
        return  # absent, or already reported by the loader
    from relay.auth import UserDbError, iter_userdb, read_userdb_bytes

    try:
        data = read_userdb_bytes(userdb)
    except UserDbError as exc:
        report.add("relay", "userdb", str(exc))
        return
    # The parser stops at a bad line: blank it out and go on, so every bad line is listed (up to a limit).
    lines = data.splitlines()
    for found in range(MAX_USERDB_LINES + 1):
        try:
            for _ in iter_userdb(b"\n".join(lines), userdb):
                pass
            return
        except UserDbError as exc:
            if found == MAX_USERDB_LINES or exc.line is None:
                report.add("relay", "userdb", f"{userdb}: more bad lines not listed")
                return
            report.add("relay", "userdb", str(exc))
            lines[exc.line - 1] = b""


def _check_revproxy_certificate(report: _Report, table: dict[str, Any], loaded: tuple[Any, set[str]] | None) -> None:
    hostname = table.get("hostname")
    guessed = not isinstance(hostname, str) or not hostname
    if guessed:
        import socket

        hostname = socket.getfqdn()
    if table.get("certificate"):
        _check_bundle(report, "revproxy", table, hostname=hostname, guessed=guessed)
        return
    # No certificate: the proxy generates a self-signed one for `hostname` and keeps it at `self_signed`.
    report.add("revproxy", "certificate", "not set: clients get a self-signed certificate for "
                                          f"{hostname!r}, which they will not trust", Severity.WARNING)
    from revproxy.config import ProxyConfig

    config = loaded[0] if loaded else None
    self_signed = getattr(config, "self_signed", None) or table.get("self_signed", ProxyConfig.self_signed)
    if not isinstance(self_signed, str) or not self_signed:
        return
    if os.path.isdir(self_signed):
        report.add("revproxy", "self_signed", f"{self_signed}: is a directory")
    elif not os.path.exists(self_signed):
        directory = os.path.dirname(os.path.abspath(self_signed))
        while not os.path.exists(directory):
            directory = os.path.dirname(directory)
        if not os.access(directory, os.W_OK):
            report.add("revproxy", "self_signed", f"cannot create {self_signed}: {directory} is not writable "
                                                  "by this user (is it the service's user?)", Severity.WARNING)


def _check_bundle(report: _Report, table_name: str, table: dict[str, Any], hostname: str | None,
                  guessed: bool) -> None:
    path = table.get("certificate")
    if not isinstance(path, str) or not path:
        return
    inspection = certs.inspect_file(path, hostname, hostname_guessed=guessed)
    for finding in inspection.findings:
        report.add(table_name, "certificate", f"{path}: {finding.message}", finding.severity)


# -- binding -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bind:
    table: str
    key: str
    kind: str  # "udp" or "tcp"
    host: str
    port: int


def _addresses(value: Any, default_port: int | None) -> list[tuple[str, int]]:
    """A listen key's raw value ("" = off, a string or a list of strings) as (host, port)s; [] when it does not
    parse (its loader reported that already)."""
    from appliance.config import parse_hostport

    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    try:
        return [parse_hostport(v, default_port, numeric=True) for v in values if v]
    except ValueError:
        return []


def _binds(loaded: dict[str, tuple[Any, set[str]]], tables: dict[str, dict[str, Any]]) -> list[_Bind]:
    """Every socket the services would listen on: from the loaded config, or — when a table did not load at all
    (a required key missing) — from its listen keys as written, with the service's defaults."""
    out: list[_Bind] = []
    for table, key, kinds, default_port in _LISTEN_KEYS:
        if table not in tables:
            continue
        config, bad = loaded.get(table, (None, set()))
        if key in bad:
            continue
        if config is not None:
            value = getattr(config, key, None)
            if value is None:
                continue
            if hasattr(value, "host"):  # the proxy's Listen
                found = [(value.host, value.port)]
            elif value and isinstance(value[0], str):  # the management listener: one (host, port)
                found = [value]
            else:  # the relay's tuple of (host, port)
                found = list(value)
        elif key in tables[table]:
            found = _addresses(tables[table][key], default_port)
        else:
            found = _addresses(_DEFAULTS.get((table, key), ""), default_port)
        out += [_Bind(table, key, kind, host, port) for host, port in found for kind in kinds]
    return out


# (table, key, socket kinds, default port of a bare address)
_LISTEN_KEYS = (
    ("relay", "listen", ("udp", "tcp"), 3478),
    ("relay", "tls_listen", ("tcp",), 5349),
    ("revproxy", "https", ("tcp",), None),
    ("revproxy", "http", ("tcp",), None),
    ("management", "listen", ("tcp",), None),
)
# Used only when a table did not load; the loaded config carries the real defaults.
_DEFAULTS = {("relay", "listen"): ["0.0.0.0:3478"], ("revproxy", "https"): "0.0.0.0:443",
             ("revproxy", "http"): "0.0.0.0:80", ("management", "listen"): "127.0.0.1:9641"}


def _check_binding(report: _Report, loaded: dict[str, tuple[Any, set[str]]], tables: dict[str, dict[str, Any]],
                   document: dict[str, Any], pidfile: str | None) -> None:
    relay, relay_bad = loaded.get("relay", (None, set()))
    relay_ip = getattr(relay, "relay_ip", None)
    if relay_ip and "relay_ip" not in relay_bad:
        try:
            bind_udp(relay_ip, 0).close()
        except OSError as exc:
            why = "it is not an address of this host" if exc.errno == errno.EADDRNOTAVAIL else exc.strerror
            report.add("relay", "relay_ip", f"cannot bind {relay_ip}: {why}")
    appliance: _Appliance | None = None
    for b in _binds(loaded, tables):
        where = f"{format_hostport(b.host, b.port)} ({b.kind.upper()})"
        try:
            (bind_udp if b.kind == "udp" else bind_tcp)(b.host, b.port).close()
            continue
        except OSError as exc:
            failure = exc
        if failure.errno == errno.EADDRINUSE:
            if appliance is None:
                appliance = _Appliance.find(pidfile, document)
            owner = appliance.owns(b.kind, b.port)
            if owner is True:
                report.add(b.table, b.key, f"{where} is in use by the running rpturn ({appliance.who()}): fine for a "
                           "reload, a restart frees it first", Severity.WARNING)
            elif owner is None and appliance.running:
                report.add(b.table, b.key, f"{where} is in use (is rpturn running? {appliance.who()}; this user "
                           "cannot see which process holds it)", Severity.WARNING)
            else:
                report.add(b.table, b.key, f"{where} is already in use by another process")
        elif failure.errno == errno.EADDRNOTAVAIL:
            report.add(b.table, b.key, f"cannot listen on {where}: not an address of this host")
        elif failure.errno == errno.EACCES:
            report.add(b.table, b.key, f"cannot test {where} as this user: ports below 1024 need root or "
                                       "CAP_NET_BIND_SERVICE (the systemd units grant it)", Severity.WARNING)
        else:
            report.add(b.table, b.key, f"cannot listen on {where}: {failure.strerror or failure}")


class _Appliance:
    """The running appliance, if any, and which listening sockets its process tree holds (from /proc)."""

    def __init__(self, state: running.Running, inodes: set[int] | None) -> None:
        self.running = state
        self.inodes = inodes  # None: could not look (no pid, or another user's process)

    @classmethod
    def find(cls, pidfile: str | None, document: dict[str, Any]) -> _Appliance:
        management = document.get("management", {})
        listen = management.get("listen") if isinstance(management, dict) else None
        state = running.detect(pidfile or running.default_pidfile(), listen if isinstance(listen, str) else None)
        return cls(state, _socket_inodes(_process_tree(state.pid)) if state.pid else None)

    def who(self) -> str:
        return f"pid {self.running.pid}" if self.running.pid else self.running.describe()

    def owns(self, kind: str, port: int) -> bool | None:
        """True: the running rpturn holds `port`; False: someone else does; None: cannot tell."""
        if not self.running:
            return False
        if self.inodes is None:
            return None
        return bool(_port_inodes(kind, port) & self.inodes)


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the supervisor's workers hold the listening sockets too)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def _socket_inodes(pids: list[int]) -> set[int] | None:
    inodes: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except PermissionError:
            return None
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _port_inodes(kind: str, port: int) -> set[int]:
    """Inodes of the sockets bound to local `port` (TCP: listening ones) per /proc/net/{tcp,tcp6,udp,udp6}."""
    inodes: set[int] = set()
    for table in (kind, f"{kind}6"):
        try:
            with open(f"/proc/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or int(fields[1].rsplit(":", 1)[1], 16) != port:
                continue
            if kind == "tcp" and fields[3] != "0A":  # 0A: LISTEN
                continue
            inodes.add(int(fields[9]))
    return inodes
