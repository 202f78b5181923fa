"""Long-term credentials (RFC 5389 §10.2) and stateless nonces (pure).

Keys. The long-term key is ``MD5(username ":" realm ":" password)`` over UTF-8 (RFC 5389 §15.4). RFC 5389 runs
the password through SASLprep first; we do not, because the clients that talk to us (libwebrtc, coturn's tools,
aioice) hash the password as typed. For printable ASCII and precomposed text SASLprep is the identity, so the two
only differ for passwords with soft hyphens, compatibility characters and the like: keep passwords printable.

Users come from two places: ``[relay.users]`` inline ``user = "password"`` pairs, and a userdb file in turnadmin's
format. In the file, a line is one of

* ``user:0x<32 hex digits>`` - the key, ``MD5(user:realm:password)``, as turnadmin and ``rpturn-users`` write it;
* ``user:password`` - coturn's plain form, accepted so an existing coturn file works; the key is derived with the
  store's realm. A plain password that is exactly ``0x`` + 32 hex digits is read as a key, as coturn does.
* blank, or a comment whose first non-blank character is ``#`` (only whole-line comments: ``#`` may be part of a
  password).

The username is everything before the first ``:`` (so it cannot contain one), UTF-8, at most 512 bytes (the STUN
USERNAME limit), and appears once. A userdb entry overrides an inline user of the same name, so an operator can
change a password with ``rpturn-users`` without editing the config. Any bad line is a ``UserDbError`` naming the
file and line; ``reload()`` keeps the users it had when the file is bad.

Nonces. ``NonceIssuer`` holds no state per client: a nonce is ``<version>.<issued ms, hex>.<MAC>`` where MAC is
HMAC-SHA256(secret, version|issued|client IP) truncated to 128 bits, base64url. It is printable ASCII without
quotes or backslashes, well under the 128 characters RFC 5389 allows, and any process holding the same secret
(``workers``) verifies it. A nonce is VALID while younger than its lifetime, STALE once older (the client gets a
438 and a fresh one), and INVALID when forged, issued to another client IP, or garbage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "CredentialStore",
    "NonceIssuer",
    "NonceStatus",
    "UserDbEntry",
    "UserDbError",
    "check_username",
    "iter_userdb",
    "long_term_key",
    "parse_userdb",
    "read_userdb_bytes",
]

MAX_USERNAME_BYTES = 512  # RFC 5389 §15.3: USERNAME is "less than 513 bytes"

_NONCE_VERSION = "1"
_MAC_BYTES = 16
_NONCE_RE = re.compile(r"1\.([0-9a-f]{1,14})\.([A-Za-z0-9_-]{22})")
_KEY_RE = re.compile(r"0x([0-9a-fA-F]{32})")


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """The RFC 5389 long-term key MD5(username:realm:password), UTF-8 encoded."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


# --- nonces -------------------------------------------------------------------------------------------------


class NonceStatus(Enum):
    VALID = "valid"
    STALE = "stale"
    INVALID = "invalid"


def _canonical_ip(client_ip: str) -> str:
    """One spelling per address, so '::ffff:192.0.2.1' and '192.0.2.1' get the same nonce."""
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


class NonceIssuer:
    """Issues and checks stateless nonces bound to a client IP address; see the module docstring."""

    def __init__(self, secret: bytes, lifetime: float = 600.0):
        if not isinstance(secret, bytes | bytearray) or len(secret) < 16:
            raise ValueError("nonce secret: need at least 16 random bytes")
        if not lifetime > 0:
            raise ValueError(f"nonce lifetime: must be positive, got {lifetime!r}")
        self._secret = bytes(secret)
        self.lifetime = float(lifetime)

    def _mac(self, issued_hex: str, client_ip: str) -> str:
        message = f"{_NONCE_VERSION}|{issued_hex}|{_canonical_ip(client_ip)}".encode("utf-8", "surrogateescape")
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()[:_MAC_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def issue(self, client_ip: str, now: float) -> str:
        """A fresh nonce for ``client_ip`` at time ``now`` (seconds)."""
        issued_hex = format(max(0, int(now * 1000)), "x")
        return f"{_NONCE_VERSION}.{issued_hex}.{self._mac(issued_hex, client_ip)}"

    def check(self, nonce: str, client_ip: str, now: float) -> NonceStatus:
        """VALID, STALE (ours but expired, or from a clock that stepped back) or INVALID."""
        if not isinstance(nonce, str) or not isinstance(client_ip, str):
            return NonceStatus.INVALID
        match = _NONCE_RE.fullmatch(nonce)
        if match is None:
            return NonceStatus.INVALID
        issued_hex, mac = match.groups()
        # Both sides are ASCII here (the regex saw to that), as compare_digest requires for str.
        if not hmac.compare_digest(mac, self._mac(issued_hex, client_ip)):
            return NonceStatus.INVALID
        age = now - int(issued_hex, 16) / 1000
        return NonceStatus.VALID if 0 <= age < self.lifetime else NonceStatus.STALE


# --- userdb -------------------------------------------------------------------------------------------------


class UserDbError(ValueError):
    """A userdb file that cannot be read or has a bad line; the message names the file and line."""

    def __init__(self, path: str, line: int | None, reason: str):
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"{path}:{line}: {reason}" if line is not None else f"{path}: {reason}")


@dataclass(frozen=True)
class UserDbEntry:
    """One user line: ``key`` for ``user:0x<hex>`` lines, ``password`` for coturn's plain ``user:password``."""

    username: str
    key: bytes | None = None
    password: str | None = None

    def key_for(self, realm: str) -> bytes:
        return self.key if self.key is not None else long_term_key(self.username, realm, self.password or "")


def check_username(username: str) -> str | None:
    """Why ``username`` cannot be stored in a userdb, or None when it can."""
    if not username:
        return "empty username"
    if ":" in username:
        return "a username cannot contain ':'"
    if any(ch.isspace() or not ch.isprintable() for ch in username):
        return "a username cannot contain spaces or control characters"
    if len(username.encode()) > MAX_USERNAME_BYTES:
        return f"username longer than {MAX_USERNAME_BYTES} bytes"
    return None


def _parse_line(text: str) -> UserDbEntry | None:
    """The entry on one (decoded, unterminated) line, None for blanks and comments; ValueError when bad."""
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    username, sep, secret = stripped.partition(":")
    if not sep:
        raise ValueError("expected user:0x<32 hex digits> or user:password")
    problem = check_username(username)
    if problem:
        raise ValueError(problem)
    if not secret:
        raise ValueError(f"user {username!r}: empty password")
    key = _KEY_RE.fullmatch(secret)
    if key is not None:
        return UserDbEntry(username, key=bytes.fromhex(key.group(1)))
    if secret[:2].lower() == "0x":
        # As for coturn, "0x" starts a key: a bad one is refused rather than taken as a plain password.
        body = secret[2:]
        got = str(len(body)) if all(c in "0123456789abcdefABCDEF" for c in body) else "non-hex characters"
        raise ValueError(f"user {username!r}: a key must be 0x and 32 hex digits, got {got}")
    return UserDbEntry(username, password=secret)


def iter_userdb(data: bytes, path: str) -> Iterator[tuple[int, str, UserDbEntry | None]]:
    """(line number, line text without its ending, entry or None) for every line of a userdb file's bytes.

    Raises UserDbError for a line that is not UTF-8 or not a valid entry, and for a user listed twice.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserDbError(path, number, "not valid UTF-8") from None
        try:
            entry = _parse_line(text)
        except ValueError as exc:
            raise UserDbError(path, number, str(exc)) from None
        if entry is not None:
            if entry.username in first_seen:
                raise UserDbError(path, number, f"user {entry.username!r} already on line "
                                                f"{first_seen[entry.username]}")
            first_seen[entry.username] = number
        yield number, text, entry


def read_userdb_bytes(path: str) -> bytes:
    """The file's bytes; any OS error is a UserDbError naming the file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UserDbError(path, None, f"cannot read: {exc.strerror or exc}") from None


def parse_userdb(data: bytes, path: str, realm: str) -> dict[str, bytes]:
    """username -> long-term key for every entry of a userdb file's bytes (keys for plain lines use ``realm``)."""
    return {entry.username: entry.key_for(realm) for _, _, entry in iter_userdb(data, path) if entry}


# --- the store ----------------------------------------------------------------------------------------------


class CredentialStore:
    """username -> long-term key, from inline users and a userdb file (which wins on a shared name)."""

    def __init__(self, realm: str, users: Mapping[str, str] | None = None, userdb: str | None = None):
        if not isinstance(realm, str) or not realm:
            raise ValueError("realm: must be a non-empty string")
        self.realm = realm
        self.userdb = userdb
        self._inline: dict[str, bytes] = {}
        for username, password in (users or {}).items():
            if not isinstance(username, str) or not isinstance(password, str):
                raise ValueError(f"inline user {username!r}: user and password must be strings")
            self._inline[username] = long_term_key(username, realm, password)
        self._keys: dict[str, bytes] = dict(self._inline)
        if userdb is not None:
            self.reload()

    def key_for(self, username: str) -> bytes | None:
        """The long-term key for ``username``, or None for an unknown user."""
        return self._keys.get(username)

    @property
    def usernames(self) -> frozenset[str]:
        return frozenset(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def reload(self) -> None:
        """Re-read the userdb. On a bad or unreadable file keep the current users and raise UserDbError."""
        if self.userdb is None:
            return
        from_file = parse_userdb(read_userdb_bytes(self.userdb), self.userdb, self.realm)
        self._keys = {**self._inline, **from_file}
