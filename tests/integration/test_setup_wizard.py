"""`rpturn setup` as an operator uses it: in a real terminal (tmux) through every question, wrong answers included,
then re-run from the config it wrote; from an answers file; and on a pipe (a serial console without a TTY)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tomllib
from pathlib import Path

import tomlkit

from relay.config import load_relay_config
from tests.support.net import free_port
from tests.support.processes import RPTURN
from tests.support.revproxy_process import ROOT
from tests.support.tmux import Terminal

PASSWORD = "goodpassword1"


def base_config(tmp_path: Path) -> Path:
    """The sample config with loopback ports free here, so `rpturn check` at the end can bind them."""
    doc = tomlkit.parse((ROOT / "conf" / "rpturn.toml").read_text())
    doc["relay"]["listen"] = [f"127.0.0.1:{free_port()}"]
    doc["revproxy"]["https"] = f"127.0.0.1:{free_port()}"
    doc["revproxy"]["http"] = f"127.0.0.1:{free_port()}"
    doc["revproxy"]["self_signed"] = str(tmp_path / "selfsigned.pem")
    path = tmp_path / "rpturn.toml"
    path.write_text(tomlkit.dumps(doc))
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def userdb_key(path: Path, user: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(f"{user}:"):
            return line.split(":", 1)[1]
    raise AssertionError(f"no {user} in {path}")


def rejected(term: Terminal, reason: str, count: int) -> None:
    """The wizard said why the last answer was wrong (the `count`-th refusal so far) and asks again."""
    screen = term.expect("not accepted", count=count)
    assert reason in screen.split("not accepted")[count], screen


def refused(term: Terminal, wrong: str, reason: str, count: int, then: str) -> None:
    """Answer `wrong`, see it refused for `reason` (the `count`-th refusal so far), then answer `then`."""
    term.send(wrong)
    rejected(term, reason, count)
    term.send(then)


def test_wizard_in_a_terminal_every_question_wrong_answers_then_rerun(tmp_path):
    config = base_config(tmp_path)
    original = config.read_text()
    management = f"127.0.0.1:{free_port()}"
    with Terminal([RPTURN, "setup", "--config", str(config)], cwd=str(tmp_path)) as term:
        term.expect(r"Hostname of this appliance \(FQDN\): ")
        refused(term, "meet", "not fully qualified", 1, then="meet.example.com")
        term.expect("Enter on the first line keeps: 10.40.0.10:443, 10.40.0.11:443")
        term.expect("node 1: ")
        refused(term, "bad node!", "'bad node!'", 2, then="10.0.0.1")  # the reason names the refused input
        term.expect("node 2: ")
        refused(term, "10.0.0.1", "already listed", 3, then="10.0.0.2:8443")
        term.expect("node 3: ")
        term.send("")
        term.expect(r"TURN mode \[restricted\]: ")
        refused(term, "open", "expected restricted, client or disabled", 4, then="restricted")
        term.expect(r"TURN username \(the nodes' TURN credentials\) \[pexip\]: ")
        refused(term, "bad:name", "cannot contain ':'", 5, then="nodeuser")
        term.expect(r"TURN password for nodeuser .*Enter: generate one\): ")
        refused(term, "short", "at least 8 characters", 6, then=PASSWORD)
        term.expect("Again: ")
        refused(term, "different-one", "the two passwords differ", 7, then=PASSWORD)
        term.expect("Again: ", count=2)
        term.send(PASSWORD)
        term.expect(r"TURN on the HTTPS port too .*\[no\]: ")
        refused(term, "maybe", "expected yes or no", 8, then="yes")
        term.expect(r"Management listener .*\[127\.0\.0\.1:9641\]: ")
        refused(term, "localhost:9641", "not an IP address", 9, then=management)
        term.expect(r"PIN guard: .*\[yes\]: ")
        refused(term, "perhaps", "expected yes or no", 10, then="")
        screen = term.expect(r"Write this configuration\? yes / no \(ask again\) / quit \[yes\]: ")
        assert "TURN clients         10.0.0.1/32, 10.0.0.2/32" in screen
        assert "password new, as typed" in screen
        refused(term, "whatever", "expected yes, no or quit", 11, then="no")  # again: every answer is now the default
        term.expect(r"Hostname of this appliance \(FQDN\) \[meet\.example\.com\]: ")
        term.send("")
        term.expect("Enter on the first line keeps: 10.0.0.1:443, 10.0.0.2:8443")
        term.send("")
        term.expect(r"TURN mode \[restricted\]: ", count=3)
        term.send("")
        term.expect(r"\[nodeuser\]: ")
        term.send("")
        term.expect("Enter: keep the one typed before")
        term.send("")
        for prompt in (r"HTTPS port too .*\[yes\]: ", rf"Management listener .*\[{management}\]: ",
                       r"PIN guard: .*\[yes\]: "):
            term.expect(prompt)
            term.send("")
        term.expect(r"Write this configuration\?", count=2)
        term.send("y")
        status = term.exit_status()
        screen = term.screen()
    assert status == 0, screen
    assert PASSWORD not in screen and "different-one" not in screen  # passwords are not echoed
    assert f"wrote {config} (previous kept as {config}.bak)" in screen

    text = config.read_text()
    assert text.startswith("# Written by rpturn setup on ")
    doc = tomllib.loads(text)
    userdb = tmp_path / "turnuserdb.conf"
    assert doc["relay"]["userdb"] == str(userdb)
    assert "users" not in doc["relay"] and "admin123" not in text  # no password in the config
    assert doc["relay"]["turn_clients"] == ["10.0.0.1/32", "10.0.0.2/32"]
    assert doc["revproxy"]["hostname"] == "meet.example.com"
    assert doc["revproxy"]["nodes"] == ["10.0.0.1:443", "10.0.0.2:8443"]
    assert doc["revproxy"]["turn_on_https"] is True
    assert doc["revproxy"]["pin_guard"]["enabled"] is True
    assert doc["management"]["listen"] == management
    assert doc["relay"]["listen"] == tomllib.loads(original)["relay"]["listen"]  # untouched keys stay
    realm = doc["relay"]["realm"]
    assert userdb_key(userdb, "nodeuser") == "0x" + hashlib.md5(f"nodeuser:{realm}:{PASSWORD}".encode()).hexdigest()
    assert mode_of(userdb) == 0o600
    assert Path(f"{config}.bak").read_text() == original
    assert Path(f"{config}.orig").read_text() == original  # kept once, for `rpturn reset`

    # Re-run: every default comes from what was written; Enter everywhere changes nothing but the header.
    key_before = userdb_key(userdb, "nodeuser")
    written = config.read_text()
    with Terminal([RPTURN, "setup", "--config", str(config)], cwd=str(tmp_path)) as term:
        for prompt in (r"\(FQDN\) \[meet\.example\.com\]: ", "node 1: ", r"TURN mode \[restricted\]: ",
                       r"\[nodeuser\]: ", "Enter: keep the current one", r"HTTPS port too .*\[yes\]: ",
                       rf"\[{management}\]: ", r"PIN guard: .*\[yes\]: ", r"Write this configuration\?"):
            term.expect(prompt)
            term.send("")
        status = term.exit_status()
        screen = term.screen()
    assert status == 0, screen
    assert "Enter on the first line keeps: 10.0.0.1:443, 10.0.0.2:8443" in screen
    assert "password unchanged" in screen
    assert tomllib.loads(config.read_text()) == doc
    assert userdb_key(userdb, "nodeuser") == key_before
    assert Path(f"{config}.bak").read_text() == written
    assert Path(f"{config}.orig").read_text() == original


def run_setup(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([RPTURN, "setup", *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_answers_file_client_mode_writes_a_0600_secret(tmp_path):
    config = base_config(tmp_path)
    answers = tmp_path / "answers.toml"
    answers.write_text('hostname = "turn.example.org"\nnodes = ["10.1.0.5", "node2.example.org:443"]\n'
                       'turn_mode = "client"\nturn_password = "automation-pw"\nturn_on_https = false\n'
                       'management = "off"\npin_guard = false\n')
    result = run_setup("--config", str(config), "--answers", str(answers))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "automation-pw" not in result.stdout
    doc = tomllib.loads(config.read_text())
    secrets_file = tmp_path / "turn-secrets"
    assert doc["relay"]["turn_clients"] == [] and doc["relay"]["auth_secrets_file"] == str(secrets_file)
    assert doc["revproxy"]["nodes"] == ["10.1.0.5:443", "node2.example.org:443"]
    assert doc["revproxy"]["pin_guard"]["enabled"] is False and doc["management"]["listen"] == ""
    secret_lines = [s for s in secrets_file.read_text().splitlines() if not s.startswith("#")]
    assert len(secret_lines) == 1 and len(bytes.fromhex(secret_lines[0])) == 32
    assert mode_of(secrets_file) == 0o600
    # A second run keeps the secret (the platform holds it) and, with no password given, the user's key.
    key = userdb_key(tmp_path / "turnuserdb.conf", "pexip")
    answers.write_text('turn_mode = "client"\n')
    assert run_setup("--config", str(config), "--answers", str(answers)).returncode == 0
    assert [s for s in secrets_file.read_text().splitlines() if not s.startswith("#")] == secret_lines
    assert userdb_key(tmp_path / "turnuserdb.conf", "pexip") == key


def test_answers_file_is_validated_like_the_prompts_and_nothing_is_written(tmp_path):
    config = base_config(tmp_path)
    before = config.read_text()
    answers = tmp_path / "answers.toml"
    for content, message in [
        ('hostname = "meet"\nnodes = ["10.0.0.1"]\n', "answers.toml: hostname: 'meet' is not fully qualified"),
        ('hostname = "a.example.com"\nnodes = ["10.0.0.1", "10.0.0.1:443"]\n', "nodes: 10.0.0.1:443 is listed twice"),
        ('hostname = "a.example.com"\nnodes = ["n.example.com"]\nturn_mode = "restricted"\n',
         "turn_mode: restricted mode lets only the nodes' addresses use TURN"),
        ('hostname = "a.example.com"\nnodes = ["10.0.0.1"]\nturn_password = "x"\n', "turn_password: at least 8"),
        ('hostname = "a.example.com"\nnodes = ["10.0.0.1"]\ncolour = "blue"\n', "colour: unknown answer"),
    ]:
        answers.write_text(content)
        result = run_setup("--config", str(config), "--answers", str(answers))
        assert result.returncode == 1 and message in result.stderr, (content, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert config.read_text() == before
    assert not (tmp_path / "turnuserdb.conf").exists() and not Path(f"{config}.bak").exists()


def test_plain_pipe_works_and_input_ending_early_writes_nothing(tmp_path):
    config = base_config(tmp_path)
    before = config.read_text()
    result = run_setup("--config", str(config), stdin="meet.example.com\n10.0.0.1\n\n")
    assert result.returncode == 1
    assert "input ended before the wizard finished; nothing was written" in result.stderr
    assert config.read_text() == before
    answers = "meet.example.com\n10.0.0.1\n\ndisabled\nno\noff\nno\nyes\n"
    result = run_setup("--config", str(config), stdin=answers)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = tomllib.loads(config.read_text())
    assert doc["relay"]["turn"] is False and "turn_clients" not in doc["relay"]
    assert load_relay_config(str(config)).turn is False  # the relay takes what the wizard wrote
    assert (tmp_path / "turnuserdb.conf").exists()  # the relay wants a userdb, even without users


def test_client_mode_over_a_pipe_warns_about_the_dmz_and_shows_a_generated_password_once(tmp_path):
    config = base_config(tmp_path)
    answers = "meet.example.com\n10.0.0.1\n\nclient\n\n\nno\noff\nno\nyes\n"
    result = run_setup("--config", str(config), stdin=answers)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING: Client TURN lets anyone with valid time-limited credentials relay through this host: it must " \
           "sit in a DMZ" in result.stdout
    generated = result.stdout.split("generated password: ", 1)[1].split()[0]
    realm = tomllib.loads(config.read_text())["relay"]["realm"]
    key = "0x" + hashlib.md5(f"pexip:{realm}:{generated}".encode()).hexdigest()
    assert userdb_key(tmp_path / "turnuserdb.conf", "pexip") == key
    assert generated not in config.read_text()
