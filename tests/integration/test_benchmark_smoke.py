"""benchmarks/relay_vs_coturn stays runnable: its --quick mode measures every figure and prints the tables."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "relay_vs_coturn"


def test_quick_relay_benchmark_prints_ratio_tables_and_exits_0(tmp_path):
    results_path = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--servers", "coturn,ours-w1", "--json", str(results_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\| ours-w1 / coturn-\d+\.\d+\.\d+ \|", done.stdout), done.stdout  # named by its version
    ratio_rows = re.findall(r"^\| max pps \(≤ 0\.1 % loss\) \| [\d,]+ \| [\d,]+ \| \d+\.\d\d \|$", done.stdout,
                            flags=re.MULTILINE)
    # One per quick scenario: ChannelData, Send/Data, and ChannelData over TLS (against coturn with TLS).
    assert len(ratio_rows) == 3, done.stdout
    assert "#### ChannelData over TLS, 10 allocations, 100 B" in done.stdout
    results = json.loads(results_path.read_text())
    assert results["missing"] == []
    assert all(target["met"] is not None for target in results["targets"])
    # Our relay's datagram counts, from its log once stopped: one line per server start (one process each).
    starts = results["datagram_io"]["ours-w1"]
    assert starts and all(len(lines) == 1 for lines in starts), starts
    for [counts] in starts:
        assert re.fullmatch(r"process: \d+ datagrams read in \d+ reactor events \([\d.]+ per event\) and \d+ "
                            r"passes", counts), counts


def test_scenarios_and_several_coturns_in_one_targeted_run(tmp_path):
    """--scenarios runs only what it names (no allocation figures unless asked); --coturn twice runs both binaries,
    each named by its version (the same binary twice: a second name), with ratio columns against each."""
    results_path = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--servers", "ours-w1-python", "--scenarios",
         "ChannelData 1 alloc 100 B", "--coturn", "/usr/bin/turnserver", "--coturn", "/usr/bin/turnserver",
         "--json", str(results_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=150,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(results_path.read_text())
    first, second, ours = results["servers"]
    assert re.fullmatch(r"coturn-\d+\.\d+\.\d+", first) and second == first + "-2" and ours == "ours-w1-python"
    assert [s["name"] for s in results["scenarios"]] == ["channels-1x100"]
    assert results["allocations"] == {}
    assert "#### Allocations" not in done.stdout
    assert f"| ours-w1-python / {first} | ours-w1-python / {second} |" in done.stdout
    assert "datagram I/O python" in done.stdout
    assert results["missing"] == []
    # How much work each server finds per wake-up (voluntary context switches of all its threads and processes).
    assert all(results["scenarios"][0]["median"][name]["packets_per_wakeup"] > 0 for name in results["servers"])
    assert "| relayed packets per server wake-up |" in done.stdout
