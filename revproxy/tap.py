"""twistd plugin glue: `twistd revproxy --config conf/rpturn.toml [overrides]` -> the proxy service.

Options override the file's `[revproxy]` table; a bad config or certificate ends the start with one line naming
the file, the key and what is wrong (exit status 1).
"""

from __future__ import annotations

from typing import Any

from appliance.tap import ConfigOptions
from revproxy import config as configmod


class Options(ConfigOptions):
    longdesc = "HTTPS reverse proxy to the Conferencing Nodes; options override the config file's [revproxy]."
    optParameters = [
        ["https", None, None, "HTTPS listen address:port"],
        ["http", None, None, "plain-HTTP (redirect) listen address:port; \"\" turns it off"],
        ["certificate", None, None, "PEM bundle: server certificate, unencrypted key, intermediates"],
        ["hostname", None, None, "name for the generated self-signed certificate"],
        ["balance", None, None, "round_robin or client_ip"],
        ["workers", None, None, "processes sharing the ports (SO_REUSEPORT), or auto"],
        ["ca-file", None, None, "CA bundle for verify_nodes (default: the system store)"],
    ]
    optFlags = [["verify-nodes", None, "verify the nodes' TLS certificates"]]

    def __init__(self) -> None:
        super().__init__()
        self["nodes"] = []

    def opt_node(self, value: str) -> None:
        """A Conferencing Node address:port (repeatable; replaces the file's list)."""
        self["nodes"].append(value)

    def overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("https", "http", "certificate", "hostname", "balance", "ca-file"):
            if self[key] is not None:
                out[key.replace("-", "_")] = self[key]
        if self["workers"] is not None:
            w = self["workers"]
            out["workers"] = int(w) if w.isdigit() else w
        if self["verify-nodes"]:
            out["verify_nodes"] = True
        if self["nodes"]:
            out["nodes"] = list(self["nodes"])
        return out


def makeService(options: Options) -> Any:
    from twisted.internet import reactor

    from appliance.startup import build_process, exit_on_config_error
    from revproxy import service

    overrides = options.overrides()

    def make() -> Any:
        cfg = configmod.load(options["config"], overrides)
        return build_process([service.plan(cfg, overrides, reactor)], reactor)

    return exit_on_config_error(make)
