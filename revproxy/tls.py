"""TLS for both sides of the proxy.

Server side: one PEM bundle (server certificate, unencrypted private key, intermediates — in that order) checked
and turned into a stdlib `ssl` context that sends the full chain; TLS 1.2/1.3 only, ECDHE with AEAD ciphers,
session cache and tickets on. `ServerTLS` hands that context to every new connection and can swap it (SIGHUP)
without touching established ones. When no certificate is configured a self-signed one is generated once and kept.

Upstream side: a client context with SNI (for nodes configured by name) and optional verification
against the system store or a CA file. `revproxy.stdtls` runs the connections of both sides.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from revproxy.config import ConfigError

# TLS 1.2 suites: ECDHE key exchange, AEAD only (TLS 1.3 suites are all AEAD with (EC)DHE already).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!SHA1:!SHA256:!SHA384"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)


def read_bundle(path: str, config_path: str = "<config>") -> tuple[x509.Certificate, bytes, list[x509.Certificate]]:
    """Check a PEM bundle and return (leaf, private key PEM, intermediates); one clear ConfigError otherwise."""
    def bad(problem: str) -> ConfigError:
        return ConfigError(config_path, "certificate", f"{path}: {problem}")

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise bad("file not found") from None
    except OSError as e:
        raise bad(f"cannot read: {e.strerror}") from None
    blocks = [(m.group(1).decode(), m.group(0)) for m in _PEM_BLOCK.finditer(data)]
    kinds = [k for k, _ in blocks]
    if not blocks:
        raise bad("no PEM blocks: expected server certificate, private key, intermediates")
    if "ENCRYPTED PRIVATE KEY" in kinds or any(b"ENCRYPTED" in pem and "PRIVATE KEY" in k for k, pem in blocks):
        raise bad("the private key is encrypted; store it unencrypted (openssl pkey -in key.pem -out plain.pem)")
    key_positions = [i for i, k in enumerate(kinds) if k.endswith("PRIVATE KEY")]
    if len(key_positions) != 1:
        raise bad(f"expected exactly one private key, found {len(key_positions)}")
    if kinds[0] != "CERTIFICATE" or key_positions[0] != 1 or any(k != "CERTIFICATE" for k in kinds[2:]):
        raise bad(f"wrong order ({', '.join(kinds)}): expected the server certificate, then its private key, "
                  "then the intermediate certificates")
    try:
        certs = [x509.load_pem_x509_certificate(pem) for k, pem in blocks if k == "CERTIFICATE"]
        private = serialization.load_pem_private_key(blocks[1][1], password=None)
    except (ValueError, TypeError) as e:
        raise bad(f"unreadable PEM: {e}") from None
    leaf, chain = certs[0], certs[1:]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(serialization.Encoding.DER, spki) != leaf.public_key().public_bytes(
            serialization.Encoding.DER, spki):
        raise bad("the private key does not match the server certificate")
    for child, parent in zip(certs, chain, strict=False):
        if child.issuer != parent.subject:
            raise bad(f"wrong order: {child.subject.rfc4514_string()} is not issued by the next certificate "
                      f"({parent.subject.rfc4514_string()}); list intermediates from the server's issuer upwards")
    return leaf, blocks[1][1], chain


def server_context(path: str, config_path: str = "<config>") -> ssl.SSLContext:
    """The bundle is checked first (order, key match, no encryption) for one clear message; OpenSSL then reads
    it itself: the first certificate is the leaf, the key block is skipped, every later certificate is sent as the
    chain in file order."""
    read_bundle(path, config_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(TLS12_CIPHERS)
    try:
        ctx.load_cert_chain(path)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(config_path, "certificate", f"{path}: OpenSSL refused it: {e}") from None
    # The stdlib context already has the server session cache (id context set) and TLS 1.2/1.3 tickets on, and
    # SSL_MODE_RELEASE_BUFFERS: idle connections give their record buffers back (10 000 open /events streams).
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class ServerTLS:
    """Gives each new connection the current context; `reload` swaps it, open connections keep theirs."""

    def __init__(self, path: str, config_path: str = "<config>") -> None:
        self.path = path
        self.context = server_context(path, config_path)

    def reload(self, path: str, config_path: str = "<config>") -> None:
        """Build the new context first: a bad new bundle raises and the current one stays in use."""
        self.context = server_context(path, config_path)
        self.path = path

    def wrap(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> ssl.SSLObject:
        return self.context.wrap_bio(incoming, outgoing, server_side=True)


def ensure_self_signed(path: str, hostname: str) -> str:
    """The appliance's built-in certificate: generated for `hostname` once, kept at `path` (reused if it still
    names `hostname`)."""
    if os.path.exists(path):
        try:
            leaf, _, _ = read_bundle(path)
            names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            if hostname in names.get_values_for_type(x509.DNSName):
                return path
        except (ConfigError, x509.ExtensionNotFound):
            pass
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
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.replace(tmp, path)
    return path


class ClientTLS:
    """The TLS client side towards one node: SNI when it has a name, the context shared by its connections."""

    def __init__(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        self.context = context
        self.server_hostname = server_hostname

    def wrap(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO) -> ssl.SSLObject:
        return self.context.wrap_bio(incoming, outgoing, server_side=False, server_hostname=self.server_hostname)


def client_creator(host: str, server_name: str | None, verify: bool, ca_file: str = "") -> ClientTLS:
    """The creator for one node: `server_name` (DNS name) or else `host` (IP) is what gets verified; SNI is sent
    for a name only (the stdlib sends none for an IP address)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ClientTLS(ctx, server_name)
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    else:
        ctx.load_default_certs()
    return ClientTLS(ctx, server_name or host)
