"""The long-term credential mechanism (RFC 5389 10.2) for TURN requests: who sent this, or which challenge (pure).

`authenticate()` returns the user and the key that signs every answer to them, or raises `TurnError`: 401 or 438
with REALM and a fresh NONCE (a challenge), or 400 when USERNAME, REALM or NONCE is missing. The user stores and
the stateless nonces are in relay.auth; this module only applies them to a request.

The first unauthenticated request is the normal first step, not a failure; a stale nonce is routine (every
client's nonce runs out) and only counted. Everything else is an auth failure: counted and logged (rate-limited).
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

__all__ = ["Authenticator"]


class Authenticator:
    """Checks MESSAGE-INTEGRITY against the credential store and nonces; builds the challenges."""

    def __init__(self, realm: str, credentials: CredentialStore, nonces: NonceIssuer, events: EventLog,
                 stats: collections.Counter[str]) -> None:
        self.realm = realm
        self.credentials = credentials
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
        if key is None:
            self._failure(five_tuple, username, "unknown user", now)
            raise self._challenge(401, client_ip, now)
        if not check_integrity(request, key):
            self._failure(five_tuple, username, "bad MESSAGE-INTEGRITY", now)
            raise self._challenge(401, client_ip, now)
        return username, key

    def _challenge(self, code: int, client_ip: str, now: float) -> TurnError:
        return TurnError(code, attributes=((Attr.REALM, self.realm), (Attr.NONCE, self.nonces.issue(client_ip, now))))

    def _failure(self, five_tuple: FiveTuple, username: str | None, reason: str, now: float) -> None:
        self.stats["auth_failures"] += 1
        self.stats[f"auth_failure {reason}"] += 1
        self.events.auth_failure(five_tuple, username, reason, now)
