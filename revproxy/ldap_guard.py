"""The LDAP authentication guard's Twisted side: one LDAP connection per check (ldaptor), bind as the user, the group
test, the answer. Rules, settings and the success cache are in `revproxy.ldap_auth` (pure).

It runs after the PIN guard at the proxy's decision point and answers with a Deferred, so the exchange waits without
blocking the reactor. Failures of the directory are logged rate-limited (anyone can cause them) and answered 503.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, protocol, ssl
from twisted.logger import Logger

from appliance.ratelimit import LogLimiter
from revproxy.http1 import HTTPError
from revproxy.ldap_auth import LdapSettings, SuccessCache, basic_credentials, escape_dn, escape_filter, protected

if TYPE_CHECKING:
    from revproxy.context import ProxyContext
    from revproxy.exchange import Exchange

log = Logger(namespace="revproxy")


class Outcome(enum.Enum):
    OK = "ok"
    BAD_CREDENTIALS = "bad-credentials"
    NOT_IN_GROUP = "not-in-group"


def _trust(settings: LdapSettings) -> Any:
    if not settings.ca_file:
        return None  # the platform's trust store
    with open(settings.ca_file, "rb") as f:
        return ssl.Certificate.loadPEM(f.read())


@defer.inlineCallbacks
def authenticate(reactor: Any, settings: LdapSettings, user: str, password: str) -> Any:
    """Outcome of binding as `user` (found by template or search) and testing the group; errors propagate."""
    from ldaptor.protocols import pureldap
    from ldaptor.protocols.ldap import ldapclient, ldaperrors, ldapsyntax

    tls, host, port = settings.endpoint
    creator = protocol.ClientCreator(reactor, ldapclient.LDAPClient)
    options = ssl.optionsForClientTLS(host, trustRoot=_trust(settings)) if (tls or settings.starttls) else None
    if tls:
        client = yield creator.connectSSL(host, port, options, timeout=settings.timeout)
    else:
        client = yield creator.connectTCP(host, port, timeout=settings.timeout)
    try:
        if settings.starttls:
            yield client.startTLS(options)
        if settings.user_dn_template:
            dn = settings.user_dn_template.format(user=escape_dn(user))
        else:
            if settings.bind_dn:
                yield client.bind(settings.bind_dn, settings.service_password())
            base = ldapsyntax.LDAPEntry(client, settings.search_base)
            found = yield base.search(filterText=settings.search_filter.format(user=escape_filter(user)),
                                      attributes=["1.1"], sizeLimit=2)
            if len(found) != 1:
                return Outcome.BAD_CREDENTIALS
            dn = str(found[0].dn)
        try:
            yield client.bind(dn, password)
        except (ldaperrors.LDAPInvalidCredentials, ldaperrors.LDAPInvalidDNSyntax, ldaperrors.LDAPNoSuchObject):
            return Outcome.BAD_CREDENTIALS
        if settings.group:
            group = ldapsyntax.LDAPEntry(client, settings.group)
            who = escape_filter(dn)
            members = yield group.search(
                filterText=f"(|(member={who})(uniqueMember={who})(memberUid={escape_filter(user)}))",
                scope=pureldap.LDAP_SCOPE_baseObject, attributes=["1.1"])
            if not members:
                return Outcome.NOT_IN_GROUP
        return Outcome.OK
    finally:
        client.transport.loseConnection()


class LdapGuard:
    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.cache = SuccessCache(ctx.reactor.seconds)
        self.seen: LdapSettings | None = None
        self.limiter = LogLimiter(rate=1.0, burst=20.0)
        self.events: dict[str, int] = {}

    def challenge(self, settings: LdapSettings, detail: str = "authentication required") -> HTTPError:
        realm = settings.realm.replace("\\", "\\\\").replace('"', '\\"')
        return HTTPError(401, detail, extra=f'WWW-Authenticate: Basic realm="{realm}", charset="UTF-8"\r\n'.encode())

    def __call__(self, ex: Exchange) -> HTTPError | defer.Deferred | None:
        settings = self.ctx.config.ldap
        if settings is None or not protected(settings, ex.head.target):
            return None
        if settings is not self.seen:  # a reload may have changed the directory or the group: forget successes
            self.cache.clear()
            self.seen = settings
        credentials = basic_credentials(ex.head.get(b"authorization"))
        if credentials is None:
            return self.challenge(settings)
        user, password = credentials
        if self.cache.hit(user, password):
            return None
        pin_guard = self.ctx.pin_guard
        if pin_guard is not None and pin_guard.banned(ex.client_ip):
            return HTTPError(429, "too many failed attempts from this address; try again later")
        d = authenticate(self.ctx.reactor, settings, user, password)
        d.addTimeout(settings.timeout, self.ctx.reactor)
        d.addCallbacks(self._outcome, self._unavailable, callbackArgs=(settings, ex.client_ip, user, password),
                       errbackArgs=(settings, ex.client_ip))
        return d

    def _outcome(self, outcome: Outcome, settings: LdapSettings, client_ip: str, user: str,
                 password: str) -> HTTPError | None:
        self.events[outcome.value] = self.events.get(outcome.value, 0) + 1
        if outcome is Outcome.OK:
            self.cache.add(user, password, settings.cache_ttl)
            return None
        self._log("ldap: {client} user {user!r}: {outcome}", client=client_ip, user=user, outcome=outcome.value)
        if outcome is Outcome.NOT_IN_GROUP:
            return HTTPError(403, "not a member of the required group")
        if self.ctx.pin_guard is not None:
            self.ctx.pin_guard.failure_if_enabled(client_ip)
        return self.challenge(settings, "wrong user name or password")

    def _unavailable(self, failure: Any, settings: LdapSettings, client_ip: str) -> HTTPError:
        self.events["unavailable"] = self.events.get("unavailable", 0) + 1
        self._log("ldap: {url} unavailable, answering 503 to {client}: {error}", url=settings.url,
                  client=client_ip, error=f"{failure.type.__name__}: {failure.getErrorMessage()}")
        return HTTPError(503, "authentication service unavailable")

    def _log(self, fmt: str, **fields: Any) -> None:
        suppressed = self.limiter.allow(self.ctx.reactor.seconds())
        if suppressed is not None:
            log.warn(fmt + ("" if not suppressed else f" ({suppressed} similar lines not logged)"), **fields)


def install(ctx: ProxyContext) -> LdapGuard:
    """After the PIN guard: a banned address is answered before any LDAP traffic."""
    guard = LdapGuard(ctx)
    ctx.guards.append(guard)
    ctx.ldap = guard
    return guard
