"""`twistd relay`: command-line options -> RelayConfig -> service. Options override the config file.

A bad option is twistd's usage error; a bad config (or a port in use, a `relay_ip` not on this host, an unreadable
userdb) is one line `FILE: [relay] key: problem` and exit status 1, from makeService (`appliance.startup`).
"""

from __future__ import annotations

from twisted.python import usage

from appliance.tap import ConfigOptions
from relay.config import load_relay_config


class Options(ConfigOptions):
    longdesc = "STUN/TURN relay. Settings come from the [relay] table of --config; options override them."
    optParameters = [
        ["realm", None, None, "long-term credential realm"],
        ["min-port", None, None, "lowest relay port", int],
        ["max-port", None, None, "highest relay port", int],
        ["external-ip", None, None, "address advertised in XOR-RELAYED-ADDRESS (static NAT)"],
        ["relay-ip", None, None, "bind address of the relay sockets"],
        ["userdb", None, None, "turnadmin-style user database file"],
        ["user-quota", None, None, "allocations per user (0 = unlimited)", int],
        ["total-quota", None, None, "allocations in all (0 = unlimited)", int],
        ["workers", None, None, 'worker processes sharing the ports, or "auto"'],
    ]

    def __init__(self) -> None:
        super().__init__()
        self.repeated: dict[str, list] = {"listen": [], "allowed_peers": [], "denied_peers": [], "users": []}

    def opt_listen(self, value: str) -> None:
        """listen address:port for UDP and TCP (repeatable)"""
        self.repeated["listen"].append(value)

    def opt_allowed_peer(self, value: str) -> None:
        """CIDR exempt from the peer deny-list (repeatable)"""
        self.repeated["allowed_peers"].append(value)

    def opt_denied_peer(self, value: str) -> None:
        """CIDR denied in addition to the defaults (repeatable)"""
        self.repeated["denied_peers"].append(value)

    def opt_user(self, value: str) -> None:
        """USER:PASSWORD long-term credential (repeatable)"""
        self.repeated["users"].append(value)

    def overrides(self) -> dict:
        out: dict = {}
        for option in ("realm", "min-port", "max-port", "external-ip", "relay-ip", "userdb",
                       "user-quota", "total-quota"):
            if self[option] is not None:
                out[option.replace("-", "_")] = self[option]
        if self["workers"] is not None:
            out["workers"] = self["workers"] if self["workers"] == "auto" else _int(self["workers"], "workers")
        for key in ("listen", "allowed_peers", "denied_peers"):
            if self.repeated[key]:
                out[key] = self.repeated[key]
        if self.repeated["users"]:
            users = {}
            for entry in self.repeated["users"]:
                name, sep, password = entry.partition(":")
                if not sep:
                    raise usage.UsageError(f"--user {entry!r}: expected USER:PASSWORD")
                users[name] = password
            out["users"] = users
        return out

    def postOptions(self) -> None:
        self.config_overrides = self.overrides()


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise usage.UsageError(f"--{name}: expected a number, got {text!r}") from None


def makeService(options: Options):
    # Imported here to keep `twistd --help` light.
    from twisted.internet import reactor

    from appliance.startup import build_process, exit_on_config_error
    from relay.service import plan

    def make():
        config = load_relay_config(options["config"], options.config_overrides)
        return build_process([plan(config, options.config_overrides, reactor)], reactor)

    return exit_on_config_error(make)
