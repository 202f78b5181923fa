"""`rpturn credentials`: time-limited TURN credentials made with the config's shared secret."""

from __future__ import annotations

import json
import os
import time

import pytest

from appliance.cli import main
from relay.restauth import SharedSecrets, parse_rest_username

SECRET, OTHER = "first-secret-0123456789", "second-secret-0123456789"


def write_config(tmp_path, relay_lines: str):
    path = tmp_path / "rpturn.toml"
    path.write_text(f"[relay]\n{relay_lines}\n")
    return str(path)


def test_prints_a_pair_made_with_the_first_secret(tmp_path, capsys):
    config = write_config(tmp_path, f'auth_secrets = ["{SECRET}", "{OTHER}"]')
    before = int(time.time())
    assert main(["credentials", "--user", "alice", "--ttl", "3600", "--config", config, "--json"]) == 0
    pair = json.loads(capsys.readouterr().out)
    expiry, user = parse_rest_username(pair["username"])
    assert user == "alice" and before + 3600 <= expiry <= int(time.time()) + 3600
    assert SharedSecrets([SECRET]).verify_password(pair["username"], pair["password"], time.time()).ok
    assert not SharedSecrets([OTHER]).verify_password(pair["username"], pair["password"], time.time()).ok


def test_reads_the_secrets_file(tmp_path, capsys):
    secrets = tmp_path / "secrets"
    secrets.write_text(f"# rotated\n{OTHER}\n")
    os.chmod(secrets, 0o600)
    config = write_config(tmp_path, f'auth_secrets_file = "{secrets}"')
    assert main(["credentials", "--user", "bob", "--config", config]) == 0
    out = capsys.readouterr().out
    username = out.split("username: ")[1].split()[0]
    password = out.split("password: ")[1].split()[0]
    assert parse_rest_username(username)[1] == "bob"
    assert SharedSecrets([OTHER]).verify_password(username, password, time.time()).ok
    assert "expires:" in out


def test_without_a_secret_it_is_one_line_and_exit_1(tmp_path, capsys):
    config = write_config(tmp_path, 'users = { alice = "pw" }')
    assert main(["credentials", "--user", "alice", "--config", config]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "auth_secrets" in err and "Traceback" not in err


def test_an_open_secrets_file_is_refused_in_one_line(tmp_path, capsys):
    secrets = tmp_path / "secrets"
    secrets.write_text(f"{SECRET}\n")
    os.chmod(secrets, 0o644)
    config = write_config(tmp_path, f'auth_secrets_file = "{secrets}"')
    assert main(["credentials", "--config", config]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[relay] auth_secrets_file" in err and "chmod 600" in err


@pytest.mark.parametrize("args", [["--ttl", "0"], ["--user", "a:b"]])
def test_bad_arguments_are_one_line(tmp_path, capsys, args):
    config = write_config(tmp_path, f'auth_secrets = ["{SECRET}"]')
    assert main(["credentials", "--config", config, *args]) == 1
    assert capsys.readouterr().err.count("\n") == 1
