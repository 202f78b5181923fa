"""The code base stays ruff-clean: the lint runs with the tests, so CI enforces it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run([str(ruff), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_twistd_lists_the_plugins():
    twistd = Path(sys.executable).with_name("twistd")
    result = subprocess.run([str(twistd), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    for plugin in ("relay", "revproxy", "rpturn"):
        assert f"    {plugin} " in result.stdout
