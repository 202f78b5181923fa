"""The PIN guard (pure): per client IP, count wrong PINs on the conference token request and answer 429 for a while
after too many, the way the old appliance's fail2ban jail did, but inside the proxy and with bounded memory.

A "failure" is a 403 answer to `POST /api/client/v2/conferences/<alias>/request_token` (the node's answer to a wrong
PIN), or anything else the proxy counts against an address (a failed LDAP bind). After `max_failures` within
`window` seconds the address is banned for `ban` seconds: its requests to that path get 429 without reaching a node;
other addresses and other paths are unaffected. The address is the TCP peer's: X-Forwarded-For is never trusted.

Memory: at most `max_clients` addresses are tracked with failures and at most `max_clients` bans are held; beyond
that the least recently failing address (or the ban ending first) is forgotten, so a flood of addresses costs a
bounded amount of memory and can at worst make the guard forget, never grow. Each tracked address holds at most
`max_failures` timestamps. The counts are per proxy process: with `workers = N` an address may make up to
N x max_failures attempts before every worker has banned it (the kernel spreads its connections over the workers).

Config `[revproxy.pin_guard]`: enabled (false), max_failures (10), window (300), ban (300), max_clients (100000).
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from appliance.config import subtable_items

GUARDED_PATH = re.compile(r"/api/client/v2/conferences/[^/?#]+/request_token")


@dataclass(frozen=True)
class PinGuardSettings:
    enabled: bool = False  # off by default, as the old appliance's jail; the set-up wizard suggests it
    max_failures: int = 10
    window: float = 300.0
    ban: float = 300.0
    max_clients: int = 100_000


def settings_from_table(value: Any) -> PinGuardSettings:
    """The `[revproxy.pin_guard]` table -> settings; ValueError('key: problem') for a bad one."""
    values: dict[str, Any] = {}
    for key, raw in subtable_items(value, PinGuardSettings.__dataclass_fields__,
                                   "must be a table: [revproxy.pin_guard] with enabled, max_failures, window, ban"):
        if key == "enabled":
            if not isinstance(raw, bool):
                raise ValueError(f"enabled: expected true or false, got {raw!r}")
        elif key in ("max_failures", "max_clients"):
            if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 10_000_000:
                raise ValueError(f"{key}: expected a whole number from 1 to 10000000, got {raw!r}")
        elif isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= 86400 * 7:
            raise ValueError(f"{key}: expected seconds (more than 0, at most a week), got {raw!r}")
        values[key] = float(raw) if key in ("window", "ban") else raw
    return PinGuardSettings(**values)


def is_guarded(method: str | bytes, target: str | bytes) -> bool:
    """Is this request the PIN-checked token request? (`target` as sent: path and maybe a query.)"""
    if isinstance(method, bytes):
        method = method.decode("latin-1")
    if isinstance(target, bytes):
        target = target.decode("latin-1")
    if method != "POST":
        return False
    path = target.split("?", 1)[0]
    return GUARDED_PATH.fullmatch(path) is not None


def client_key(ip: str) -> str:
    """One key per client: `::ffff:192.0.2.1` (a dual-stack listener's view) counts as 192.0.2.1."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class Verdict(Enum):
    ALLOW = "allow"
    BLOCK = "block"  # answer 429, do not forward


class PinGuard:
    """Failures per address in a sliding window, bans with an end time; `clock` is injected (seconds)."""

    def __init__(self, settings: PinGuardSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._bans: OrderedDict[str, float] = OrderedDict()  # insertion order = end order (one ban length)
        self.failures_total = 0
        self.bans_total = 0
        self.blocked_total = 0
        self.forgotten_total = 0  # addresses dropped to keep memory bounded

    def configure(self, settings: PinGuardSettings) -> None:
        """New settings on reload; current counts and bans are kept."""
        self.settings = settings

    def verdict(self, ip: str) -> Verdict:
        """For a guarded request from `ip`: BLOCK while the address is banned."""
        key = client_key(ip)
        until = self._bans.get(key)
        if until is None:
            return Verdict.ALLOW
        if self._clock() >= until:
            del self._bans[key]
            return Verdict.ALLOW
        self.blocked_total += 1
        return Verdict.BLOCK

    def record_response(self, ip: str, status: int) -> bool:
        """A guarded request's answer; a 403 is a failure. True when this answer got the address banned."""
        return self.record_failure(ip) if status == 403 else False

    def record_failure(self, ip: str) -> bool:
        key = client_key(ip)
        now = self._clock()
        self.failures_total += 1
        times = self._failures.get(key)
        if times is None:
            times = self._failures[key] = deque(maxlen=self.settings.max_failures)
            while len(self._failures) > self.settings.max_clients:
                self._failures.popitem(last=False)
                self.forgotten_total += 1
        else:
            self._failures.move_to_end(key)
        times.append(now)
        horizon = now - self.settings.window
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) < self.settings.max_failures:
            return False
        del self._failures[key]
        self._bans.pop(key, None)
        self._bans[key] = now + self.settings.ban
        self.bans_total += 1
        while len(self._bans) > self.settings.max_clients:
            self._bans.popitem(last=False)
            self.forgotten_total += 1
        return True

    def banned(self) -> int:
        """Bans currently held (expired ones are dropped here, so the figure is exact)."""
        now = self._clock()
        while self._bans and next(iter(self._bans.values())) <= now:
            self._bans.popitem(last=False)
        return len(self._bans)

    def tracked(self) -> int:
        return len(self._failures)
