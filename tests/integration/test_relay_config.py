"""The [relay] table: the sample config parses, every bad key is one clear message naming file and key."""


import pytest

from appliance.config import ConfigError, parse_hostport
from relay.config import load_relay_config, relay_config_from_table
from tests.support.processes import ROOT, run_until_exit

SAMPLE = ROOT / "conf" / "rpturn.toml"


def test_sample_config_parses_with_documented_defaults():
    config = load_relay_config(str(SAMPLE))
    assert config.listen == (("0.0.0.0", 3478),)
    assert (config.min_port, config.max_port) == (49152, 65535)
    assert config.users == {"pexip": "admin123"}
    assert config.workers == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.2.3.4:3478", ("1.2.3.4", 3478)), ("[::1]:5000", ("::1", 5000)), ("10.0.0.1", ("10.0.0.1", 3478))],
)
def test_listen_entries_parse(text, expected):
    assert parse_hostport(text, default_port=3478) == expected


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"min_port": "low"}, "min_port"),
        ({"max_port": 70000}, "max_port"),
        ({"min_port": 60000, "max_port": 50000}, "min_port"),
        ({"listen": ["nowhere:3478"]}, "listen"),
        ({"listen": ["1.2.3.4:0"]}, "listen"),
        ({"allowed_peers": ["10.0.0.0/33"]}, "allowed_peers"),
        ({"denied_peers": ["10.1.2.3/8"]}, "denied_peers"),
        ({"nonce_secret": "abc"}, "nonce_secret"),
        ({"nonce_secret": "zz" * 16}, "nonce_secret"),
        ({"external_ip": "example.com"}, "external_ip"),
        ({"workers": 0}, "workers"),
        ({"user_quota": -1}, "user_quota"),
        ({"realm": ""}, "realm"),
        ({"relaip": "1.2.3.4"}, "relaip"),
        ({"users": {"bob": 5}}, "users"),
        ({"turn": "no"}, "turn"),
        ({"turn": False, "turn_clients": ["10.0.0.0/8"]}, "turn_clients"),
    ],
)
def test_bad_key_is_one_error_naming_file_and_key(table, key):
    table = {"users": {"u": "p"}, **table}
    with pytest.raises(ConfigError) as raised:
        relay_config_from_table(table, source="x.toml")
    assert str(raised.value).startswith(f"x.toml: [relay] {key}:")


def test_no_credentials_at_all_is_refused():
    with pytest.raises(ConfigError, match="users"):
        relay_config_from_table({}, source="x.toml")


def test_a_stun_only_relay_needs_no_credentials():
    assert relay_config_from_table({"turn": False}, source="x.toml").turn is False
    assert relay_config_from_table({"users": {"u": "p"}}, source="x.toml").turn is True


def test_workers_auto_means_one_per_core():
    import os

    assert relay_config_from_table({"users": {"u": "p"}, "workers": "auto"}).workers == (os.cpu_count() or 1)


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[relay\nrealm = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: \[relay\] -: not valid TOML"):
        load_relay_config(str(path))


def test_twistd_exits_nonzero_with_one_clear_message_on_bad_config(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[relay]\nmin_port = "abc"\n[relay.users]\nu = "p"\n')
    result = run_until_exit("relay", path, cwd=ROOT)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"{path}: [relay] min_port: must be an integer" in output
    assert "Traceback" not in output


def test_command_line_options_override_the_file(tmp_path):
    from relay.tap import Options

    options = Options()
    options.parseOptions(["--config", str(SAMPLE), "--realm", "other.test", "--listen", "127.0.0.1:5000",
                          "--allowed-peer", "127.0.0.0/8", "--user", "bob:pw"])
    config = load_relay_config(options["config"], options.config_overrides)
    assert config.realm == "other.test"
    assert config.listen == (("127.0.0.1", 5000),)
    assert config.allowed_peers == ("127.0.0.0/8",)
    assert config.users == {"bob": "pw"}


def test_workers_get_disjoint_contiguous_slices_of_the_relay_port_range():
    from relay.service import worker_port_range

    slices = [worker_port_range(49152, 65535, i, 3) for i in range(3)]
    assert slices[0][0] == 49152 and slices[-1][1] == 65535
    assert all(slices[i][1] + 1 == slices[i + 1][0] for i in range(2))
    assert worker_port_range(49152, 65535, 0, 1) == (49152, 65535)
