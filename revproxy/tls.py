"""TLS for both sides of the proxy.

Server side: one PEM bundle (server certificate, unencrypted private key, intermediates — in that order) checked
and turned into a pyOpenSSL context that sends the full chain; TLS 1.2/1.3 only, ECDHE with AEAD ciphers, session
cache and tickets on. `ServerTLS` hands that context to every new connection and can swap it (SIGHUP) without
touching established ones. When no certificate is configured a self-signed one is generated once and kept.

Upstream side: a client connection creator with SNI (for nodes configured by name) and optional verification
against the system store or a CA file.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from revproxy.config import ConfigError

# TLS 1.2 suites: ECDHE key exchange, AEAD only (TLS 1.3 suites are all AEAD with (EC)DHE already).
TLS12_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!SHA1:!SHA256:!SHA384"
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.S)


class DirectTLSFactory(TLSMemoryBIOFactory):
    """TLS without Twisted's small-write aggregation (a callLater(0) per burst, ~10 % of the proxy's CPU): the
    proxy already writes what one read produced as one write (`Exchange.flush`)."""

    protocol = TLSMemoryBIOProtocol
    noisy = False


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


def server_context(path: str, config_path: str = "<config>") -> SSL.Context:
    leaf, key_pem, chain = read_bundle(path, config_path)
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
    ctx.set_cipher_list(TLS12_CIPHERS)
    # Idle connections give their read/write buffers back: matters with 10 000 open /events streams.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.use_certificate(crypto.X509.from_cryptography(leaf))
    for c in chain:
        ctx.add_extra_chain_cert(crypto.X509.from_cryptography(c))
    ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem))
    ctx.check_privatekey()
    ctx.set_session_id(b"rpturn-revproxy")  # session cache; tickets are on by OpenSSL default
    ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    ctx.set_alpn_select_callback(_select_http11)
    return ctx


def _select_http11(conn: SSL.Connection, protocols: list[bytes]) -> bytes:
    return b"http/1.1" if b"http/1.1" in protocols else SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """Gives each new connection the current context; `reload` swaps it, open connections keep theirs."""

    def __init__(self, path: str, config_path: str = "<config>") -> None:
        self.path = path
        self.context = server_context(path, config_path)

    def reload(self, path: str, config_path: str = "<config>") -> None:
        """Build the new context first: a bad new bundle raises and the current one stays in use."""
        self.context = server_context(path, config_path)
        self.path = path

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)


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


@implementer(IOpenSSLClientConnectionCreator)
class _InsecureClientTLS:
    """verify_nodes = false: encrypt to the node, send SNI when it has a name, do not check its certificate."""

    def __init__(self, server_name: str | None) -> None:
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        self.ctx = ctx
        self.sni = server_name.encode("idna") if server_name else None

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        conn = SSL.Connection(self.ctx, None)
        if self.sni:
            conn.set_tlsext_host_name(self.sni)
        conn.set_connect_state()
        return conn


def client_creator(host: str, server_name: str | None, verify: bool, ca_file: str = "") -> object:
    """The connection creator for one node: `server_name` (DNS name) or else `host` (IP) is what gets verified."""
    if not verify:
        return _InsecureClientTLS(server_name)
    if ca_file:
        with open(ca_file, "rb") as f:
            pems = [m.group(0) for m in _PEM_BLOCK.finditer(f.read())]
        trust = tssl.trustRootFromCertificates([tssl.Certificate.loadPEM(p) for p in pems])
    else:
        trust = tssl.platformTrust()
    return tssl.optionsForClientTLS(server_name or host, trustRoot=trust,
                                    extraCertificateOptions={"raiseMinimumTo": tssl.TLSVersion.TLSv1_2})
