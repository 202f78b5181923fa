"""`rpturn cert show | install | rollback`: the HTTPS (and TURN-over-TLS) certificate, replaced safely.

- `show`: subject, names, issuer chain, validity, key type, fingerprint, and the findings `rpturn check` reports.
- `install BUNDLE` or `install --cert C --key K [--chain I ...]` (assembled as leaf, key, intermediates; a --cert
  file holding the leaf and its intermediates, like a fullchain.pem, works too): the bundle is inspected first
  (order, key match, unencrypted key, validity, the hostname among its names, intermediates present) and refused with
  every reason when it has an error. Then the current bundle is kept as `TARGET.previous`, the new one replaces
  TARGET atomically (0600), the running appliance is reloaded (SIGHUP through its pid file) and the HTTPS port is
  connected to until it serves the new certificate (three handshakes in a row, so every worker has it). If it does
  not within `--timeout`, the previous bundle goes back, the appliance is reloaded again, and the command says why
  and exits 1.
- `rollback`: swaps TARGET and TARGET.previous (so a second rollback undoes the first), reloads and checks.

TARGET is `[revproxy] certificate`; when that is unset (the self-signed built-in), it is `certificate.pem` beside the
config, the config is pointed at it, and the self-signed bundle becomes the `.previous` one.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import os
import socket
import ssl
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import tomlkit

from appliance import certs, running
from appliance.atomic import write_atomically
from appliance.cli import CommandError

HELP = "show, install or roll back the HTTPS certificate bundle (checked, reloaded, verified)"
INSTALLED_NAME = "certificate.pem"
CONSECUTIVE_MATCHES = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="cert_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="describe the current certificate and list its problems")
    install = sub.add_parser("install", help="check, install and reload a new bundle; roll back if not served")
    install.add_argument("bundle", nargs="?", metavar="BUNDLE", help="PEM: certificate, key, intermediates")
    install.add_argument("--cert", metavar="FILE", help="the server certificate (and maybe its intermediates)")
    install.add_argument("--key", metavar="FILE", help="its unencrypted private key")
    install.add_argument("--chain", metavar="FILE", action="append", default=[], help="intermediate(s), repeatable")
    rollback = sub.add_parser("rollback", help="go back to the previous bundle")
    for p in (show, install, rollback):
        p.add_argument("--config", default="conf/rpturn.toml", metavar="FILE", help="default: %(default)s")
    for p in (install, rollback):
        p.add_argument("--pidfile", default=running.default_pidfile(),
                       help="the running appliance's pid file (default: %(default)s)")
        p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the new certificate")


# --- the config's view of the certificate ---------------------------------------------------------------------


class Site:
    """What the config says about the certificate and where it is served."""

    def __init__(self, config: str) -> None:
        self.config = os.path.abspath(config)
        try:
            self.text = Path(self.config).read_text()
            document = tomllib.loads(self.text)
        except OSError as e:
            raise CommandError(f"{config}: cannot read: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise CommandError(f"{config}: not valid TOML: {e}") from None
        proxy = document.get("revproxy") if isinstance(document.get("revproxy"), dict) else {}
        mgmt = document.get("management") if isinstance(document.get("management"), dict) else {}
        self.management = mgmt.get("listen") if isinstance(mgmt.get("listen"), str) else None
        configured = _string(proxy, "certificate")
        self.configured = os.path.abspath(configured) if configured else None
        self.target = self.configured or os.path.join(os.path.dirname(self.config), INSTALLED_NAME)
        self.self_signed = os.path.abspath(_string(proxy, "self_signed") or "var/revproxy-selfsigned.pem")
        self.hostname = _string(proxy, "hostname")
        self.hostname_guessed = self.hostname is None
        if self.hostname is None:
            self.hostname = socket.getfqdn()
        https = _string(proxy, "https") or "0.0.0.0:443"
        self.https = running.connect_address(https)
        acme = proxy.get("acme") if isinstance(proxy.get("acme"), dict) else None
        self.acme_bundle = (os.path.join(os.path.abspath(_string(acme, "state_dir") or "var/acme"), "certificate.pem")
                            if acme is not None else None)

    @property
    def current(self) -> str:
        """The bundle being served (or that would be): ACME's once obtained, the configured one, the self-signed."""
        if self.acme_bundle is not None and os.path.exists(self.acme_bundle):
            return self.acme_bundle
        return self.configured or self.self_signed

    def inspect(self, data: bytes) -> certs.Inspection:
        return certs.inspect_bundle(data, self.hostname, hostname_guessed=self.hostname_guessed)

    def point_config_at_target(self) -> bool:
        """Set `[revproxy] certificate` to TARGET when it is not already; True when the config changed."""
        if self.configured == self.target:
            return False
        doc = tomlkit.parse(self.text)
        if "revproxy" not in doc:
            doc["revproxy"] = tomlkit.table()
        doc["revproxy"]["certificate"] = self.target
        write_atomically(self.config, tomlkit.dumps(doc).encode(), mode=_mode(self.config), keep_backup=True)
        return True

    def restore_config(self) -> None:
        write_atomically(self.config, self.text.encode(), mode=_mode(self.config))


def _string(table: dict[str, Any], key: str) -> str | None:
    value = table.get(key)
    return value if isinstance(value, str) and value else None


def _mode(path: str) -> int:
    return os.stat(path).st_mode & 0o777


def read(path: str) -> bytes:
    try:
        return certs.read_file(path)
    except certs.BundleError as e:
        raise CommandError(str(e)) from None


# --- show ---------------------------------------------------------------------------------------------------


def describe_lines(description: certs.Description) -> list[str]:
    days = (description.not_after - datetime.datetime.now(datetime.UTC)).days
    lines = [
        f"subject:     {description.subject}",
        f"names:       {', '.join(description.names) or '(none)'}",
        f"issuer:      {description.issuers[0]}" + ("  (self-signed)" if description.self_signed else ""),
    ]
    lines += [f"  then:      {issuer}" for issuer in description.issuers[1:]]
    lines += [
        f"valid:       {description.not_before:%Y-%m-%d %H:%M} UTC to {description.not_after:%Y-%m-%d %H:%M} UTC "
        f"({days} days left)" if days >= 0 else f"expired {-days} days ago",
        f"key:         {description.key_type}" + (f" {description.key_bits} bits" if description.key_bits else ""),
        f"serial:      {description.serial}",
        f"sha256:      {description.sha256}",
    ]
    return lines


def cmd_show(site: Site, args: argparse.Namespace) -> int:
    path = site.current
    if not site.configured and not os.path.exists(path):
        raise CommandError(f"no certificate yet: the built-in self-signed one ({path}) is made at the first start")
    origin = ("  (obtained over ACME)" if path == site.acme_bundle else
              "" if site.configured else "  (the built-in self-signed one)")
    print(f"certificate: {path}{origin}")
    inspection = site.inspect(read(path))
    if inspection.description is not None:
        for line in describe_lines(inspection.description):
            print(line)
    for finding in inspection.findings:
        print(f"{path}: {finding}")
    return 0 if inspection.ok else 1


# --- install and rollback -------------------------------------------------------------------------------------


def assemble(args: argparse.Namespace) -> bytes:
    """The bundle's bytes: BUNDLE as given, or --cert/--key/--chain in the order the services want."""
    if args.bundle and (args.cert or args.key or args.chain):
        raise CommandError("give either BUNDLE or --cert/--key/--chain, not both")
    if args.bundle:
        return read(args.bundle)
    if not args.cert or not args.key:
        raise CommandError("give BUNDLE, or --cert FILE and --key FILE (and --chain FILE for intermediates)")
    cert_blocks = _pem_blocks(read(args.cert))
    if not cert_blocks:
        raise CommandError(f"{args.cert}: no PEM certificate in it")
    key = read(args.key)
    chain = [block for path in args.chain for block in (_pem_blocks(read(path)) or [read(path)])]
    return b"".join([cert_blocks[0], key if key.endswith(b"\n") else key + b"\n", *cert_blocks[1:], *chain])


def _pem_blocks(data: bytes) -> list[bytes]:
    blocks, start = [], 0
    marker, end_marker = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    while (begin := data.find(marker, start)) >= 0:
        end = data.find(end_marker, begin)
        if end < 0:
            break
        start = end + len(end_marker)
        blocks.append(data[begin:start] + b"\n")
    return blocks


def served_certificate(address: tuple[str, int], server_name: str | None, timeout: float = 2.0) -> bytes | None:
    """The DER of the certificate the HTTPS port presents (no verification: we compare bytes), None on failure."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(address, timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError, ValueError):
        return None


def wait_until_served(site: Site, leaf_der: bytes, timeout: float) -> tuple[bool, str]:
    """Poll the HTTPS port until `leaf_der` is served CONSECUTIVE_MATCHES times in a row; (ok, what was seen)."""
    assert site.https is not None
    name = None if site.hostname is None or _is_address(site.hostname) else site.hostname
    deadline = time.monotonic() + timeout
    matches, seen = 0, "nothing answered"
    while time.monotonic() < deadline:
        der = served_certificate(site.https, name)
        if der == leaf_der:
            matches += 1
            if matches >= CONSECUTIVE_MATCHES:
                return True, "the new certificate"
            continue
        matches = 0
        if der is None:
            seen = f"no TLS handshake completed on {site.https[0]}:{site.https[1]}"
        else:
            from cryptography import x509
            from cryptography.hazmat.primitives import hashes

            cert = x509.load_der_x509_certificate(der)
            seen = f"still {cert.subject.rfc4514_string()} (sha256 {cert.fingerprint(hashes.SHA256()).hex()[:16]}...)"
        time.sleep(0.1)
    return False, seen


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def reload_and_verify(site: Site, args: argparse.Namespace, leaf_der: bytes) -> tuple[bool | None, str]:
    """(True, _) served; (False, why) not served; (None, why) the appliance could not be reloaded (not running)."""
    pid = running.pid_from_file(args.pidfile)
    if pid is None:
        state = running.detect(args.pidfile, site.management)
        if state:
            return False, (f"the appliance runs ({state.describe()}) but {args.pidfile} names no live twistd process, "
                           f"so it could not be reloaded")
        return None, f"the appliance is not running (no live pid in {args.pidfile}): it uses the bundle when it starts"
    running.reload(pid)
    ok, seen = wait_until_served(site, leaf_der, args.timeout)
    return ok, seen


def leaf_der_of(data: bytes) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return certs.parse_bundle(data).leaf.public_bytes(Encoding.DER)


def cmd_install(site: Site, args: argparse.Namespace) -> int:
    data = assemble(args)
    inspection = site.inspect(data)
    for finding in inspection.findings:
        print(f"new bundle: {finding}", file=sys.stderr if finding.severity is certs.Severity.ERROR else sys.stdout)
    if not inspection.ok or inspection.bundle is None:
        raise CommandError(f"the new bundle has {len(inspection.errors)} error(s) (above); nothing was changed")
    previous_path = site.target + ".previous"
    previous = _read_optional(site.target) or _read_optional(site.self_signed)
    if previous is not None:
        write_atomically(previous_path, previous, secret=True)
    write_atomically(site.target, data, secret=True)
    config_changed = site.point_config_at_target()
    print(f"installed {site.target}" + (f" (previous kept as {previous_path})" if previous is not None else ""))
    ok, why = reload_and_verify(site, args, leaf_der_of(data))
    if ok is None:
        print(why)
        return 0
    if ok:
        print(f"reloaded: {site.https[0]}:{site.https[1]} serves the new certificate "
              f"({inspection.description.sha256 if inspection.description else ''})")
        return 0
    # Not served: put everything back as it was and make the appliance use it again.
    if previous is not None:
        write_atomically(site.target, previous, secret=True)
    if config_changed:
        site.restore_config()
    pid = running.pid_from_file(args.pidfile)
    if pid is not None:
        running.reload(pid)
        if previous is not None:
            with contextlib.suppress(certs.BundleError):
                wait_until_served(site, leaf_der_of(previous), args.timeout)
    raise CommandError(f"the appliance did not serve the new certificate within {args.timeout:g} s ({why}): "
                       f"rolled back to the previous one")


def cmd_rollback(site: Site, args: argparse.Namespace) -> int:
    previous_path = site.target + ".previous"
    previous = _read_optional(previous_path)
    if previous is None:
        raise CommandError(f"no previous bundle ({previous_path} does not exist)")
    current = _read_optional(site.target)
    write_atomically(site.target, previous, secret=True)
    if current is not None:
        write_atomically(previous_path, current, secret=True)
    site.point_config_at_target()
    print(f"restored {site.target} from {previous_path}" + (" (swapped: rollback again to undo)" if current else ""))
    ok, why = reload_and_verify(site, args, leaf_der_of(previous))
    if ok is None:
        print(why)
        return 0
    if not ok:
        raise CommandError(f"the appliance did not serve the restored certificate within {args.timeout:g} s ({why})")
    print(f"reloaded: {site.https[0]}:{site.https[1]} serves the previous certificate again")
    return 0


def _read_optional(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CommandError(f"{path}: cannot read: {e.strerror}") from None


def run(args: argparse.Namespace) -> int:
    site = Site(args.config)
    if args.cert_command != "show" and site.https is None:
        raise CommandError(f"{site.config}: [revproxy] https: not an address:port to connect to")
    if args.cert_command != "show" and site.acme_bundle is not None:
        raise CommandError(f"{site.config}: [revproxy] acme: certificates are obtained over ACME; remove the acme key "
                           f"to install one by hand")
    return {"show": cmd_show, "install": cmd_install, "rollback": cmd_rollback}[args.cert_command](site, args)
