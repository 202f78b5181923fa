"""conf/logrotate/rpturn with the real logrotate and a real twistd writing `--logfile`: after each rotation the
old lines are in the date-named file, new lines go to a fresh rpturn.log, and twistd's own `.N` leftovers do not
pile up. The twistd process is `twistd web` (its log file is twistd's, whatever the plugin), on loopback."""

from __future__ import annotations

import contextlib
import getpass
import grp
import gzip
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.net import free_port
from tests.support.revproxy_process import ROOT, TWISTD, wait_for_port


def localised_snippet(tmp: Path) -> Path:
    text = (ROOT / "conf" / "logrotate" / "rpturn").read_text()
    text = text.replace("/var/log/rpturn", str(tmp / "log")).replace("/run/rpturn/rpturn.pid", str(tmp / "rpturn.pid"))
    text = text.replace("create 0640 rpturn rpturn", f"create 0640 {getpass.getuser()} {grp.getgrgid(os.getgid())[0]}")
    path = tmp / "logrotate.conf"
    path.write_text(text)
    return path


def get(port: int, path: str) -> None:
    with contextlib.suppress(urllib.error.HTTPError):  # 404 is fine: only the access log line matters
        urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read()


def rotated(where: Path) -> dict[str, str]:
    """Date-named file -> its text (the older ones are gzipped by the next run: delaycompress)."""
    return {p.name: (gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()).decode()
            for p in sorted(where.glob("rpturn.log-*"))}


def wait_in(path: Path, text: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never reached {path}"
        time.sleep(0.05)


def test_rotation_moves_old_lines_aside_and_twistd_writes_a_fresh_file(tmp_path):
    (tmp_path / "log").mkdir()
    (tmp_path / "www").mkdir()
    log = tmp_path / "log" / "rpturn.log"
    port = free_port()
    proc = subprocess.Popen([TWISTD, "--nodaemon", f"--pidfile={tmp_path / 'rpturn.pid'}", f"--logfile={log}",
                             "web", "--listen", f"tcp:{port}:interface=127.0.0.1", "--path", str(tmp_path / "www")],
                            cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 15, proc)
        conf, state = localised_snippet(tmp_path), tmp_path / "logrotate.state"
        for request in ("/first", "/second"):
            get(port, request)
            wait_in(log, request)
            subprocess.run(["logrotate", "-f", "-s", str(state), str(conf)], check=True, timeout=30)
            time.sleep(1.1)  # the date name has one-second resolution
        get(port, "/third")
        wait_in(log, "/third")
        old = list(rotated(tmp_path / "log").values())
        assert len(old) == 2 and "/first" in old[0] and "/second" in old[1] and "/second" not in old[0]
        assert "/first" not in log.read_text() and "/second" not in log.read_text()
        leftovers = list((tmp_path / "log").glob("rpturn.log.[0-9]*"))
        assert len(leftovers) <= 1 and all(p.stat().st_size == 0 for p in leftovers)  # the older one was removed
    finally:
        proc.terminate()
        proc.wait(10)
