"""conf/systemd: `systemd-analyze verify` accepts each unit (with the install paths pointed at this checkout's
virtualenv, since verify wants the ExecStart binary to exist), and each has the settings the README promises."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import pytest

from tests.support.revproxy_process import ROOT, VENV_BIN

UNITS = sorted((ROOT / "conf" / "systemd").glob("*.service"))
INSTALLED_BIN = "/opt/rpturn/.venv/bin/"


def verify(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)


def localised(unit: Path, where: Path) -> Path:
    copy = where / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED_BIN, f"{VENV_BIN}/"))
    return copy


def directives(unit: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(unit.read_text())
    return dict(parser["Service"])


def test_the_three_units_exist():
    assert [u.name for u in UNITS] == ["rpturn-relay.service", "rpturn-revproxy.service", "rpturn.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verify_accepts_the_unit(unit, tmp_path):
    r = verify(localised(unit, tmp_path))
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_verify_does_refuse_a_broken_unit(tmp_path):
    """The check above can fail: a missing binary and an unknown directive are reported."""
    missing = tmp_path / "rpturn.service"
    missing.write_text((ROOT / "conf" / "systemd" / "rpturn.service").read_text())
    r = verify(missing)
    assert r.returncode != 0 and "/opt/rpturn/.venv/bin/twistd" in r.stderr
    bogus = localised(ROOT / "conf" / "systemd" / "rpturn.service", tmp_path)
    bogus.write_text(bogus.read_text().replace("[Service]\n", "[Service]\nBogusSetting=1\n"))
    assert "Unknown key 'BogusSetting'" in verify(bogus).stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_runs_unprivileged_hardened_and_notifies(unit):
    d = directives(unit)
    assert (d["Type"], d["User"], d["ExecReload"]) == ("notify", "rpturn", "/bin/kill -HUP $MAINPID")
    assert d["AmbientCapabilities"] == d["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert d["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX AF_NETLINK"
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes",
                       "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectKernelTunables": "yes",
                       "ProtectKernelModules": "yes", "ProtectKernelLogs": "yes", "StandardOutput": "journal"}.items():
        assert d[key] == value, key
    assert int(d["LimitNOFILE"]) >= 65536
    plugin = {"rpturn.service": "rpturn", "rpturn-relay.service": "relay", "rpturn-revproxy.service": "revproxy"}
    assert f" {plugin[unit.name]} --config /etc/rpturn/rpturn.toml" in d["ExecStart"]
    assert d["ExecStart"].startswith(f"{INSTALLED_BIN}twistd --nodaemon --pidfile=/run/")
