"""A real terminal for tests: a command in a detached tmux session on a private server socket, driven with
send-keys and read with capture-pane (what an operator sees, echo and all)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
import uuid


class Terminal:
    """`with Terminal(cmd, cwd=...) as t: t.expect("Hostname"); t.send("meet.example.com")`.

    The session runs on its own tmux server socket (-L), so tests never touch anyone's tmux; closing kills that
    server only. The pane stays after the command exits, with `[exited N]` on its last line.
    """

    def __init__(self, command: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None,
                 width: int = 200, height: int = 60) -> None:
        self.socket = f"rpturn-test-{uuid.uuid4().hex[:12]}"
        # The exit status is printed by the shell so that the test can read it from the screen.
        shell = f"{shlex.join(command)}; echo \"[exited $?]\"; sleep 600"
        environment = {**os.environ, **(env or {})}
        self._tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height),
                   *(["-c", cwd] if cwd else []), "sh", "-c", shell, env=environment)
        self._tmux("set-option", "-t", "t", "history-limit", "10000")

    def _tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10,
                                env=env)
        if result.returncode != 0:
            raise RuntimeError(f"tmux {args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def screen(self) -> str:
        """Everything the pane showed so far (scroll-back included), wrapped lines joined."""
        return self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "t")

    def expect(self, pattern: str, count: int = 1, timeout: float = 10.0) -> str:
        """Wait until `pattern` (a regex) appears `count` times on the screen; return the screen."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if len(re.findall(pattern, text)) >= count:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen {count} time(s) within {timeout} s; screen:\n{text}")
            time.sleep(0.05)

    def send(self, text: str, enter: bool = True) -> None:
        """Type `text` literally (no key-name interpretation), then Enter."""
        if text:
            self._tmux("send-keys", "-t", "t", "-l", text)
        if enter:
            self._tmux("send-keys", "-t", "t", "Enter")

    def exit_status(self, timeout: float = 15.0) -> int:
        text = self.expect(r"\[exited \d+\]", timeout=timeout)
        return int(re.findall(r"\[exited (\d+)\]", text)[-1])

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
