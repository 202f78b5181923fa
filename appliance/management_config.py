"""The `[management]` table: where the status and metrics listener listens and who may connect.

```toml
[management]
listen = "127.0.0.1:9641"        # GET /metrics, /status, / ; "" turns the listener off (coturn's Prometheus port)
allow = ["127.0.0.1/32", "10.40.0.0/24"]   # who may connect (CIDRs or addresses); default: loopback only
```
Only loopback may connect unless `allow` says otherwise: when it is set, exactly its networks may connect (keep a
loopback entry in it, or `rpturn status` on the appliance itself is refused too). Others get 403.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from appliance.config import ConfigError, checked, load_table, parse_hostport

TABLE = "management"
DEFAULT_LISTEN = "127.0.0.1:9641"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ManagementConfig:
    listen: tuple[str, int] | None = ("127.0.0.1", 9641)  # None: off
    allow: tuple[Network, ...] = LOOPBACK
    source: str = ""

    def allows(self, host: str) -> bool:
        """May a client at `host` connect: is it in one of `allow`'s networks (loopback by default)?"""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d
        return any(address in net for net in self.allow if net.version == address.version)


def _listen(value: Any) -> tuple[str, int] | None:
    if not isinstance(value, str):
        raise ValueError(f"expected \"address:port\" or \"\" (off), got {value!r}")
    if not value.strip():
        return None
    return parse_hostport(value, numeric=True)


def _allow(value: Any) -> tuple[Network, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of CIDRs, got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"expected a CIDR string, got {item!r}")
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or CIDR") from None
    return tuple(out)


def management_config_from_table(table: dict[str, Any], source: str = "") -> ManagementConfig:
    for key in table:
        if key not in ("listen", "allow"):
            raise ConfigError(source, TABLE, key, "unknown key (known: listen, allow)")
    return ManagementConfig(
        listen=checked(source, TABLE, "listen", _listen, table.get("listen", DEFAULT_LISTEN)),
        allow=checked(source, TABLE, "allow", _allow, table["allow"]) if "allow" in table else LOOPBACK,
        source=source,
    )


def load_management_config(path: str) -> ManagementConfig:
    """The `[management]` table of the file (defaults when the table is absent); ConfigError when bad."""
    return management_config_from_table(load_table(path, TABLE), source=path)
