"""Questions on plain streams for the operator commands (`rpturn setup`, `rpturn reset`).

Line-based on purpose: it works on a serial console, over SSH and with a pipe, with no TTY and no terminal library.
On a TTY secrets are read without echo (getpass); otherwise one line from stdin.
"""

from __future__ import annotations

import getpass
from typing import Any, TextIO

from appliance.cli import CommandError


class Console:
    """Line-based questions on plain streams: works on a serial console, over SSH and with a pipe."""

    def __init__(self, stdin: TextIO, stdout: TextIO) -> None:
        self.stdin, self.stdout = stdin, stdout

    def say(self, text: str = "") -> None:
        print(text, file=self.stdout, flush=True)

    def line(self, prompt: str) -> str:
        self.stdout.write(prompt)
        self.stdout.flush()
        text = self.stdin.readline()
        if not text:
            raise CommandError("input ended before the wizard finished; nothing was written")
        return text.rstrip("\r\n")

    def secret(self, prompt: str) -> str:
        if self.stdin.isatty():
            return getpass.getpass(prompt, stream=self.stdout)
        return self.line(prompt)

    def ask(self, question: str, default: Any, validate, shown: str | None = None) -> Any:
        """Ask until `validate` accepts the answer; Enter takes `default` (when there is one)."""
        hint = shown if shown is not None else ("" if default is None else str(default))
        while True:
            text = self.line(f"{question} [{hint}]: " if hint else f"{question}: ")
            if not text.strip():
                if default is not None:
                    return default
                self.say("  an answer is needed")
                continue
            try:
                return validate(text)
            except ValueError as e:
                self.say(f"  not accepted: {e}; try again")
