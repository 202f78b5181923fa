"""The `[revproxy]` table of the appliance's TOML file -> a frozen `ProxyConfig`.

Every bad value is one `appliance.config.ConfigError` naming the file, the key and what is wrong; nothing here
touches the network (node names are resolved by the service, once per load). Addresses and `workers` use the
appliance's shared parsers.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from appliance import config as shared
from appliance.config import ConfigError, format_hostport, parse_hostport
from revproxy import acme as acme_settings
from revproxy import ldap_auth
from revproxy.pin_guard import PinGuardSettings, settings_from_table

TABLE = "revproxy"
MiB = 1024 * 1024


def error(path: str, key: str, problem: str) -> ConfigError:
    """A ConfigError in the `[revproxy]` table."""
    return ConfigError(path, TABLE, key, problem)


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


@dataclass(frozen=True)
class NodeSpec:
    """A Conferencing Node as configured: `host` may be a DNS name (resolved once per load, used for SNI)."""

    host: str
    port: int
    weight: int = 1

    @property
    def name(self) -> str:
        return format_hostport(self.host, self.port)


@dataclass(frozen=True)
class ProxyConfig:
    path: str = "<defaults>"
    https: Listen | None = Listen("0.0.0.0", 443)
    http: Listen | None = Listen("0.0.0.0", 80)
    certificate: str = ""
    hostname: str = field(default_factory=socket.getfqdn)
    self_signed: str = "var/revproxy-selfsigned.pem"
    nodes: tuple[NodeSpec, ...] = ()
    balance: str = "round_robin"
    verify_nodes: bool = False
    ca_file: str = ""
    connect_timeout: float = 3.0
    api_connect_timeout: float = 20.0
    fail_timeout: float = 10.0
    health_check: str = ""
    health_interval: float = 5.0
    max_body_size: int = 15 * MiB
    client_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    upstream_read_timeout: float = 60.0
    upstream_keepalive: int = 256
    tls_handshake_timeout: float = 10.0  # a client's TLS handshake must finish within this
    max_connections_per_ip: int = 1000  # client connections from one address (0 = no limit); NATed offices share one
    max_connections: int = 0  # client connections in all (0 = from the open-files limit); idle ones go first
    drain_timeout: float = 30.0
    webapp_dir: str = ""
    webapp_path: str = "/webapp/"
    access_log: bool | str = True  # true: twistd's log; a path: a file of its own (buffered); false: off
    turn_on_https: bool = False  # the HTTPS port also carries TURN, told apart by its first bytes (revproxy.demux)
    workers: int = 1
    pin_guard: PinGuardSettings = field(default_factory=PinGuardSettings)  # [revproxy.pin_guard]
    acme: acme_settings.AcmeSettings | None = None  # automatic certificates, see revproxy/acme.py
    ldap: ldap_auth.LdapSettings | None = None  # [revproxy.ldap], see revproxy/ldap_auth.py


BALANCES = ("round_robin", "client_ip")
_FLOATS = ("connect_timeout", "api_connect_timeout", "fail_timeout", "health_interval", "client_timeout",
           "keepalive_timeout", "upstream_read_timeout", "drain_timeout", "tls_handshake_timeout")
_STRINGS = ("certificate", "hostname", "self_signed", "ca_file", "health_check", "webapp_dir", "webapp_path")
_KNOWN = {f for f in ProxyConfig.__dataclass_fields__ if f != "path"} | {"weights"}


def _listen(path: str, key: str, value: Any) -> Listen | None:
    if value in ("", False):
        return None
    if not isinstance(value, str):
        raise error(path, key, f"expected \"address:port\" or \"\" (off), got {value!r}")
    try:
        host, port = parse_hostport(value, numeric=True)
    except ValueError as e:
        raise error(path, key, f"expected \"address:port\" with a numeric address: {e}") from None
    return Listen(host, port)


def from_table(table: dict[str, Any], path: str = "<config>") -> ProxyConfig:
    """Validate one `[revproxy]` table (already merged with option overrides)."""
    unknown = sorted(set(table) - _KNOWN)
    if unknown:
        raise error(path, unknown[0], f"unknown key (known: {', '.join(sorted(_KNOWN))})")
    values: dict[str, Any] = {"path": path}
    for key in ("https", "http"):
        if key in table:
            values[key] = _listen(path, key, table[key])
    for key in _STRINGS:
        if key in table:
            if not isinstance(table[key], str):
                raise error(path, key, f"expected a string, got {table[key]!r}")
            values[key] = table[key]
    for key in _FLOATS:
        if key in table:
            v = table[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                raise error(path, key, f"expected a positive number of seconds, got {v!r}")
            values[key] = float(v)
    for key in ("max_body_size", "upstream_keepalive", "max_connections_per_ip", "max_connections"):
        if key in table:
            v = table[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise error(path, key, f"expected a whole number >= 0, got {v!r}")
            values[key] = v
    for key in ("verify_nodes", "turn_on_https"):
        if key in table:
            if not isinstance(table[key], bool):
                raise error(path, key, f"expected true or false, got {table[key]!r}")
            values[key] = table[key]
    if "access_log" in table:
        v = table["access_log"]
        if not isinstance(v, bool) and not (isinstance(v, str) and v):
            raise error(path, "access_log", f"expected true or false or a file path, got {v!r}")
        values["access_log"] = v
    if "balance" in table:
        if table["balance"] not in BALANCES:
            raise error(path, "balance", f"expected one of {', '.join(BALANCES)}, got {table['balance']!r}")
        values["balance"] = table["balance"]
    if "workers" in table:
        values["workers"] = shared.checked(path, TABLE, "workers", shared.parse_workers, table["workers"])
    values["nodes"] = _nodes(path, table.get("nodes", []), table.get("weights", {}))
    wp = values.get("webapp_path", "/webapp/")
    if not (wp.startswith("/") and wp.endswith("/")):
        raise error(path, "webapp_path", f"must start and end with '/', got {wp!r}")
    hc = values.get("health_check", "")
    if hc and not hc.startswith("/"):
        raise error(path, "health_check", f"must be a path starting with '/', got {hc!r}")
    wd = values.get("webapp_dir", "")
    if wd and not os.path.isdir(wd):
        raise error(path, "webapp_dir", f"{wd!r} is not a directory")
    ca = values.get("ca_file", "")
    if ca and not os.path.isfile(ca):
        raise error(path, "ca_file", f"{ca!r} does not exist")
    if values.get("https", ProxyConfig.https) is None:
        raise error(path, "https", "the HTTPS listener cannot be turned off")
    if "pin_guard" in table:
        if not isinstance(table["pin_guard"], dict):
            raise error(path, "pin_guard", "must be a table: [revproxy.pin_guard] with enabled, max_failures, ...")
        try:
            values["pin_guard"] = settings_from_table(table["pin_guard"])
        except ValueError as e:
            key, _, problem = str(e).partition(": ")
            raise ConfigError(path, f"{TABLE}.pin_guard", key, problem) from None
    if "acme" in table:
        try:
            values["acme"] = acme_settings.settings_from_table(table["acme"])
        except ValueError as e:
            key, _, problem = str(e).partition(": ")
            raise error(path, "acme" if key == "-" else f"acme.{key}", problem) from None
        if values.get("http", ProxyConfig.http) is None:
            raise error(path, "acme", "HTTP-01 needs the port-80 listener: set http (it answers the challenges)")
    if "ldap" in table:
        try:
            values["ldap"] = ldap_auth.settings_from_table(table["ldap"])
        except ValueError as e:
            key, _, problem = str(e).partition(": ")
            raise ConfigError(path, f"{TABLE}.ldap", key, problem) from None
    return ProxyConfig(**values)


def _nodes(path: str, nodes: Any, weights: Any) -> tuple[NodeSpec, ...]:
    if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) for n in nodes):
        raise error(path, "nodes", f"expected a non-empty list of \"address:port\" strings, got {nodes!r}")
    if not isinstance(weights, dict):
        raise error(path, "weights", f"expected a table of \"address:port\" = weight, got {weights!r}")
    out: list[NodeSpec] = []
    for text in nodes:
        try:
            host, port = parse_hostport(text, default_port=443)
        except ValueError as e:
            raise error(path, "nodes", str(e)) from None
        spec = NodeSpec(host, port)
        if any(n.name == spec.name for n in out):
            raise error(path, "nodes", f"{text!r} is listed twice")
        out.append(spec)
    by_name = {n.name: n for n in out}
    for name, weight in weights.items():
        if name not in by_name:
            raise error(path, "weights", f"{name!r} is not one of the nodes")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
            raise error(path, "weights", f"{name}: expected a weight 1-1000, got {weight!r}")
        by_name[name] = NodeSpec(by_name[name].host, by_name[name].port, weight)
    return tuple(by_name[n.name] for n in out)


def load(path: str, overrides: dict[str, Any] | None = None) -> ProxyConfig:
    """Read `path`'s `[revproxy]` table, apply `overrides` (command-line options win), validate."""
    merged = dict(shared.load_table(path, TABLE, required=True))
    merged.update(overrides or {})
    return from_table(merged, path)
