"""The set-up wizard's pure parts: validators, pre-filling from a config, applying answers to the TOML document."""

from __future__ import annotations

import tomllib

import pytest

from appliance import wizard
from appliance.wizard import Answers, Paths, TurnMode


@pytest.mark.parametrize("text, expected", [
    ("meet.example.com", "meet.example.com"),
    ("  Meet.Example.COM. ", "meet.example.com"),
    ("a-b.c1.example", "a-b.c1.example"),
])
def test_hostname_accepts_fqdns(text, expected):
    assert wizard.validate_hostname(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("meet", "not fully qualified"),
    ("10.0.0.1", "an address"),
    ("-a.example.com", "not a valid DNS label"),
    ("a_b.example.com", "not a valid DNS label"),
    ("x" * 64 + ".com", "not a valid DNS label"),
    ("", "needed"),
])
def test_hostname_rejects_with_a_reason(text, reason):
    with pytest.raises(ValueError, match=reason):
        wizard.validate_hostname(text)


@pytest.mark.parametrize("text, expected", [
    ("10.40.0.10", "10.40.0.10:443"),
    ("10.40.0.10:8443", "10.40.0.10:8443"),
    ("fd00::10", "[fd00::10]:443"),
    ("[fd00::10]:444", "[fd00::10]:444"),
    ("Node1.Example.com", "node1.example.com:443"),
])
def test_node_is_normalised(text, expected):
    assert wizard.validate_node(text) == expected


@pytest.mark.parametrize("text", ["bad node!", "10.0.0.1:0", "10.0.0.1:99999", "0.0.0.0", "224.0.0.1:443",
                                  "[fd00::1", "node:abc"])
def test_node_rejects_garbage(text):
    with pytest.raises(ValueError):
        wizard.validate_node(text)


def test_mode_by_word_letter_or_number():
    assert wizard.validate_mode("Client") is TurnMode.CLIENT
    assert wizard.validate_mode("d") is TurnMode.DISABLED
    assert wizard.validate_mode("1") is TurnMode.RESTRICTED
    with pytest.raises(ValueError, match="restricted, client or disabled"):
        wizard.validate_mode("open")


def test_restricted_mode_needs_node_addresses():
    with pytest.raises(ValueError, match=r"node\.example\.com:443 is a name"):
        wizard.validate_mode_for_nodes(TurnMode.RESTRICTED, ["10.0.0.1:443", "node.example.com:443"])
    assert wizard.validate_mode_for_nodes(TurnMode.CLIENT, ["node.example.com:443"]) is TurnMode.CLIENT


def test_password_and_management_rules():
    with pytest.raises(ValueError, match="at least 8"):
        wizard.validate_password("short")
    with pytest.raises(ValueError, match="spaces"):
        wizard.validate_password(" leading-space")
    assert wizard.validate_management("off") == ""
    assert wizard.validate_management("[::1]:9641") == "[::1]:9641"
    with pytest.raises(ValueError, match="no port"):
        wizard.validate_management("127.0.0.1")
    with pytest.raises(ValueError, match="not an IP address"):
        wizard.validate_management("localhost:9641")


SAMPLE_LIKE = """\
# operator comment kept
[relay]
realm = "example.com"
auth_secrets = ["inline-secret"]
min_port = 40000

[relay.users]
pexip = "admin123"

[revproxy]
nodes = ["10.40.0.10:443", "10.40.0.11:443"]
weights = { "10.40.0.10:443" = 2, "10.40.0.11:443" = 3 }
"""


def answers(**changes) -> Answers:
    a = Answers(hostname="meet.example.com", nodes=("10.40.0.10:443", "[fd00::5]:443"))
    for k, v in changes.items():
        setattr(a, k, v)
    return a


PATHS = Paths("/etc/rpturn/turnuserdb.conf", "/etc/rpturn/turn-secrets")


def test_apply_restricted_sets_keys_and_moves_passwords_out():
    text = wizard.apply_answers(SAMPLE_LIKE, answers(), PATHS, "# Written by rpturn setup now\n")
    doc = tomllib.loads(text)
    assert text.startswith("# Written by rpturn setup now\n# operator comment kept\n")
    assert "users" not in doc["relay"] and "auth_secrets" not in doc["relay"]
    assert "admin123" not in text and "inline-secret" not in text
    assert doc["relay"]["min_port"] == 40000  # keys the wizard does not ask about survive
    assert doc["relay"]["userdb"] == PATHS.userdb
    assert doc["relay"]["turn_clients"] == ["10.40.0.10/32", "fd00::5/128"]
    assert "auth_secrets_file" not in doc["relay"]
    assert doc["revproxy"]["nodes"] == ["10.40.0.10:443", "[fd00::5]:443"]
    assert doc["revproxy"]["weights"] == {"10.40.0.10:443": 2}  # the removed node's weight goes too
    assert doc["revproxy"]["hostname"] == "meet.example.com"
    assert doc["revproxy"]["pin_guard"] == {"enabled": True}
    assert doc["management"] == {"listen": "127.0.0.1:9641"}


def test_apply_client_and_disabled_modes():
    doc = tomllib.loads(wizard.apply_answers(SAMPLE_LIKE, answers(turn_mode=TurnMode.CLIENT), PATHS, ""))
    assert doc["relay"]["turn_clients"] == [] and doc["relay"]["auth_secrets_file"] == PATHS.secrets
    text = wizard.apply_answers(SAMPLE_LIKE, answers(turn_mode=TurnMode.DISABLED), PATHS, "")
    doc = tomllib.loads(text)
    assert doc["relay"]["turn"] is False and "turn_clients" not in doc["relay"]
    assert wizard.current_answers(doc, []).turn_mode is TurnMode.DISABLED
    # and back: another mode removes `turn = false` again
    doc = tomllib.loads(wizard.apply_answers(text, answers(turn_mode=TurnMode.CLIENT), PATHS, ""))
    assert "turn" not in doc["relay"] and doc["relay"]["turn_clients"] == []


def test_the_old_never_seen_source_reads_as_disabled_and_is_rewritten_as_turn_off():
    legacy = SAMPLE_LIKE.replace("[relay]\n", '[relay]\nturn_clients = ["0.0.0.0/32"]\n', 1)
    assert wizard.current_answers(tomllib.loads(legacy), []).turn_mode is TurnMode.DISABLED
    doc = tomllib.loads(wizard.apply_answers(legacy, answers(turn_mode=TurnMode.DISABLED), PATHS, ""))
    assert doc["relay"]["turn"] is False and "turn_clients" not in doc["relay"]


def test_a_rerun_replaces_the_header_and_prefills_every_answer():
    first = answers(turn_mode=TurnMode.CLIENT, turn_on_https=True, management="", pin_guard=False,
                    turn_user="nodeuser")
    text = wizard.apply_answers(SAMPLE_LIKE, first, PATHS, "# Written by rpturn setup one\n")
    again = wizard.apply_answers(text, first, PATHS, "# Written by rpturn setup two\n")
    assert again.count("# Written by rpturn setup") == 1
    current = wizard.current_answers(tomllib.loads(again), ["nodeuser"])
    assert (current.hostname, current.nodes, current.turn_mode, current.turn_user, current.turn_on_https,
            current.management, current.pin_guard) == (
        "meet.example.com", ("10.40.0.10:443", "[fd00::5]:443"), TurnMode.CLIENT, "nodeuser", True, "", False)


def test_prefill_from_the_sample_suggests_the_pin_guard_and_restricted_mode():
    current = wizard.current_answers(tomllib.loads(SAMPLE_LIKE), [])
    assert current.hostname is None  # no hostname in the file: the question has no default
    assert current.turn_mode is TurnMode.CLIENT  # auth_secrets and no turn_clients
    assert current.turn_user == "pexip" and current.pin_guard is True
    plain = wizard.current_answers({"revproxy": {"nodes": ["10.0.0.1:443"]}}, [])
    assert plain.turn_mode is TurnMode.RESTRICTED and plain.management == "127.0.0.1:9641"


def test_turn_on_https_no_leaves_the_default_out():
    on = wizard.apply_answers(SAMPLE_LIKE, answers(turn_on_https=True), PATHS, "")
    assert tomllib.loads(on)["revproxy"]["turn_on_https"] is True
    off = wizard.apply_answers(on, answers(turn_on_https=False), PATHS, "")
    assert "turn_on_https" not in tomllib.loads(off)["revproxy"]
