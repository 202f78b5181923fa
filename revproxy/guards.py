"""The request guards at the proxy's decision point (`ProxyContext.guards`), and what they watch of the answers
(`ProxyContext.finished`): the PIN guard's Twisted side. Its rules live in `revproxy.pin_guard` (pure).

The guard reads the settings from the context's current config on every guarded request, so a reload (SIGHUP)
switches it on or off or changes its limits without losing the counts. Bans are logged (rate-limited: an attacker
with many addresses can cause many) and counted (failure, ban, blocked) into the proxy's snapshot as `pin_guard`,
which the management listener exports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from appliance.ratelimit import LogLimiter
from revproxy.http1 import HTTPError
from revproxy.pin_guard import PinGuard, PinGuardSettings, Verdict, is_guarded

if TYPE_CHECKING:
    from revproxy.context import ProxyContext
    from revproxy.exchange import Exchange

log = Logger(namespace="revproxy")
TOO_MANY = "too many failed attempts from this address; try again later"


class PinGuardHook:
    """Answers 429 to a banned address's token requests; counts the 403s the nodes give them."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.core = PinGuard(ctx.config.pin_guard, ctx.reactor.seconds)
        self.limiter = LogLimiter(rate=1.0, burst=20.0)
        self.events: dict[str, int] = {}  # failure, ban, blocked: exported through the proxy's snapshot

    def settings(self) -> PinGuardSettings | None:
        current = self.ctx.config.pin_guard
        if not current.enabled:
            return None
        if current is not self.core.settings:
            self.core.configure(current)
        return current

    def __call__(self, ex: Exchange) -> HTTPError | None:
        """The guard: BLOCK -> 429 without reaching a node."""
        if not self.ctx.config.pin_guard.enabled:  # off (the default): no call per request
            return None
        if self.settings() is None or not is_guarded(ex.head.method, ex.head.target):
            return None
        if self.core.verdict(ex.client_ip) is Verdict.BLOCK:
            self._count("blocked")
            return HTTPError(429, TOO_MANY)
        return None

    def finished(self, ex: Exchange) -> None:
        """Every finished exchange passes here; only a 403 to a guarded request is looked at further."""
        if ex.status == 403 and self.settings() is not None and is_guarded(ex.head.method, ex.head.target):
            self.failure(ex.client_ip)

    def banned(self, client_ip: str) -> bool:
        """For other guards (LDAP): is this address banned right now? (False while the guard is off.)"""
        if self.settings() is None or self.core.verdict(client_ip) is not Verdict.BLOCK:
            return False
        self._count("blocked")
        return True

    def failure_if_enabled(self, client_ip: str) -> None:
        """A failed attempt seen by another guard (a wrong LDAP password) counts when the PIN guard is on."""
        if self.settings() is not None:
            self.failure(client_ip)

    def failure(self, client_ip: str) -> None:
        """One failed attempt from `client_ip` (a wrong PIN, or a failed LDAP bind)."""
        self._count("failure")
        if self.core.record_failure(client_ip):
            self._count("ban")
            settings = self.core.settings
            suppressed = self.limiter.allow(self.ctx.reactor.seconds())
            if suppressed is not None:
                log.warn("pin guard: {client} banned for {ban:g} s after {failures} failed attempts within "
                         "{window:g} s{more}", client=client_ip, ban=settings.ban, failures=settings.max_failures,
                         window=settings.window, event="pin_guard_ban",
                         more=f" ({suppressed} more bans not logged)" if suppressed else "")

    def _count(self, name: str) -> None:
        self.events[name] = self.events.get(name, 0) + 1


def install(ctx: ProxyContext) -> PinGuardHook:
    """Put the PIN guard first among the context's guards (a banned address is answered before anything else)."""
    hook = PinGuardHook(ctx)
    ctx.guards.insert(0, hook)
    ctx.finished.append(hook.finished)
    ctx.pin_guard = hook
    return hook
