"""Automatic certificates over ACME (RFC 8555) with HTTP-01: the settings, the renewal decision, the challenge files
the port-80 listener serves, and the blocking client run (the `acme` library from the certbot project).

`[revproxy] acme = { directory = "https://.../directory", email = "ops@example.com" }` obtains a certificate for
`hostname` and renews it `renew_days` (30) before it expires. Everything lives in `state_dir` (default `var/acme`):
`account.key` (the ACME account, kept so renewals use the same account), `certificate.pem` (the bundle the proxy
serves once it exists: leaf, key, intermediates) and `challenges/` (one file per pending HTTP-01 token, which any
proxy worker's port-80 listener can answer, whichever gets the validation request). `ca_file` makes the client
trust a private ACME server (a test CA, an internal step-ca) instead of the system store.

`obtain()` blocks (HTTP requests, polling): `revproxy.acme_service` runs it in a thread and installs the result.
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appliance import certs
from appliance.atomic import remove_file, write_atomically

CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
_TOKEN = re.compile(rb"[A-Za-z0-9_-]{1,256}")


@dataclass(frozen=True)
class AcmeSettings:
    directory: str
    email: str = ""
    ca_file: str = ""
    renew_days: float = 30.0
    check_interval: float = 43200.0  # seconds between renewal checks (12 h)
    state_dir: str = "var/acme"

    @property
    def bundle_path(self) -> str:
        return os.path.join(self.state_dir, "certificate.pem")

    @property
    def account_key_path(self) -> str:
        return os.path.join(self.state_dir, "account.key")

    @property
    def challenges_dir(self) -> str:
        return os.path.join(self.state_dir, "challenges")


def settings_from_table(value: Any) -> AcmeSettings:
    """`[revproxy] acme = {...}` -> settings; ValueError('key: problem') for a bad one."""
    if not isinstance(value, Mapping):
        raise ValueError('-: must be a table, e.g. { directory = "https://acme.example/directory" }')
    known = AcmeSettings.__dataclass_fields__
    for key in value:
        if key not in known:
            raise ValueError(f"{key}: unknown key (known: {', '.join(known)})")
    directory = value.get("directory")
    if not isinstance(directory, str) or not directory.startswith("https://"):
        raise ValueError(f"directory: expected the ACME directory's https:// URL, got {directory!r}")
    values: dict[str, Any] = {"directory": directory}
    for key in ("email", "ca_file", "state_dir"):
        if key in value:
            if not isinstance(value[key], str):
                raise ValueError(f"{key}: expected a string, got {value[key]!r}")
            values[key] = value[key]
    if values.get("ca_file") and not os.path.isfile(values["ca_file"]):
        raise ValueError(f"ca_file: {values['ca_file']!r} does not exist")
    if "@" not in values.get("email", "@"):
        raise ValueError(f"email: {values['email']!r} is not an e-mail address")
    for key, low, high in (("renew_days", 0, 3650), ("check_interval", 1, 7 * 86400)):
        if key in value:
            raw = value[key]
            if isinstance(raw, bool) or not isinstance(raw, int | float) or not low <= raw <= high:
                raise ValueError(f"{key}: expected a number from {low} to {high}, got {raw!r}")
            values[key] = float(raw)
    return AcmeSettings(**values)


def renewal_reason(bundle: bytes | None, hostname: str, renew_days: float,
                   now: datetime.datetime | None = None) -> str | None:
    """Why a certificate must be obtained now, or None when the current one is good for longer than renew_days."""
    if bundle is None:
        return "no certificate yet"
    now = now or datetime.datetime.now(datetime.UTC)
    inspection = certs.inspect_bundle(bundle, hostname, now=now)
    if inspection.bundle is None:
        return "the current bundle is unusable"
    leaf = inspection.bundle.leaf
    if not certs.hostname_matches(hostname, certs.names_of(leaf)):
        return f"the current certificate does not name {hostname}"
    left = leaf.not_valid_after_utc - now
    if left <= datetime.timedelta(days=renew_days):
        return f"it expires in {left.days} days ({leaf.not_valid_after_utc:%Y-%m-%d})"
    return None


def challenge_response(challenges_dir: str, target: bytes) -> bytes | None:
    """The key authorization for `GET /.well-known/acme-challenge/<token>`, None when there is no such token."""
    token = target[len(CHALLENGE_PREFIX):].split(b"?", 1)[0]
    if not target.startswith(CHALLENGE_PREFIX) or not _TOKEN.fullmatch(token):
        return None
    try:
        with open(os.path.join(challenges_dir, token.decode()), "rb") as f:
            return f.read()
    except OSError:
        return None


# --- the client (blocking: run it in a thread) ----------------------------------------------------------------


def _account_key(path: str) -> Any:
    import josepy as jose
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        with open(path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
    except FileNotFoundError:
        key = rsa.generate_private_key(65537, 2048)
        write_atomically(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), secret=True)
    return jose.JWKRSA(key=key)


def obtain(settings: AcmeSettings, hostname: str, timeout: float = 90.0) -> bytes:
    """Register (or find) the account, order a certificate for `hostname`, answer HTTP-01 through the challenge
    files, finalize; return the bundle (leaf, new unencrypted key, intermediates). Raises on any failure."""
    from acme import challenges, client, crypto_util, errors, messages
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    os.makedirs(settings.challenges_dir, mode=0o755, exist_ok=True)
    jwk = _account_key(settings.account_key_path)
    net = client.ClientNetwork(jwk, user_agent="rpturn", verify_ssl=settings.ca_file or True, timeout=30)
    directory = client.ClientV2.get_directory(settings.directory, net)
    acme = client.ClientV2(directory, net=net)
    registration = messages.NewRegistration.from_data(email=settings.email or None, terms_of_service_agreed=True)
    try:
        acme.new_account(registration)
    except errors.ConflictError as e:  # the account exists (this key registered before): use it
        net.account = messages.RegistrationResource(uri=e.location, body=messages.Registration())
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    order = acme.new_order(crypto_util.make_csr(key_pem, [hostname]))
    tokens = []
    try:
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            http01 = next((c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)), None)
            if http01 is None:
                raise RuntimeError(f"the ACME server offers no HTTP-01 challenge for {authz.body.identifier.value}")
            response, validation = http01.response_and_validation(jwk)
            token = http01.chall.encode("token")
            write_atomically(os.path.join(settings.challenges_dir, token), validation.encode(), mode=0o644)
            tokens.append(token)
            acme.answer_challenge(http01, response)
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
        finished = acme.poll_and_finalize(order, deadline=deadline)
    finally:
        for token in tokens:
            remove_file(os.path.join(settings.challenges_dir, token))
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?",
                        finished.fullchain_pem.encode(), re.S)
    if not blocks:
        raise RuntimeError("the ACME server sent no certificate")
    blocks = [b if b.endswith(b"\n") else b + b"\n" for b in blocks]
    return blocks[0] + key_pem + b"".join(blocks[1:])
