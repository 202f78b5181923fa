"""benchmarks/revproxy_micro.py stays runnable: a few requests through the real proxy objects and real TLS in
memory, in each access-log mode, and the figures printed. The figures themselves are not judged here."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "revproxy_micro.py"


@pytest.mark.parametrize("access_log", ["off", "file", "twistd"])
def test_micro_benchmark_proxies_requests_and_prints_calls_and_cpu_per_request(access_log):
    done = subprocess.run([sys.executable, str(SCRIPT), "--requests", "30", "--runs", "1", "--top", "3",
                           "--access-log", access_log], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    calls = re.search(r"^calls per request: ([\d.]+) \(([\d.]+) Python", done.stdout, flags=re.MULTILINE)
    assert calls and float(calls.group(2)) > 50, done.stdout
    assert re.search(r"^CPU us per request: median [\d.]+", done.stdout, flags=re.MULTILINE), done.stdout
