"""Time-limited TURN credentials made with a shared secret: the TURN REST API scheme (pure, clock passed in).

A platform that hands TURN credentials to browsers must not hand out a static password (anyone can read it from the
page). Instead it shares a secret with the relay and gives each browser

    username = "<unix expiry>:<user>"        (or just "<unix expiry>")
    password = base64(HMAC-SHA1(secret, username))

which is what coturn calls `use-auth-secret` / `static-auth-secret` and what its `turnutils_uclient -W` sends. The
relay recomputes the password from the username, so it holds nothing per user; the long-term key for
MESSAGE-INTEGRITY is then the usual MD5(username:realm:password) (RFC 5389 15.4).

Several secrets may be configured at once, and any of them verifies: rotation is "add the new secret, let the
platform switch, drop the old one". Every secret is tried for every request, with no early exit, so how long a check
takes does not say which secret matched. A username whose timestamp cannot be parsed, or lies in the past, is
refused with a reason the caller logs (the client gets 401).

Secrets come from the `[relay] auth_secrets` list and from `auth_secrets_file` (one secret per line, blank lines and
`#` comments ignored). The file holds what lets anyone mint credentials, so it must not be open to others: mode 0600
or stricter, or — the one exception, PostgreSQL's rule for its key file — 0640 when root owns it, so a root-owned file
in the service user's group (`root:rpturn 0640`, the systemd install) can be read by the unprivileged service.
`reload()` re-reads it on SIGHUP and keeps the secrets it had if the new file is bad.
A secret is used as its UTF-8 bytes, as coturn does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from relay.auth import long_term_key

__all__ = [
    "RestCheck",
    "RestRefusal",
    "SecretsFileError",
    "SharedSecrets",
    "make_credentials",
    "parse_rest_username",
    "read_secrets_file",
    "rest_password",
]

MIN_SECRET_CHARS = 8  # shorter is a placeholder or a typo, not a secret
MAX_TIMESTAMP_DIGITS = 12  # good until the year 33658; longer is garbage, not a time


class RestRefusal(Enum):
    """Why a REST username is refused (the text goes into the auth-failure log line)."""

    UNPARSEABLE = "unparseable timestamp in username"
    EXPIRED = "expired credentials"
    NO_SECRETS = "no shared secret configured"
    BAD_PASSWORD = "password matches no shared secret"


@dataclass(frozen=True)
class RestCheck:
    """The outcome of a check: `refusal` None means accepted; `expiry` is the username's timestamp when parsed."""

    refusal: RestRefusal | None
    expiry: int | None = None

    @property
    def ok(self) -> bool:
        return self.refusal is None


class SecretsFileError(ValueError):
    """An auth_secrets_file that cannot be used; the message names the file (and line)."""


def parse_rest_username(username: str) -> tuple[int, str | None]:
    """(expiry, user or None) from "<expiry>:<user>" or "<expiry>"; ValueError when the timestamp is not digits."""
    stamp, sep, user = username.partition(":")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > MAX_TIMESTAMP_DIGITS:
        raise ValueError(f"timestamp {stamp[:20]!r} is not a unix time")
    return int(stamp), (user if sep else None)


def rest_password(secret: str | bytes, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)): the password that goes with `username`."""
    key = secret.encode() if isinstance(secret, str) else secret
    return base64.b64encode(hmac.new(key, username.encode(), hashlib.sha1).digest()).decode("ascii")


def make_credentials(secret: str | bytes, user: str | None, ttl: int, now: float) -> tuple[str, str]:
    """A (username, password) pair valid for `ttl` seconds from `now`, as a platform hands one to a browser."""
    if ttl <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
    if user is not None and ":" in user:
        raise ValueError("the user part cannot contain ':'")
    expiry = int(now) + int(ttl)
    username = f"{expiry}:{user}" if user else str(expiry)
    return username, rest_password(secret, username)


def secrets_file_mode_is_private(mode: int, owner_uid: int) -> bool:
    """No bits for others, no group write or execute, and group read only on a root-owned file."""
    if mode & (stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP):
        return False
    return not mode & stat.S_IRGRP or owner_uid == 0


def read_secrets_file(path: str) -> tuple[str, ...]:
    """The secrets of a secrets file, one a line; SecretsFileError for an unreadable, open or malformed file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SecretsFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        status = os.fstat(f.fileno())
        if not secrets_file_mode_is_private(status.st_mode, status.st_uid):
            raise SecretsFileError(
                f"{path}: mode {stat.S_IMODE(status.st_mode):04o} (owner uid {status.st_uid}) lets others read the"
                " secrets: chmod 600 (or chown root and chmod 640 to share it with the service's group only)")
        data = f.read()
    secrets: list[str] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise SecretsFileError(f"{path}:{number}: not valid UTF-8") from None
        if not text or text.startswith("#"):
            continue
        if len(text) < MIN_SECRET_CHARS:
            raise SecretsFileError(f"{path}:{number}: a secret must be at least {MIN_SECRET_CHARS} characters")
        secrets.append(text)
    return tuple(secrets)


class SharedSecrets:
    """The configured shared secrets (inline and from a file) and the checks against them."""

    def __init__(self, secrets: Sequence[str] = (), secrets_file: str | None = None) -> None:
        for secret in secrets:
            if not isinstance(secret, str) or len(secret) < MIN_SECRET_CHARS:
                raise ValueError(f"a shared secret must be a string of at least {MIN_SECRET_CHARS} characters")
        self._inline = tuple(s.encode() for s in secrets)
        self.secrets_file = secrets_file
        self._from_file: tuple[bytes, ...] = ()
        if secrets_file:
            self.reload()

    @property
    def secrets(self) -> tuple[bytes, ...]:
        return self._inline + self._from_file

    def __bool__(self) -> bool:
        return bool(self._inline or self._from_file)

    def reload(self) -> None:
        """Re-read the secrets file (SIGHUP). On a bad file keep the current secrets and raise SecretsFileError."""
        if self.secrets_file:
            self._from_file = tuple(s.encode() for s in read_secrets_file(self.secrets_file))

    def check_username(self, username: str, now: float) -> RestCheck:
        """Whether `username` is a REST username that has not expired (its password is checked elsewhere)."""
        if not self:
            return RestCheck(RestRefusal.NO_SECRETS)
        try:
            expiry, _ = parse_rest_username(username)
        except ValueError:
            return RestCheck(RestRefusal.UNPARSEABLE)
        if expiry <= now:
            return RestCheck(RestRefusal.EXPIRED, expiry)
        return RestCheck(None, expiry)

    def keys_for(self, username: str, realm: str) -> tuple[bytes, ...]:
        """The long-term key MD5(username:realm:password) under each secret, for checking MESSAGE-INTEGRITY."""
        return tuple(long_term_key(username, realm, rest_password(secret, username)) for secret in self.secrets)

    def verify_password(self, username: str, password: str, now: float) -> RestCheck:
        """Check a username/password pair (for tools and tests; the relay checks MESSAGE-INTEGRITY instead)."""
        check = self.check_username(username, now)
        if not check.ok:
            return check
        given = password.encode("utf-8", "surrogateescape")
        matched = False
        for secret in self.secrets:  # every secret, no early exit: the time taken names none of them
            matched |= hmac.compare_digest(rest_password(secret, username).encode(), given)
        return check if matched else RestCheck(RestRefusal.BAD_PASSWORD, check.expiry)
