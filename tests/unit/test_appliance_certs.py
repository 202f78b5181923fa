"""`appliance.certs`: the bundle checks and the inspection behind `rpturn check` / `cert show` / `cert install`,
on certificates made by a throwaway test CA (tests.support.revproxy_process.Pki)."""

from __future__ import annotations

import datetime
import ssl

import pytest

from appliance import certs
from appliance.certs import Problem, Severity
from tests.support.revproxy_process import Pki

DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)


def problems(inspection: certs.Inspection) -> list[tuple[Severity, Problem]]:
    return [(f.severity, f.problem) for f in inspection.findings]


def test_good_bundle_has_no_findings_and_reads(pki):
    one_year = (-HOUR, 365 * DAY)
    cert, key = pki.issue(("meet.example.com", "localhost"), valid=one_year)
    data = cert + key + pki.intermediate_pem
    got = certs.inspect_bundle(data, "meet.example.com")
    assert got.findings == () and got.ok and got.bundle is not None
    assert certs.parse_bundle(data).chain == got.bundle.chain


def test_description_names_subject_chain_expiry_and_key(pki):
    data = pki.leaf_pem + pki.key_pem + pki.intermediate_pem
    d = certs.inspect_bundle(data).description
    assert d is not None
    assert d.subject == "CN=localhost" and d.names == ("localhost", "127.0.0.1")
    assert d.issuers == ("CN=rpturn test intermediate", "CN=rpturn test root")
    assert (d.key_type, d.key_bits, d.self_signed) == ("EC P-256", 256, False)
    assert 89 * DAY < d.not_after - datetime.datetime.now(datetime.UTC) <= 90 * DAY
    assert len(d.sha256.split(":")) == 32


def test_description_of_an_rsa_key(pki):
    cert, key = pki.issue(("localhost",), rsa_bits=2048)
    d = certs.inspect_bundle(cert + key + pki.intermediate_pem).description
    assert d is not None and (d.key_type, d.key_bits) == ("RSA", 2048)


@pytest.mark.parametrize(("parts", "problem", "words"), [
    (lambda p: (p.key_pem, p.leaf_pem, p.intermediate_pem), Problem.ORDER, "wrong order (PRIVATE KEY, CERTIFICATE"),
    (lambda p: (p.leaf_pem, p.intermediate_pem, p.key_pem), Problem.ORDER, "wrong order"),
    (lambda p: (p.leaf_pem, p.other_key_pem, p.intermediate_pem), Problem.KEY_MISMATCH, "does not match"),
    (lambda p: (p.leaf_pem, p.encrypted_key_pem, p.intermediate_pem), Problem.ENCRYPTED_KEY, "encrypted"),
    (lambda p: (p.leaf_pem, p.key_pem, p.other_key_pem), Problem.KEY_COUNT, "found 2"),
    (lambda p: (p.leaf_pem, p.intermediate_pem), Problem.KEY_COUNT, "found 0"),
    (lambda p: (b"\x00\xff binary junk \x89PNG",), Problem.NO_PEM, "no PEM blocks"),
])
def test_structural_problem_is_an_error_and_refused_by_read_bundle(pki, tmp_path, parts, problem, words):
    data = b"".join(parts(pki))
    got = certs.inspect_bundle(data)
    assert (Severity.ERROR, problem) in problems(got) and not got.ok and got.bundle is None
    assert any(words in f.message for f in got.findings)
    path = tmp_path / "bundle.pem"
    path.write_bytes(data)
    with pytest.raises(certs.BundleError) as e:
        certs.read_bundle(str(path))
    assert str(e.value).startswith(f"{path}: ")


def test_key_matching_another_certificate_says_so(pki):
    got = certs.inspect_bundle(pki.intermediate_pem + pki.key_pem + pki.leaf_pem)
    mismatch = [f for f in got.findings if f.problem is Problem.KEY_MISMATCH]
    assert mismatch and "it matches CN=localhost: wrong order?" in mismatch[0].message


def test_intermediates_out_of_order_are_an_error(pki, tmp_path):
    extra = Pki(tmp_path)
    got = certs.inspect_bundle(pki.leaf_pem + pki.key_pem + extra.intermediate_pem + pki.intermediate_pem)
    assert (Severity.ERROR, Problem.CHAIN_ORDER) in problems(got)


def test_every_problem_is_reported_at_once(pki):
    cert, _ = pki.issue(("old.example.com",), valid=(-10 * DAY, -DAY))
    got = certs.inspect_bundle(cert + pki.encrypted_key_pem, "meet.example.com")
    assert {p for _, p in problems(got)} >= {Problem.ENCRYPTED_KEY, Problem.EXPIRED, Problem.HOSTNAME}
    assert got.description is not None and got.description.names == ("old.example.com",)


def test_intermediate_with_the_right_name_but_another_key_is_an_error(pki, tmp_path):
    other_generation = Pki(tmp_path)  # its intermediate has the same name, and its own key
    got = certs.inspect_bundle(pki.leaf_pem + pki.key_pem + other_generation.intermediate_pem)
    assert problems(got) == [(Severity.ERROR, Problem.CHAIN_SIGNATURE)]
    assert got.findings[0].message.startswith("CN=localhost is not signed by the key of the next certificate "
                                              "(CN=rpturn test intermediate, serial ")


def test_expired_certificate_is_an_error_but_still_loads(pki, tmp_path):
    cert, key = pki.issue(valid=(-10 * DAY, -DAY))
    got = certs.inspect_bundle(cert + key + pki.intermediate_pem)
    assert problems(got) == [(Severity.ERROR, Problem.EXPIRED)]
    assert "the server certificate expired on" in got.findings[0].message
    path = pki.write("expired.pem", cert, key, pki.intermediate_pem)
    assert certs.read_bundle(str(path)).leaf.not_valid_after_utc < datetime.datetime.now(datetime.UTC)


def test_not_yet_valid_is_an_error(pki):
    cert, key = pki.issue(valid=(DAY, 90 * DAY))
    assert problems(certs.inspect_bundle(cert + key + pki.intermediate_pem)) == [
        (Severity.ERROR, Problem.NOT_YET_VALID)]


@pytest.mark.parametrize(("days_left", "expected"), [
    (45, []),
    (31, []),
    (29, [(Severity.WARNING, Problem.EXPIRING)]),
    (1, [(Severity.WARNING, Problem.EXPIRING)]),
])
def test_expiring_within_30_days_is_a_warning(pki, days_left, expected):
    data = pki.leaf_pem + pki.key_pem + pki.intermediate_pem
    leaf_end = certs.parse_bundle(data).leaf.not_valid_after_utc
    got = certs.inspect_bundle(data, now=leaf_end - days_left * DAY)
    assert problems(got) == expected and got.ok
    if expected:
        assert str(got.findings[0]).startswith("warning: the server certificate expires in")


def test_expiring_intermediate_is_named(pki):
    data = pki.leaf_pem + pki.key_pem + pki.intermediate_pem
    end = certs.inspect_bundle(pki.intermediate_pem).description.not_after
    got = certs.inspect_bundle(data, now=end - 2 * DAY + HOUR)
    assert [str(f) for f in got.findings][1:] == [
        f"warning: intermediate CN=rpturn test intermediate expires in 1 day ({end:%Y-%m-%d %H:%M} UTC)"]
    assert problems(got)[0] == (Severity.ERROR, Problem.EXPIRED)


@pytest.mark.parametrize(("hostname", "names", "match"), [
    ("meet.example.com", ("meet.example.com",), True),
    ("MEET.Example.com.", ("meet.example.com",), True),
    ("meet.example.com", ("*.example.com",), True),
    ("a.meet.example.com", ("*.example.com",), False),   # a wildcard covers one label
    ("example.com", ("*.example.com",), False),
    ("meet.example.com", ("m*.example.com",), False),    # partial-label wildcards are not honoured
    ("meet.example.com", ("other.example.com", "*.example.org"), False),
    ("192.0.2.7", ("192.0.2.7",), True),
    ("192.0.2.7", ("*.0.2.7",), False),
    ("2001:db8::1", ("2001:db8:0::1",), True),
    ("192.0.2.7", (), False),
])
def test_hostname_matching_follows_rfc_6125(hostname, names, match):
    assert certs.hostname_matches(hostname, names) is match


def test_hostname_not_among_names_is_an_error_or_a_warning_when_only_guessed(pki):
    data = pki.leaf_pem + pki.key_pem + pki.intermediate_pem
    got = certs.inspect_bundle(data, "meet.example.com")
    assert problems(got) == [(Severity.ERROR, Problem.HOSTNAME)]
    assert "'meet.example.com' is not among the certificate's names (localhost, 127.0.0.1)" in got.findings[0].message
    guessed = certs.inspect_bundle(data, "meet.example.com", hostname_guessed=True)
    assert problems(guessed) == [(Severity.WARNING, Problem.HOSTNAME)] and guessed.ok
    assert certs.inspect_bundle(data, "127.0.0.1").findings == ()


def test_certificate_without_subject_alt_name_matches_nothing(pki):
    cert, key = pki.issue(names=(), by="self")
    got = certs.inspect_bundle(cert + key, "localhost")
    assert problems(got) == [(Severity.ERROR, Problem.HOSTNAME)]
    assert "no subjectAltName" in got.findings[0].message


def test_missing_intermediate_is_an_error(pki):
    got = certs.inspect_bundle(pki.leaf_pem + pki.key_pem)
    assert problems(got) == [(Severity.ERROR, Problem.MISSING_INTERMEDIATE)]
    assert "CN=rpturn test intermediate" in got.findings[0].message and got.bundle is not None


def test_self_signed_certificate_needs_no_intermediate(pki):
    cert, key = pki.issue(by="self", valid=(-HOUR, 365 * DAY))
    got = certs.inspect_bundle(cert + key, "localhost")
    assert got.findings == () and got.description is not None and got.description.self_signed


@pytest.mark.parametrize(("make", "words"), [
    (lambda tmp: tmp / "nope.pem", "file not found"),
    (lambda tmp: tmp, "is a directory"),
])
def test_unreadable_file_is_one_error(tmp_path, make, words):
    got = certs.inspect_file(str(make(tmp_path)))
    assert problems(got) == [(Severity.ERROR, Problem.UNREADABLE)] and words in got.findings[0].message
    with pytest.raises(certs.BundleError, match=words):
        certs.read_bundle(str(make(tmp_path)))


def test_server_context_sends_tls12_or_better_and_reload_keeps_the_old_on_error(pki, tmp_path):
    server = certs.ServerTLS(str(pki.bundle))
    assert server.context.minimum_version == ssl.TLSVersion.TLSv1_2
    before = server.context
    bad = pki.write("bad.pem", pki.key_pem, pki.leaf_pem)
    with pytest.raises(certs.BundleError, match="wrong order"):
        server.reload(str(bad))
    assert server.context is before and server.path == str(pki.bundle)


def test_self_signed_is_generated_once_and_replaced_for_a_new_hostname(tmp_path):
    path = str(tmp_path / "state" / "self.pem")
    certs.ensure_self_signed(path, "a.example.com")
    first = certs.read_file(path)
    certs.ensure_self_signed(path, "a.example.com")
    assert certs.read_file(path) == first
    certs.ensure_self_signed(path, "b.example.com")
    assert certs.read_bundle(path).leaf != certs.parse_bundle(first).leaf
    assert certs.inspect_file(path, "b.example.com").findings == ()
