"""`rpturn reset`: after the wizard, back to the sample with users, secrets and certificates gone; it asks first,
asks about the logs, and refuses while the appliance runs (pid file or management listener) unless --force."""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.integration.test_setup_wizard import RPTURN, base_config, run_setup
from tests.support.net import free_port
from tests.support.revproxy_process import ROOT

SAMPLE = (ROOT / "conf" / "rpturn.toml").read_text()


def configured(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A config written by the wizard in client mode, plus the certificates the appliance would have made."""
    config = base_config(tmp_path)
    answers = tmp_path / "answers.toml"
    answers.write_text(f'hostname = "meet.example.com"\nnodes = ["10.0.0.1"]\nturn_mode = "client"\n'
                       f'management = "127.0.0.1:{free_port()}"\n')
    result = run_setup("--config", str(config), "--answers", str(answers))
    assert f"wrote {config}" in result.stdout, result.stdout + result.stderr
    acme = tmp_path / "acme"
    acme.mkdir()
    with config.open("a") as f:  # an ACME state as the appliance leaves it
        f.write(f'\n[revproxy.acme]\ndirectory = "https://127.0.0.1:1/dir"\nstate_dir = "{acme}"\n')
    made = [tmp_path / "turnuserdb.conf", tmp_path / "turn-secrets", tmp_path / "selfsigned.pem",
            tmp_path / "certificate.pem", tmp_path / "certificate.pem.previous", acme / "certificate.pem",
            acme / "account.key"]
    for path in made[2:]:
        path.write_text("-----BEGIN CERTIFICATE-----\n")
    assert all(p.exists() for p in made)
    return config, made


def reset(config: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([RPTURN, "reset", "--config", str(config), "--pidfile", str(config.parent / "none.pid"),
                           *args], input=stdin, capture_output=True, text=True, timeout=30)


def test_reset_yes_restores_the_sample_and_removes_users_secrets_and_certificates(tmp_path):
    config, made = configured(tmp_path)
    wizard_config = config.read_text()
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "twistd.log").write_text("x\n")
    result = reset(config, "--yes", "--logs", str(logs))
    assert result.returncode == 0, result.stderr
    assert config.read_text() == SAMPLE
    assert Path(f"{config}.bak").read_text() == wizard_config
    assert not any(p.exists() for p in made), [p for p in made if p.exists()]
    assert (logs / "twistd.log").exists()  # --yes keeps the logs unless --delete-logs
    for path in made:
        assert f"removed {path}" in result.stdout


def test_reset_asks_and_no_changes_nothing_then_yes_with_logs(tmp_path):
    config, made = configured(tmp_path)
    before = config.read_text()
    logs = tmp_path / "twistd.log"
    logs.write_text("a\n")
    Path(f"{logs}.1").write_text("b\n")
    result = reset(config, "--logs", str(logs), stdin="maybe\nno\n")
    assert result.returncode == 1 and "nothing was changed" in result.stdout
    assert "not accepted: expected yes or no" in result.stdout
    assert config.read_text() == before and all(p.exists() for p in made)
    result = reset(config, "--logs", str(logs), stdin="yes\nyes\n")
    assert result.returncode == 0, result.stderr
    assert "Delete the 2 log file(s) too" in result.stdout
    assert not logs.exists() and not Path(f"{logs}.1").exists()
    assert config.read_text() == SAMPLE


def test_reset_refuses_while_the_management_listener_answers_unless_forced(tmp_path):
    config, made = configured(tmp_path)
    host, port = tomllib.loads(config.read_text())["management"]["listen"].rsplit(":", 1)
    with socket.create_server((host, int(port))):
        result = reset(config, "--yes")
        assert result.returncode == 1
        assert result.stderr.strip() == (f"rpturn reset: the appliance is running (management listener on "
                                         f"{host}:{port}): stop it first, or give --force")
        assert all(p.exists() for p in made)
        assert reset(config, "--yes", "--force").returncode == 0
    assert config.read_text() == SAMPLE


def test_reset_refuses_with_a_live_pid_file_but_not_a_stale_one(tmp_path):
    config, _ = configured(tmp_path)
    pidfile = tmp_path / "rpturn.pid"
    # A process whose command line names twistd, as the appliance's does; started and stopped by this test.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "twistd", "rpturn"])
    try:
        pidfile.write_text(f"{proc.pid}\n")
        result = subprocess.run([RPTURN, "reset", "--config", str(config), "--pidfile", str(pidfile), "--yes"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and f"(pid {proc.pid})" in result.stderr
    finally:
        proc.kill()
        proc.wait()
    result = subprocess.run([RPTURN, "reset", "--config", str(config), "--pidfile", str(pidfile), "--yes"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_resetting_the_sample_itself_restores_the_copy_setup_kept(tmp_path, monkeypatch):
    from appliance.commands import reset as reset_command

    sample = tmp_path / "rpturn.toml"
    sample.write_text(SAMPLE)
    monkeypatch.setattr(reset_command, "SAMPLE", sample)
    try:
        reset_command.sample_for(str(sample), None)
        raise AssertionError("no error for a sample without .orig")
    except reset_command.CommandError as e:
        assert "is the sample itself" in str(e)
    Path(f"{sample}.orig").write_text(SAMPLE)
    assert reset_command.sample_for(str(sample), None) == f"{sample}.orig"
