"""Automatic certificates end to end: the real `twistd rpturn` obtains a certificate from a real ACME server
(Debian's pebble on loopback, validating HTTP-01 on our port-80 listener), serves it (checked with openssl
s_client), renews it when told the renewal window is open, and keeps the last good one when the server is gone."""

from __future__ import annotations

import http.client
import signal
import subprocess
import time
from pathlib import Path

from tests.support.appliance_process import ApplianceProcess, self_signed_site
from tests.support.pebble import Pebble
from tests.support.processes import RPTURN
from tests.support.revproxy_process import Pki


def served(port: int) -> tuple[str, str]:
    """(issuer, sha256) of the certificate the HTTPS port presents, as openssl s_client sees it."""
    hello = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"],
                           input=b"", capture_output=True, timeout=20)
    out = subprocess.run(["openssl", "x509", "-noout", "-issuer", "-fingerprint", "-sha256"], input=hello.stdout,
                         capture_output=True, timeout=20).stdout.decode()
    issuer = next((line.split("=", 1)[1].strip() for line in out.splitlines() if line.startswith("issuer")), "")
    fingerprint = next((line.split("=", 1)[1] for line in out.splitlines() if "Fingerprint" in line), "")
    return issuer, fingerprint


def wait_for(predicate, timeout: float, what: str, log=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout} s\n{log()[-3000:]}"
        time.sleep(0.2)


def metric(port: int, name: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_certificate_obtained_served_renewed_and_kept_when_the_server_is_gone(tmp_path: Path):
    pki = Pki(tmp_path)
    app = ApplianceProcess(tmp_path, revproxy=self_signed_site(tmp_path), http=True, pidfile=True)
    config, https_port, management = app.config_path, app.https_port, app.management_port
    pebble = Pebble(tmp_path, pki, app.http_port)
    state = tmp_path / "acme"
    app.proxy_table["acme"] = {"directory": pebble.directory, "email": "ops@example.com",
                               "ca_file": str(pki.root), "state_dir": str(state), "check_interval": 1}
    app.write()
    try:
        app.start()
        wait_for(lambda: served(https_port)[0].startswith("CN = Pebble Intermediate"), 30,
                 "a certificate from pebble served", app.log)
        first = served(https_port)[1]
        bundle = state / "certificate.pem"
        assert (bundle.stat().st_mode & 0o777) == 0o600
        assert "acme: installed a certificate for localhost" in app.log()
        assert "GET /.well-known/acme-challenge/" in pebble.log() or "Attempting to validate w/ HTTP" in pebble.log()
        wait_for(lambda: metric(management, 'rpturn_proxy_acme_events_total{event="renewed"}') >= 1, 10,
                 "the renewal counted in /metrics")
        show = subprocess.run([RPTURN, "cert", "show", "--config", str(config)], capture_output=True, text=True,
                              timeout=30)
        assert f"certificate: {bundle}  (obtained over ACME)" in show.stdout, show.stdout + show.stderr
        assert "issuer:      CN=Pebble Intermediate" in show.stdout
        refused = subprocess.run([RPTURN, "cert", "install", str(pki.bundle), "--config", str(config)],
                                 capture_output=True, text=True, timeout=30)
        assert refused.returncode == 1 and "certificates are obtained over ACME" in refused.stderr
        time.sleep(2.5)  # two more checks: a certificate with years left is not renewed
        assert served(https_port)[1] == first
        assert app.log().count("acme: installed a certificate") == 1

        # The renewal window opens (as it would 30 days before expiry): a new certificate is obtained and served.
        app.proxy_table["acme"]["renew_days"] = 3650
        app.write()
        app.signal(signal.SIGHUP)
        wait_for(lambda: served(https_port)[1] not in ("", first), 30, "a renewed certificate served", app.log)
        assert "it expires in" in app.log()

        # The ACME server goes away: renewals fail, are logged and counted, and the last good certificate stays.
        pebble.stop()
        wait_for(lambda: "acme: could not obtain a certificate" in app.log(), 30, "a failed renewal logged",
                 app.log)
        last_good = bundle.read_bytes()
        current = served(https_port)
        assert current[0].startswith("CN = Pebble Intermediate") and current[1] != first
        wait_for(lambda: metric(management, 'rpturn_proxy_acme_events_total{event="failed"}') >= 1, 10,
                 "the failure counted in /metrics")
        assert bundle.read_bytes() == last_good
        assert "Traceback" not in app.log()
    finally:
        app.stop()
        pebble.stop()
