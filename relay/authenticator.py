"""The long-term credential mechanism (RFC 5389 10.2) for TURN requests: who sent this, or which challenge (pure).

`authenticate()` returns the user and the key that signs every answer to them, or raises `TurnError`: 401 or 438
with REALM and a fresh NONCE (a challenge), or 400 when USERNAME, REALM or NONCE is missing. The user stores and
the stateless nonces are in relay.auth; this module only applies them to a request.

The first unauthenticated request is the normal first step, not a failure; a stale nonce is routine (every
client's nonce runs out) and only counted. Everything else is an auth failure: counted and logged (rate-limited).

A username that is not a user of the store is checked against the TURN REST API shared secrets when there are any
(relay.restauth): an unparseable or past timestamp is refused with that reason (401); otherwise MESSAGE-INTEGRITY
is checked with the key under every secret (no early exit) and the one that verifies signs the answers. Static
users come first, so `[relay.users]` and the userdb keep working alongside.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from relay.allocation import TurnError
from relay.auth import NonceStatus
from relay.stun import Attr, Message, check_integrity

if TYPE_CHECKING:
    from relay.allocation import FiveTuple
    from relay.auth import CredentialStore, NonceIssuer
    from relay.events import EventLog
    from relay.restauth import SharedSecrets

__all__ = ["Authenticator"]


class Authenticator:
    """Checks MESSAGE-INTEGRITY against the credential store and nonces; builds the challenges."""

    def __init__(self, realm: str, credentials: CredentialStore, nonces: NonceIssuer, events: EventLog,
                 stats: collections.Counter[str], secrets: SharedSecrets | None = None) -> None:
        self.realm = realm
        self.credentials = credentials
        self.secrets = secrets  # TURN REST API shared secrets; None or empty: static users only
        self.nonces = nonces
        self.events = events
        self.stats = stats

    def authenticate(self, request: Message, five_tuple: FiveTuple, now: float) -> tuple[str, bytes]:
        """(username, long-term key) of a request that proves it; otherwise TurnError with the answer to send."""
        client_ip = five_tuple[1][0]
        if request.integrity_offset is None:
            raise self._challenge(401, client_ip, now)  # the normal first step, not a failure
        username = request.get(Attr.USERNAME)
        if username is None or request.get(Attr.REALM) is None or request.get(Attr.NONCE) is None:
            self._failure(five_tuple, username, "USERNAME, REALM or NONCE missing", now)
            raise TurnError(400, "USERNAME, REALM and NONCE needed")
        status = self.nonces.check(request.get(Attr.NONCE), client_ip, now)
        if status is NonceStatus.STALE:
            # Routine: every client's nonce runs out after nonce_lifetime. Counted, not logged.
            self.stats["stale_nonces"] += 1
            raise self._challenge(438, client_ip, now)
        if status is not NonceStatus.VALID:
            self._failure(five_tuple, username, "invalid nonce", now)
            raise self._challenge(438, client_ip, now)
        key = self.credentials.key_for(username)
        if key is None and self.secrets:
            return username, self._shared_secret_key(request, username, five_tuple, now)
        if key is None:
            self._failure(five_tuple, username, "unknown user", now)
            raise self._challenge(401, client_ip, now)
        if not check_integrity(request, key):
            self._failure(five_tuple, username, "bad MESSAGE-INTEGRITY", now)
            raise self._challenge(401, client_ip, now)
        return username, key

    def _shared_secret_key(self, request: Message, username: str, five_tuple: FiveTuple, now: float) -> bytes:
        """The key of a time-limited (REST) username under whichever secret signed the request, or TurnError 401."""
        assert self.secrets is not None
        check = self.secrets.check_username(username, now)
        if check.refusal is not None:
            self._failure(five_tuple, username, check.refusal.value, now)
            raise self._challenge(401, five_tuple[1][0], now)
        verified = None
        for key in self.secrets.keys_for(username, self.realm):  # every one: the time taken names no secret
            if check_integrity(request, key) and verified is None:
                verified = key
        if verified is None:
            self._failure(five_tuple, username, "bad MESSAGE-INTEGRITY (shared secret)", now)
            raise self._challenge(401, five_tuple[1][0], now)
        return verified

    def _challenge(self, code: int, client_ip: str, now: float) -> TurnError:
        return TurnError(code, attributes=((Attr.REALM, self.realm), (Attr.NONCE, self.nonces.issue(client_ip, now))))

    def _failure(self, five_tuple: FiveTuple, username: str | None, reason: str, now: float) -> None:
        self.stats["auth_failures"] += 1
        self.stats[f"auth_failure {reason}"] += 1
        self.events.auth_failure(five_tuple, username, reason, now)
