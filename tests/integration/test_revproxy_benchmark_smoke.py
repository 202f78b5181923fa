"""The revproxy-vs-nginx benchmark still runs: `--quick` end to end (real nginx, wrk, twistd, /events streams),
so the script cannot rot between full runs. The figures themselves are not judged here."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "revproxy_vs_nginx"
PYTHON = ROOT / ".venv" / "bin" / "python"


def test_quick_benchmark_prints_ratios_and_targets_and_exits_0(tmp_path):
    for tool in ("nginx", "wrk"):
        assert shutil.which(tool) or Path("/usr/sbin", tool).exists(), f"{tool} is needed (Debian package)"
    out = subprocess.run([str(PYTHON if PYTHON.exists() else sys.executable), str(SCRIPT), "--quick", "--json",
                          str(tmp_path / "results.json")], capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| small JSON | 100 |" in out.stdout
    assert "### Targets" in out.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    row = results["throughput"]["1"]["small@100"]
    assert row["ratio_rps"] > 0 and row["ours"]["requests"] > 0 and row["nginx"]["requests"] > 0
    assert results["sse"]["ours"]["alive"] == results["sse"]["streams"]
    assert results["sse"]["ours"]["events"] > 0
