"""What every real-process test shares: where `twistd` is, config files written from tables, a run that is expected
to end (a start-up error), and stopping a process this test started (by its Popen, never by name)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable
TWISTD = str(VENV_BIN / "twistd") if (VENV_BIN / "twistd").exists() else str(Path(sys.executable).with_name("twistd"))
RPTURN = str(VENV_BIN / "rpturn")  # the operator command


def toml_value(v: Any) -> str:
    """`v` as a TOML value (a dict as an inline table)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def write_tables(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """Write `{table: {key: value}}` as TOML (keys quoted, so any user name is one); a None value is left out."""
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{json.dumps(k)} = {toml_value(v)}" for k, v in table.items() if v is not None]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def twistd_command(plugin: str, config: Path, *args: str, pidfile: Path | None = None,
                   logfile: Path | None = None) -> list[str]:
    """`twistd -n` in the foreground for `plugin`; no pid file unless one is named."""
    command = [TWISTD, "-n", f"--pidfile={pidfile or ''}"]
    if logfile is not None:
        command.append(f"--logfile={logfile}")
    return [*command, plugin, "--config", str(config), *args]


def run_until_exit(plugin: str, config: Path, *args: str, timeout: float = 60.0,
                   cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `twistd <plugin>` expecting it to end on its own (a config or start-up error); its output as text."""
    return subprocess.run(twistd_command(plugin, config, *args), cwd=str(cwd or config.parent),
                          capture_output=True, text=True, timeout=timeout)


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0, *, raise_on_timeout: bool = False) -> int:
    """SIGTERM the process this test started and wait; SIGKILL after `timeout` (and re-raise the timeout when asked,
    for the tests that check a clean shutdown). Its exit status; 0 when there was nothing to stop."""
    if proc is None:
        return 0
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            if raise_on_timeout:
                raise
    return proc.returncode


def twistd_exit(proc: subprocess.Popen, log: str) -> int:
    """0 for a clean shutdown: twistd re-raises the signal that stopped its reactor so its exit status reports it,
    and a process that logged "Server Shut Down." and died of SIGTERM stopped cleanly."""
    code = proc.returncode
    return 0 if code == -signal.SIGTERM and "Server Shut Down." in log else code
