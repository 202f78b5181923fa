"""The relay's flood bounds (README, security): declared once, for the `[relay]` table and the TURN core alike.

`relay.config.RelayConfig` (the file's keys, each range-checked there) and `relay.allocation.TurnSettings` (what the
core is told) both extend `FloodLimits`, so a bound is named and defaulted in one place and reaches the core under
its key without an edit anywhere else (`relay.service.SETTINGS_FROM_CONFIG`). The defaults are whole numbers, as
TOML gives them; the core takes seconds and rates as numbers of either kind.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FloodLimits:
    # TCP control connections holding no allocation (relay.control_connections): per source IP, in all (also at
    # most a quarter of the open-files limit), seconds each may stay open, bytes each may buffer.
    tcp_unallocated_per_ip: int = 64
    tcp_unallocated_max: int = 10_000
    tcp_unallocated_lifetime: float = 60
    tcp_unallocated_buffer: int = 4096
    # Retransmission cache (relay.transactions): entries per user, bytes in all.
    transactions_per_user: int = 5_000
    transaction_cache_bytes: int = 16 * 1024 * 1024
    # Requests from clients without an allocation, per source IP not yet authenticated lately (relay.source_limit):
    # a second (0 = no limit) and their burst; the budget: such requests a second in all, from a bucket of
    # source_limit.BUDGET_SECONDS of it, the first half open to every source, the rest only to quiet ones, each
    # held to half its rate (0 = no budget; needs the per-source limit).
    unauthenticated_rate: float = 10
    unauthenticated_burst: float = 40
    unauthenticated_budget: float = 500
