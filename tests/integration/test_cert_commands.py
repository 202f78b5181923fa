"""`rpturn cert show | install | rollback` against the real `twistd rpturn`: good bundles are served after the
reload (checked with `openssl s_client`), bad ones are refused with their reasons and change nothing, a bundle the
appliance cannot serve is rolled back by the command itself, and `rollback` swaps back."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa

from tests.support import revproxy_process as rp
from tests.support.appliance_process import ApplianceProcess, self_signed_site
from tests.support.processes import RPTURN
from tests.support.revproxy_process import Pki


def served_fingerprint(port: int) -> str:
    """SHA-256 of the certificate the HTTPS port presents, as openssl s_client receives it."""
    hello = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"],
                           input=b"", capture_output=True, timeout=20)
    x509 = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], input=hello.stdout,
                          capture_output=True, timeout=20)
    assert x509.returncode == 0, hello.stdout.decode(errors="replace") + hello.stderr.decode(errors="replace")
    return x509.stdout.decode().split("=", 1)[1].strip().replace(":", "").lower()


def fingerprint_of(pem: bytes) -> str:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def first_cert(path: Path) -> bytes:
    data = path.read_bytes()
    return data[:data.index(b"-----END CERTIFICATE-----") + 26]


class Site:
    def __init__(self, where: Path) -> None:
        self.where = where
        self.pki = Pki(where)
        self.app = ApplianceProcess(where, revproxy=self_signed_site(where), http=True, pidfile=True).start()
        self.config, self.port = self.app.config_path, self.app.https_port
        self.target = where / "certificate.pem"

    def cert(self, *args: str, timeout: float = 4.0) -> subprocess.CompletedProcess:
        extra = ["--pidfile", str(self.app.pidfile), "--timeout", str(timeout)] if args[0] != "show" else []
        return subprocess.run([RPTURN, "cert", *args, "--config", str(self.config), *extra], capture_output=True,
                              text=True, timeout=60)

    def bundle(self, name: str, names: tuple[str, ...] = ("localhost",), **kw) -> tuple[Path, bytes]:
        cert, key = self.pki.issue(names, **kw)
        return self.pki.write(name, cert, key, self.pki.intermediate_pem), cert


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("cert"))
    yield s
    s.app.stop()


def test_install_a_good_bundle_is_served_after_the_reload(site):
    self_signed = first_cert(site.where / "selfsigned.pem")
    assert served_fingerprint(site.port) == fingerprint_of(self_signed)
    path, cert = site.bundle("good.pem")
    result = site.cert("install", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "serves the new certificate" in result.stdout
    assert served_fingerprint(site.port) == fingerprint_of(cert)
    assert site.target.read_bytes() == path.read_bytes()
    assert (site.target.stat().st_mode & 0o777) == 0o600
    assert first_cert(Path(f"{site.target}.previous")) == self_signed  # the built-in one is the previous
    assert f'certificate = "{site.target}"' in site.config.read_text()


def test_install_from_cert_key_and_chain_files_assembles_the_bundle(site):
    cert, key = site.pki.issue(("localhost", "meet.example.com"))
    c = site.pki.write("c.pem", cert)
    k = site.pki.write("k.pem", key)
    i = site.pki.write("i.pem", site.pki.intermediate_pem)
    result = site.cert("install", "--cert", str(c), "--key", str(k), "--chain", str(i))
    assert result.returncode == 0, result.stdout + result.stderr
    assert site.target.read_bytes() == cert + key + site.pki.intermediate_pem
    assert served_fingerprint(site.port) == fingerprint_of(cert)
    show = site.cert("show")
    assert show.returncode == 0, show.stdout + show.stderr
    assert "names:       localhost, meet.example.com" in show.stdout
    assert "issuer:      CN=rpturn test intermediate" in show.stdout
    assert "  then:      CN=rpturn test root" in show.stdout
    assert "key:         EC P-256" in show.stdout and "days left" in show.stdout


def bad_bundles(site: Site) -> list[tuple[str, bytes, str]]:
    import datetime

    pki = site.pki
    cert, key = pki.issue(("localhost",))
    old_cert, old_key = pki.issue(("localhost",), valid=(datetime.timedelta(days=-60), datetime.timedelta(days=-1)))
    other_cert, other_key = pki.issue(("other.example.com",))
    enc = serialization.load_pem_private_key(key, None).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    return [
        ("key first", key + cert + pki.intermediate_pem, "expected the server certificate"),
        ("key mismatch", cert + pki.other_key_pem + pki.intermediate_pem, "does not match"),
        ("encrypted key", cert + enc + pki.intermediate_pem, "encrypted"),
        ("expired", old_cert + old_key + pki.intermediate_pem, "expired"),
        ("wrong name", other_cert + other_key + pki.intermediate_pem, "'localhost' is not among"),
        ("no intermediate", cert + key, "is not in the bundle"),
    ]


def test_bad_bundles_are_refused_with_the_reason_and_change_nothing(site):
    before, served = site.target.read_bytes(), served_fingerprint(site.port)
    previous = Path(f"{site.target}.previous").read_bytes()
    for what, data, reason in bad_bundles(site):
        path = site.pki.write("bad.pem", data)
        result = site.cert("install", str(path))
        assert result.returncode == 1, what
        assert reason in result.stderr, (what, result.stderr)
        assert "nothing was changed" in result.stderr and "Traceback" not in result.stderr
        assert site.target.read_bytes() == before and Path(f"{site.target}.previous").read_bytes() == previous
    assert served_fingerprint(site.port) == served


def test_a_bundle_the_appliance_cannot_serve_is_rolled_back_automatically(site):
    """A DSA certificate passes every bundle check, but no TLS 1.2/1.3 handshake with our ECDHE/AEAD policy can
    use it: the appliance reloads, serves nothing with it, and the command restores the previous bundle."""
    before, served = site.target.read_bytes(), served_fingerprint(site.port)
    key = dsa.generate_private_key(2048)
    inter, inter_key = site.pki._issuers["intermediate"]
    cert = rp._pem_cert(rp._cert("localhost", key, inter, inter_key, names=("localhost",)))
    path = site.pki.write("dsa.pem", cert, rp._pem_key(key), site.pki.intermediate_pem)
    result = site.cert("install", str(path), timeout=3.0)
    assert result.returncode == 1
    assert "did not serve the new certificate within 3 s" in result.stderr
    assert "rolled back to the previous one" in result.stderr
    assert site.target.read_bytes() == before
    assert served_fingerprint(site.port) == served


def test_rollback_swaps_with_the_previous_bundle_and_back(site):
    current, previous = site.target.read_bytes(), Path(f"{site.target}.previous").read_bytes()
    result = site.cert("rollback")
    assert result.returncode == 0, result.stdout + result.stderr
    assert served_fingerprint(site.port) == fingerprint_of(previous)
    assert site.target.read_bytes() == previous and Path(f"{site.target}.previous").read_bytes() == current
    assert site.cert("rollback").returncode == 0
    assert served_fingerprint(site.port) == fingerprint_of(current)


def test_install_when_the_appliance_is_not_running_says_so(tmp_path):
    pki = Pki(tmp_path)
    config = ApplianceProcess(tmp_path, revproxy=self_signed_site(tmp_path), http=True).config_path
    cert, key = pki.issue(("localhost",))
    bundle = pki.write("b.pem", cert, key, pki.intermediate_pem)
    result = subprocess.run([RPTURN, "cert", "install", str(bundle), "--config", str(config), "--pidfile",
                             str(tmp_path / "none.pid")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "the appliance is not running" in result.stdout
    assert (tmp_path / "certificate.pem").read_bytes() == bundle.read_bytes()
    none = subprocess.run([RPTURN, "cert", "rollback", "--config", str(config), "--pidfile", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=30)
    assert none.returncode == 1 and "no previous bundle" in none.stderr
