"""The server certificate bundle of both services: reading and checking it, the TLS server context, inspection.

One PEM file holds the server certificate, its unencrypted private key and the intermediate certificates — in that
order (the bundle Pexip's appliance calls pexip.pem). The HTTPS proxy and the relay's TURN-over-TLS use the same
bundle and the same checks, so they live here and not in either service.

- `read_bundle(path)` -> `Bundle`, or one `BundleError` for the first problem that makes the bundle unusable
  (start-up and reload refuse it; the caller names its config file and key).
- `server_context(path)` / `ServerTLS`: a stdlib `ssl` context that sends the full chain; TLS 1.2/1.3 only, ECDHE
  with AEAD ciphers, session cache and tickets on. `ServerTLS.reload` swaps it without touching open connections.
- `ensure_self_signed(path, hostname)`: the built-in certificate when none is configured, generated once and kept.
- `inspect_bundle(data, hostname)` -> `Inspection`: every finding (`Severity.ERROR` or `.WARNING`) and a
  `Description` for a person. Pure: bytes and a clock reading in, values out; used by `rpturn check`, `rpturn cert
  show` and `rpturn cert install`.

Severity is about clients, not about start-up: an ERROR is a bundle clients will refuse (or that will not load),
a WARNING is one that works today but needs attention (expiring within 30 days, a hostname we could only guess).
An expired certificate, a hostname not among its names and a missing intermediate are ERRORs for that reason,
although the services still start with them (an operator's reload must not be blocked by a certificate that was
already being served).
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import ipaddress
import itertools
import os
import re
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from appliance.atomic import write_atomically

# TLS 1.2 suites: ECDHE key exchange, AEAD only (TLS 1.3 suites are all AEAD with (EC)DHE already).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!SHA1:!SHA256:!SHA384"
EXPIRY_WARNING = datetime.timedelta(days=30)
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)
_ORDER_HELP = "expected the server certificate, then its private key, then the intermediate certificates"


class BundleError(ValueError):
    """A bundle the services cannot use; the message starts with the bundle's path when it was read from a file."""


class Severity(enum.Enum):
    ERROR = "error"      # clients will refuse it, or it will not load
    WARNING = "warning"  # works now; act soon


class Problem(enum.Enum):
    """What a finding is about, so `cert install` can decide and tests can match without parsing messages."""

    UNREADABLE = "unreadable"
    NO_PEM = "no-pem"
    ENCRYPTED_KEY = "encrypted-key"
    KEY_COUNT = "key-count"
    ORDER = "order"
    KEY_MISMATCH = "key-mismatch"
    CHAIN_ORDER = "chain-order"
    CHAIN_SIGNATURE = "chain-signature"
    BAD_PEM = "bad-pem"
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"
    EXPIRING = "expiring"
    HOSTNAME = "hostname"
    MISSING_INTERMEDIATE = "missing-intermediate"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    problem: Problem
    message: str

    def __str__(self) -> str:
        return self.message if self.severity is Severity.ERROR else f"warning: {self.message}"


@dataclass(frozen=True)
class Bundle:
    leaf: x509.Certificate
    key_pem: bytes
    chain: tuple[x509.Certificate, ...]  # intermediates, from the leaf's issuer upwards


@dataclass(frozen=True)
class Description:
    """What `rpturn cert show` prints: the server certificate, and the chain as the bundle sends it."""

    subject: str
    names: tuple[str, ...]                 # subjectAltName DNS names and IP addresses
    issuers: tuple[str, ...]               # the leaf's issuer, then each intermediate's issuer
    not_before: datetime.datetime
    not_after: datetime.datetime
    key_type: str                          # "EC P-256", "RSA", "Ed25519", ...
    key_bits: int
    self_signed: bool
    serial: str
    sha256: str                            # fingerprint of the leaf, hex with colons


@dataclass(frozen=True)
class Inspection:
    findings: tuple[Finding, ...]
    description: Description | None        # None when not even the server certificate could be read
    bundle: Bundle | None                  # None when the bundle is unusable (any structural ERROR)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)

    @property
    def ok(self) -> bool:
        return not self.errors


# -- structure: order, key, encryption ---------------------------------------------------------------------------


def _error(problem: Problem, message: str) -> Finding:
    return Finding(Severity.ERROR, problem, message)


def _public_der(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[attr-defined]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_structure(data: bytes) -> tuple[Bundle | None, list[x509.Certificate], list[Finding]]:
    """(bundle or None, the certificates in file order, every structural finding)."""
    findings: list[Finding] = []
    blocks = [(m.group(1).decode(), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
    kinds = [k for k, _ in blocks]
    if not blocks:
        return None, [], [_error(Problem.NO_PEM, f"no PEM blocks: {_ORDER_HELP}")]
    certs: list[x509.Certificate] = []
    for kind, pem in blocks:
        if kind == "CERTIFICATE":
            try:
                certs.append(x509.load_pem_x509_certificate(pem))
            except ValueError as e:
                findings.append(_error(Problem.BAD_PEM, f"unreadable certificate #{len(certs) + 1}: {e}"))
                return None, [], findings
    key_blocks = [(i, k, pem) for i, (k, pem) in enumerate(blocks) if k.endswith("PRIVATE KEY")]
    encrypted = any(k == "ENCRYPTED PRIVATE KEY" or b"ENCRYPTED" in pem for _, k, pem in key_blocks)
    if encrypted:
        findings.append(_error(Problem.ENCRYPTED_KEY, "the private key is encrypted; store it unencrypted "
                                                      "(openssl pkey -in key.pem -out plain.pem)"))
    if len(key_blocks) != 1:
        findings.append(_error(Problem.KEY_COUNT, f"expected exactly one private key, found {len(key_blocks)}"))
    elif kinds[0] != "CERTIFICATE" or key_blocks[0][0] != 1 or any(k != "CERTIFICATE" for k in kinds[2:]):
        findings.append(_error(Problem.ORDER, f"wrong order ({', '.join(kinds)}): {_ORDER_HELP}"))
    leaf = certs[0] if kinds[0] == "CERTIFICATE" else None
    key = None
    if len(key_blocks) == 1 and not encrypted:
        try:
            key = serialization.load_pem_private_key(key_blocks[0][2], password=None)
        except (ValueError, TypeError) as e:
            findings.append(_error(Problem.BAD_PEM, f"unreadable private key: {e}"))
    if key is not None and certs:
        matching = [c for c in certs if _public_der(c.public_key()) == _public_der(key.public_key())]
        if leaf is None or _public_der(leaf.public_key()) != _public_der(key.public_key()):
            hint = f" (it matches {matching[0].subject.rfc4514_string()}: wrong order?)" if matching else ""
            findings.append(_error(Problem.KEY_MISMATCH, f"the private key does not match the server certificate"
                                                         f"{hint}"))
    for child, parent in itertools.pairwise(certs):
        if child.issuer != parent.subject:
            findings.append(_error(Problem.CHAIN_ORDER, f"wrong order: {child.subject.rfc4514_string()} is not "
                                   f"issued by the next certificate ({parent.subject.rfc4514_string()}); list "
                                   "intermediates from the server's issuer upwards"))
            break
    if findings or leaf is None:
        return None, certs, findings
    return Bundle(leaf, key_blocks[0][2], tuple(certs[1:])), certs, findings


def parse_bundle(data: bytes) -> Bundle:
    """The bundle in `data`, or a BundleError for its first structural problem."""
    bundle, _, findings = _check_structure(data)
    if bundle is None:
        raise BundleError(findings[0].message)
    return bundle


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BundleError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise BundleError(f"{path}: is a directory, not a PEM file") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read: {e.strerror}") from None


def read_bundle(path: str) -> Bundle:
    """Read and check a bundle file: order, key match, no encryption; one BundleError naming `path` otherwise."""
    data = read_file(path)
    try:
        return parse_bundle(data)
    except BundleError as e:
        raise BundleError(f"{path}: {e}") from None


# -- the server context ------------------------------------------------------------------------------------------


def server_context(path: str, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """The bundle is checked first (order, key match, no encryption) for one clear message; OpenSSL then reads
    it itself: the first certificate is the leaf, the key block is skipped, every later certificate is sent as the
    chain in file order. `alpn`: the protocols offered (the relay's TURN over TLS may offer others, or none)."""
    read_bundle(path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(TLS12_CIPHERS)
    try:
        ctx.load_cert_chain(path)
    except (ssl.SSLError, OSError) as e:
        raise BundleError(f"{path}: OpenSSL refused it: {e}") from None
    # The stdlib context already has the server session cache (id context set) and TLS 1.2/1.3 tickets on, and
    # SSL_MODE_RELEASE_BUFFERS: idle connections give their record buffers back (10 000 open /events streams).
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class ServerTLS:
    """Gives each new connection the current context; `reload` swaps it, open connections keep theirs."""

    def __init__(self, path: str, alpn: tuple[str, ...] = ("http/1.1",)) -> None:
        self.path, self.alpn = path, alpn
        self.context = server_context(path, alpn)

    def reload(self, path: str) -> None:
        """Build the new context first: a bad new bundle raises BundleError and the current one stays in use."""
        self.context = server_context(path, self.alpn)
        self.path = path

    def wrap(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> ssl.SSLObject:
        return self.context.wrap_bio(incoming, outgoing, server_side=True)


def ensure_self_signed(path: str, hostname: str) -> str:
    """The appliance's built-in certificate: generated for `hostname` once, kept at `path` (reused if it still
    names `hostname`). Raises OSError when `path` cannot be written."""
    if os.path.exists(path):
        with contextlib.suppress(BundleError):
            if hostname in names_of(read_bundle(path).leaf):
                return path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(hostname)]
    with contextlib.suppress(ValueError):
        sans = [x509.IPAddress(ipaddress.ip_address(hostname))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    bundle = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_atomically(path, bundle, secret=True)
    return path


# -- inspection: validity, names, chain, description -------------------------------------------------------------


def names_of(cert: x509.Certificate) -> tuple[str, ...]:
    """The subjectAltName DNS names and IP addresses (clients ignore the CN when a SAN is present, and modern
    ones ignore it always)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return (*san.get_values_for_type(x509.DNSName), *(str(a) for a in san.get_values_for_type(x509.IPAddress)))


def hostname_matches(hostname: str, names: tuple[str, ...]) -> bool:
    """RFC 6125: case-insensitive; a wildcard only as the whole leftmost label, matching exactly one label;
    an IP address matches only an IP address entry."""
    host = hostname.strip().rstrip(".").lower()
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        ip = None
    for name in names:
        if ip is not None:
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(name) == ip:
                    return True
            continue
        pattern = name.rstrip(".").lower()
        if pattern == host:
            return True
        if pattern.startswith("*.") and "*" not in pattern[2:]:
            label, dot, rest = host.partition(".")
            if dot and label and rest == pattern[2:] and rest.count(".") >= 1:
                return True
    return False


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _key_description(cert: x509.Certificate) -> tuple[str, int]:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(key.curve.name,
                                                                                        key.curve.name)
        return f"EC {curve}", key.curve.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448", 456
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__, 0


def describe(leaf: x509.Certificate, chain: tuple[x509.Certificate, ...] = ()) -> Description:
    key_type, key_bits = _key_description(leaf)
    issuers = (leaf.issuer.rfc4514_string(), *(c.issuer.rfc4514_string() for c in chain))
    return Description(
        subject=leaf.subject.rfc4514_string(), names=names_of(leaf), issuers=issuers,
        not_before=leaf.not_valid_before_utc, not_after=leaf.not_valid_after_utc,
        key_type=key_type, key_bits=key_bits, self_signed=_self_signed(leaf),
        serial=f"{leaf.serial_number:x}", sha256=leaf.fingerprint(hashes.SHA256()).hex(":"))


def _validity(certs: list[x509.Certificate], now: datetime.datetime) -> list[Finding]:
    findings: list[Finding] = []
    for i, cert in enumerate(certs):
        what = "the server certificate" if i == 0 else f"intermediate {cert.subject.rfc4514_string()}"
        after, before = cert.not_valid_after_utc, cert.not_valid_before_utc
        if after <= now:
            findings.append(_error(Problem.EXPIRED, f"{what} expired on {after:%Y-%m-%d %H:%M} UTC"))
        elif before > now:
            findings.append(_error(Problem.NOT_YET_VALID, f"{what} is not valid before "
                                                           f"{before:%Y-%m-%d %H:%M} UTC"))
        elif after - now <= EXPIRY_WARNING:
            days = (after - now).days
            findings.append(Finding(Severity.WARNING, Problem.EXPIRING,
                                    f"{what} expires in {days} day{'s' if days != 1 else ''} "
                                    f"({after:%Y-%m-%d %H:%M} UTC)"))
    return findings


def _bad_signatures(certs: list[x509.Certificate]) -> list[Finding]:
    """A certificate followed by one with its issuer's name but not its issuer's key: an intermediate of another
    generation of the CA (re-keyed under the same name). Names alone look right; clients still fail."""
    findings = []
    for child, parent in itertools.pairwise(certs):
        if child.issuer != parent.subject:
            continue  # reported as wrong order
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            findings.append(_error(Problem.CHAIN_SIGNATURE, f"{child.subject.rfc4514_string()} is not signed by the "
                                   f"key of the next certificate ({parent.subject.rfc4514_string()}, serial "
                                   f"{parent.serial_number:x}): use the intermediate that issued it"))
    return findings


def _missing_intermediate(leaf: x509.Certificate, chain: tuple[x509.Certificate, ...]) -> Finding | None:
    """The leaf is not self-signed and its issuer is not in the bundle: clients that do not fetch intermediates
    themselves (the Pexip apps, most non-browser clients) cannot build a path to a root."""
    if chain or _self_signed(leaf):
        return None
    return _error(Problem.MISSING_INTERMEDIATE,
                  f"the issuer of the server certificate ({leaf.issuer.rfc4514_string()}) is not in the bundle: "
                  "append the intermediate certificate(s) after the private key")


def inspect_bundle(data: bytes, hostname: str | None = None, *, now: datetime.datetime | None = None,
                   hostname_guessed: bool = False) -> Inspection:
    """Every finding about a bundle's bytes, and its description.

    `hostname`: the name clients use (None: not checked). `hostname_guessed`: it is this machine's name rather than
    one the operator configured, so a mismatch is only a WARNING. `now` is injectable for tests.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    bundle, certs, findings = _check_structure(data)
    if not certs:
        return Inspection(tuple(findings), None, None)
    # With a structural error the first certificate is still described and every one date-checked, so the
    # operator sees all that is wrong at once.
    leaf, chain = certs[0], tuple(certs[1:])
    findings += _validity(certs, now)
    findings += _bad_signatures(certs)
    if hostname:
        names = names_of(leaf)
        if not hostname_matches(hostname, names):
            listed = ", ".join(names) if names else "none: it has no subjectAltName, and clients ignore the CN"
            message = f"hostname {hostname!r} is not among the certificate's names ({listed})"
            if hostname_guessed:
                findings.append(Finding(Severity.WARNING, Problem.HOSTNAME,
                                        f"{message}; set [revproxy] hostname to the name clients use"))
            else:
                findings.append(_error(Problem.HOSTNAME, message))
    if bundle is not None:
        missing = _missing_intermediate(bundle.leaf, bundle.chain)
        if missing is not None:
            findings.append(missing)
    return Inspection(tuple(findings), describe(leaf, chain), bundle)


def inspect_file(path: str, hostname: str | None = None, *, now: datetime.datetime | None = None,
                 hostname_guessed: bool = False) -> Inspection:
    """`inspect_bundle` of a file; an unreadable file is one ERROR finding. Messages do not repeat the path."""
    try:
        data = read_file(path)
    except BundleError as e:
        return Inspection((_error(Problem.UNREADABLE, str(e).removeprefix(f"{path}: ")),), None, None)
    return inspect_bundle(data, hostname, now=now, hostname_guessed=hostname_guessed)
