"""The relay's configuration: the `[relay]` table of the appliance's TOML file -> a frozen `RelayConfig`.

Every problem is one `appliance.config.ConfigError` naming the file, the key and what is wrong, so an operator
fixes it in one go. Unknown keys are errors too: a misspelt key silently ignored is a security setting silently not
applied. Addresses and `workers` use the appliance's shared parsers.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.config import ConfigError, load_table, parse_hostport, parse_workers
from relay.flood_limits import FloodLimits

TABLE = "relay"


@dataclass(frozen=True)
class RelayConfig(FloodLimits):
    """The `[relay]` table; its flood bounds are `FloodLimits`'s keys, which the TURN core takes as they are."""

    listen: tuple[tuple[str, int], ...] = (("0.0.0.0", 3478),)
    realm: str = "example.com"
    min_port: int = 49152
    max_port: int = 65535
    allowed_peers: tuple[str, ...] = ()
    denied_peers: tuple[str, ...] = ()
    external_ip: str | None = None
    relay_ip: str | None = None
    userdb: str | None = None
    users: Mapping[str, str] = field(default_factory=dict)
    user_quota: int = 0
    total_quota: int = 0
    workers: int = 1
    software: str = "rpturn"
    default_lifetime: int = 600
    max_lifetime: int = 3600
    nonce_lifetime: int = 600
    nonce_secret: str | None = None
    tls_listen: tuple[tuple[str, int], ...] = ()  # TURN over TLS listeners (turns:)
    certificate: str | None = None  # bundle for tls_listen; under `twistd rpturn` the proxy's by default
    auth_secrets: tuple[str, ...] = ()  # TURN REST API shared secrets (relay.restauth)
    auth_secrets_file: str | None = None  # the same, one a line, 0600 or root-owned 0640, re-read on SIGHUP
    turn: bool = True  # false: a STUN-only server, no source may use TURN (relay.restricted)
    turn_clients: tuple[str, ...] = ()  # restricted mode: only these sources may use TURN (relay.restricted)
    # The flood bounds (tcp_unallocated_*, transactions_per_user, ...) come from FloodLimits.
    # Where this config came from, for reloads and messages; not a TOML key.
    source: str | None = None


_KEYS = {f.name for f in dataclasses.fields(RelayConfig)} - {"source"}


def _check_ip(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be an IP address string")
    return str(ipaddress.ip_address(value))


def _check_cidrs(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list of CIDR strings, e.g. ["127.0.0.0/8"]')
    # strict: "10.1.2.3/8" is a typo for an address or a network, not something to guess at.
    return tuple(str(ipaddress.ip_network(v, strict=True)) for v in value)


def _check_int(low: int, high: int):
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}, got {value!r}")
        return value

    return check


def _check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _check_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _check_listen(value: Any) -> tuple[tuple[str, int], ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError('must be a list of "address:port" strings, e.g. ["0.0.0.0:3478"]')
    return tuple(parse_hostport(v, default_port=3478, numeric=True) for v in value)


def _check_users(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("must be a table of user = \"password\"")
    for user, password in value.items():
        if not isinstance(password, str) or not password:
            raise ValueError(f"user {user!r}: the password must be a non-empty string")
    return dict(value)


def _check_secret(value: Any) -> str:
    if not isinstance(value, str) or len(value) < 32:
        raise ValueError("must be at least 32 hex digits (16 bytes), shared by every worker")
    try:
        bytes.fromhex(value)
    except ValueError:
        raise ValueError("must be hex digits") from None
    return value


def _check_tls_listen(value: Any) -> tuple[tuple[str, int], ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError('must be a list of "address:port" strings, e.g. ["0.0.0.0:5349"]')
    return tuple(parse_hostport(v, default_port=5349, numeric=True) for v in value)


def _check_auth_secrets(value: Any) -> tuple[str, ...]:
    from relay.restauth import MIN_SECRET_CHARS

    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('must be a list of secret strings, e.g. ["4f1c..."]')
    if any(len(v) < MIN_SECRET_CHARS for v in value):
        raise ValueError(f"a secret must be at least {MIN_SECRET_CHARS} characters")
    return tuple(value)


_CHECKS = {
    "listen": _check_listen,
    "realm": _check_str,
    "min_port": _check_int(1, 65535),
    "max_port": _check_int(1, 65535),
    "allowed_peers": _check_cidrs,
    "denied_peers": _check_cidrs,
    "external_ip": _check_ip,
    "relay_ip": _check_ip,
    "userdb": _check_str,
    "users": _check_users,
    "user_quota": _check_int(0, 10_000_000),
    "total_quota": _check_int(0, 10_000_000),
    "workers": parse_workers,
    "software": _check_str,
    "default_lifetime": _check_int(30, 86400),
    "max_lifetime": _check_int(30, 86400),
    "nonce_lifetime": _check_int(10, 86400),
    "nonce_secret": _check_secret,
    "tls_listen": _check_tls_listen,
    "certificate": _check_str,
    "auth_secrets": _check_auth_secrets,
    "auth_secrets_file": _check_str,
    "turn": _check_bool,
    "turn_clients": _check_cidrs,
    "tcp_unallocated_per_ip": _check_int(1, 1_000_000),
    "tcp_unallocated_max": _check_int(1, 10_000_000),
    "tcp_unallocated_lifetime": _check_int(5, 86400),
    "tcp_unallocated_buffer": _check_int(548, 65544),
    "transactions_per_user": _check_int(1, 10_000_000),
    "transaction_cache_bytes": _check_int(65536, 1 << 34),
    "unauthenticated_rate": _check_int(0, 10_000_000),
    "unauthenticated_burst": _check_int(1, 10_000_000),
    "unauthenticated_budget": _check_int(0, 10_000_000),
}
assert set(_CHECKS) == _KEYS


def relay_config_from_table(table: Mapping[str, Any], source: str = "<config>") -> RelayConfig:
    """Validate a `[relay]` table (already parsed TOML, or command-line overrides merged into it)."""
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key not in _CHECKS:
            raise ConfigError(source, TABLE, key, f"unknown key (known: {', '.join(sorted(_KEYS))})")
        try:
            values[key] = _CHECKS[key](raw)
        except ValueError as exc:
            raise ConfigError(source, TABLE, key, str(exc)) from None
    config = RelayConfig(**values, source=source)
    if config.min_port > config.max_port:
        raise ConfigError(source, TABLE, "min_port", f"{config.min_port} is above max_port {config.max_port}")
    if config.default_lifetime > config.max_lifetime:
        raise ConfigError(source, TABLE, "default_lifetime", f"above max_lifetime {config.max_lifetime}")
    if table.get("unauthenticated_budget") and not config.unauthenticated_rate:
        raise ConfigError(source, TABLE, "unauthenticated_budget",
                          "needs unauthenticated_rate above 0 (the budget sheds by the per-source buckets)")
    if not config.turn and config.turn_clients:
        raise ConfigError(source, TABLE, "turn_clients", "set while turn = false (nobody may use TURN): remove one")
    if (config.turn and config.userdb is None and not config.users and not config.auth_secrets
            and not config.auth_secrets_file):
        raise ConfigError(source, TABLE, "users",
                          "no credentials: set [relay.users], userdb, auth_secrets or auth_secrets_file")
    if config.auth_secrets_file:
        from relay.restauth import SecretsFileError, read_secrets_file

        try:
            read_secrets_file(config.auth_secrets_file)
        except SecretsFileError as exc:
            raise ConfigError(source, TABLE, "auth_secrets_file", str(exc)) from None
    return config


def load_relay_config(path: str, overrides: Mapping[str, Any] | None = None) -> RelayConfig:
    """Read the `[relay]` table of `path`, apply command-line overrides, validate."""
    merged = {**load_table(path, TABLE), **(overrides or {})}
    return relay_config_from_table(merged, source=path)
