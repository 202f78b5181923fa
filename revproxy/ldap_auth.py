"""LDAP/AD authentication in front of the Conferencing Nodes (the old appliance's "LDAP on request"): HTTP Basic
credentials on the protected paths are checked by an LDAP bind with ldaptor (Twisted-native, no thread).

`[revproxy.ldap]`: `url` (ldap://host:port or ldaps://host:port), `starttls` (upgrade ldap:// first), `ca_file`
(to verify the directory's certificate; default the system store), either `user_dn_template` ("uid={user},ou=people,
dc=example,dc=com"; AD: "{user}@example.com") or a search: `bind_dn` + `bind_password` (or `bind_password_file`)
of a service account, `search_base`, `search_filter` ("(uid={user})", AD: "(sAMAccountName={user})"), then `group`
(a group DN the user must be a member of: member, uniqueMember or memberUid), `paths` (protected prefixes, default
["/api/client/v2/"]), `cache_ttl` (60 s: a success is remembered for the same user and password, bounded), `timeout`
(5 s for connect + binds + searches), `realm` (the Basic realm shown to browsers).

Answers: no or malformed credentials -> 401 with `WWW-Authenticate: Basic`; a wrong password or unknown user -> 401
and one failure for the client address in the PIN guard (so guessing is banned like PIN guessing); not in the group
-> 403; the directory unreachable, slow or answering an error -> 503, never a pass. An empty password is refused
before any bind (an LDAP bind with an empty password is an anonymous bind, which succeeds).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from appliance.config import subtable_items

DEFAULT_PATHS = ("/api/client/v2/",)
MAX_CACHED = 10_000


@dataclass(frozen=True)
class LdapSettings:
    url: str
    starttls: bool = False
    ca_file: str = ""
    user_dn_template: str = ""
    bind_dn: str = ""
    bind_password: str = ""
    bind_password_file: str = ""
    search_base: str = ""
    search_filter: str = "(uid={user})"
    group: str = ""
    paths: tuple[str, ...] = DEFAULT_PATHS
    cache_ttl: float = 60.0
    timeout: float = 5.0
    realm: str = "rpturn"

    @property
    def endpoint(self) -> tuple[bool, str, int]:
        """(tls from the start, host, port)."""
        parts = urlsplit(self.url)
        tls = parts.scheme == "ldaps"
        return tls, parts.hostname or "", parts.port or (636 if tls else 389)

    def service_password(self) -> str:
        if self.bind_password_file:
            with open(self.bind_password_file) as f:
                return f.readline().rstrip("\r\n")
        return self.bind_password


def settings_from_table(value: Any) -> LdapSettings:
    """The `[revproxy.ldap]` table -> settings; ValueError('key: problem')."""
    values: dict[str, Any] = {}
    for key, raw in subtable_items(value, LdapSettings.__dataclass_fields__, "-: must be a table"):
        if key == "starttls":
            if not isinstance(raw, bool):
                raise ValueError(f"starttls: expected true or false, got {raw!r}")
        elif key in ("cache_ttl", "timeout"):
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= 86400:
                raise ValueError(f"{key}: expected seconds from 0 to 86400, got {raw!r}")
            raw = float(raw)
        elif key == "paths":
            if not isinstance(raw, list) or not raw or not all(isinstance(p, str) and p.startswith("/") for p in raw):
                raise ValueError(f'paths: expected a list of path prefixes like ["/api/client/v2/"], got {raw!r}')
            raw = tuple(raw)
        elif not isinstance(raw, str):
            raise ValueError(f"{key}: expected a string, got {raw!r}")
        values[key] = raw
    settings = LdapSettings(**values) if "url" in values else None
    if settings is None:
        raise ValueError('url: missing (e.g. "ldaps://dc1.example.com:636")')
    parts = urlsplit(settings.url)
    if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
        raise ValueError(f"url: expected ldap://host[:port] or ldaps://host[:port], got {settings.url!r}")
    if settings.starttls and parts.scheme == "ldaps":
        raise ValueError("starttls: ldaps:// is TLS already")
    if not settings.user_dn_template and not settings.search_base:
        raise ValueError("user_dn_template: set it, or search_base (with bind_dn and bind_password) to find users")
    if settings.user_dn_template and "{user}" not in settings.user_dn_template:
        raise ValueError("user_dn_template: must contain {user}")
    if settings.search_base and "{user}" not in settings.search_filter:
        raise ValueError("search_filter: must contain {user}")
    for key in ("ca_file", "bind_password_file"):
        path = getattr(settings, key)
        if path and not os.path.isfile(path):
            raise ValueError(f"{key}: {path!r} does not exist")
    return settings


def protected(settings: LdapSettings, target: bytes) -> bool:
    path = target.split(b"?", 1)[0].decode("latin-1")
    return any(path.startswith(prefix) for prefix in settings.paths)


def basic_credentials(header: bytes | None) -> tuple[str, str] | None:
    """`Authorization: Basic base64(user:password)` -> (user, password); None when absent or malformed."""
    if not header or header[:6].lower() != b"basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user or not password or any(ord(c) < 32 for c in user):
        return None
    return user, password


def escape_filter(value: str) -> str:
    """RFC 4515 escaping of a value inside a search filter."""
    out = []
    for ch in value:
        if ch in "\\*()\0" or ord(ch) < 32:
            out.append("".join(f"\\{b:02x}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out)


def escape_dn(value: str) -> str:
    """RFC 4514 escaping of a value inside a DN."""
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (ch == "#" and i == 0) or (ch == " " and i in (0, len(value) - 1)):
            out.append("\\" + ch)
        elif ord(ch) < 32:
            out.append(f"\\{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


class SuccessCache:
    """(user, hash of password) -> expiry; bounded (oldest dropped first)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._entries: OrderedDict[tuple[str, bytes], float] = OrderedDict()

    @staticmethod
    def _key(user: str, password: str) -> tuple[str, bytes]:
        return user, hashlib.sha256(password.encode()).digest()

    def hit(self, user: str, password: str) -> bool:
        key = self._key(user, password)
        until = self._entries.get(key)
        if until is None:
            return False
        if self._clock() >= until:
            del self._entries[key]
            return False
        return True

    def add(self, user: str, password: str, ttl: float) -> None:
        if ttl <= 0:
            return
        key = self._key(user, password)
        self._entries.pop(key, None)
        self._entries[key] = self._clock() + ttl
        while len(self._entries) > MAX_CACHED:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
