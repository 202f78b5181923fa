"""Configuration and certificate problems: one clear message naming the file, the key and the problem; the real
twistd exits non-zero without a traceback. Also: options override the file; the self-signed fallback is kept."""

import ssl

import pytest

from appliance import certs
from revproxy import config, tap
from revproxy.config import ConfigError
from tests.support.revproxy_process import Pki, ProxyProcess, free_port, run_twistd, write_config


def good(**extra):
    return {"https": "127.0.0.1:8443", "nodes": ["127.0.0.2:443"], **extra}


def test_defaults_from_a_minimal_table():
    c = config.from_table(good(), "x.toml")
    assert c.access_log is True and config.from_table(good(access_log="/var/log/a.log")).access_log == "/var/log/a.log"
    assert (c.connect_timeout, c.api_connect_timeout, c.fail_timeout, c.max_body_size) == (3, 20, 10, 15 << 20)
    assert (c.balance, c.webapp_path, c.workers, c.health_check) == ("round_robin", "/webapp/", 1, "")


@pytest.mark.parametrize(("table", "key", "words"), [
    (good(colour="red"), "colour", "unknown key"),
    (good(nodes=[]), "nodes", "non-empty list"),
    (good(nodes=["127.0.0.2:99999"]), "nodes", "port must be"),
    (good(nodes=["127.0.0.2:443", "127.0.0.2:443"]), "nodes", "listed twice"),
    (good(weights={"10.0.0.1:443": 2}), "weights", "not one of the nodes"),
    (good(balance="random"), "balance", "round_robin, client_ip"),
    (good(connect_timeout=0), "connect_timeout", "positive number"),
    (good(https="localhost:443"), "https", "numeric address"),
    (good(webapp_path="webapp"), "webapp_path", "start and end with '/'"),
    (good(max_body_size="15M"), "max_body_size", "whole number"),
    (good(workers=0), "workers", "1-256"),
    (good(verify_nodes="yes"), "verify_nodes", "expected true or false, got 'yes'"),
    (good(access_log=""), "access_log", "true or false or a file path"),
    (good(access_log=1), "access_log", "true or false or a file path"),
])
def test_each_bad_value_names_the_file_and_key(table, key, words):
    with pytest.raises(ConfigError) as e:
        config.from_table(table, "conf/x.toml")
    assert str(e.value).startswith(f"conf/x.toml: [revproxy] {key}: ") and words in str(e.value)


def test_options_override_the_file(tmp_path):
    path = write_config(tmp_path / "c.toml", good(balance="round_robin"))
    opts = tap.Options()
    opts.parseOptions(["--config", str(path), "--balance", "client_ip", "--node", "127.0.0.7:8443",
                       "--node", "127.0.0.8:8443", "--workers", "2"])
    c = config.load(str(path), opts.overrides())
    assert c.balance == "client_ip" and c.workers == 2
    assert [n.name for n in c.nodes] == ["127.0.0.7:8443", "127.0.0.8:8443"]


def test_twistd_exits_nonzero_with_one_clear_line_on_bad_config(tmp_path):
    path = write_config(tmp_path / "bad.toml", good(nodes="127.0.0.2:443"))
    r = run_twistd(path)
    assert r.returncode != 0
    assert f"{path}: [revproxy] nodes: expected a non-empty list" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize(("parts", "words"), [
    (lambda p: (p.key_pem, p.leaf_pem, p.intermediate_pem), "wrong order"),
    (lambda p: (p.leaf_pem, p.other_key_pem, p.intermediate_pem), "does not match"),
    (lambda p: (p.leaf_pem, p.encrypted_key_pem, p.intermediate_pem), "encrypted"),
    (lambda p: (p.intermediate_pem, p.key_pem, p.leaf_pem), "does not match"),
])
def test_bad_bundle_is_refused_at_start_with_one_clear_message(pki, tmp_path, parts, words):
    bundle = pki.write("bad.pem", *parts(pki))
    path = write_config(tmp_path / "c.toml", good(https=f"127.0.0.1:{free_port()}", http="",
                                                  certificate=str(bundle)))
    r = run_twistd(path)
    assert r.returncode != 0
    assert f"[revproxy] certificate: {bundle}: " in r.stderr and words in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_missing_certificate_file_is_refused(tmp_path):
    path = write_config(tmp_path / "c.toml", good(http="", certificate=str(tmp_path / "nope.pem")))
    r = run_twistd(path)
    assert r.returncode != 0 and "nope.pem: file not found" in r.stderr


def test_intermediates_out_of_order_are_refused(pki, tmp_path):
    extra = Pki(tmp_path)  # a second, unrelated intermediate placed between leaf and its issuer
    bundle = pki.write("order.pem", pki.leaf_pem, pki.key_pem, extra.intermediate_pem, pki.intermediate_pem)
    with pytest.raises(certs.BundleError, match="is not issued by the next certificate"):
        certs.read_bundle(str(bundle))


def test_self_signed_certificate_is_generated_for_hostname_and_kept(tmp_path):
    port = free_port()
    kept = tmp_path / "state" / "self.pem"
    path = write_config(tmp_path / "c.toml", good(https=f"127.0.0.1:{port}", http="", hostname="rpturn.test",
                                                  self_signed=str(kept)))
    first = ProxyProcess(path, port)
    try:
        pem = ssl.get_server_certificate(("127.0.0.1", port))
    finally:
        first.stop()
    content = kept.read_bytes()
    assert (kept.stat().st_mode & 0o777) == 0o600
    second = ProxyProcess(path, port)
    try:
        assert ssl.get_server_certificate(("127.0.0.1", port)) == pem
    finally:
        second.stop()
    assert kept.read_bytes() == content
    kept_bundle = certs.read_bundle(str(kept))
    assert "rpturn.test" in kept_bundle.leaf.subject.rfc4514_string() and kept_bundle.chain == ()
