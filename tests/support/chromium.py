"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for the browser tests.

    with Chromium(tmp_path, trust=[pki.root]) as browser:
        result = browser.evaluate("(async () => 1 + 1)()")

Each instance has its own profile directory and its own HOME, so it never touches a user's browser. Certificates in
`trust` become trusted the way Chromium on Linux trusts a CA: they are imported into the NSS database of that HOME
(`$HOME/.pki/nssdb`, with `certutil` from Debian's libnss3-tools) as trusted issuers of server certificates;
certificate checks stay on. The DevTools port is chosen by Chromium (`--remote-debugging-port=0`, read back from the
profile's DevToolsActivePort file) and only listens on loopback. `stop()` ends the browser by its PID.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket

from tests.support.processes import stop_process

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CERTUTIL = shutil.which("certutil") or "/usr/bin/certutil"


PAGE = (Path(__file__).resolve().parent / "webrtc_relay.js").read_text()


class BrowserError(RuntimeError):
    """Chromium could not be started, or a script failed in it."""


def make_nss_db(home: Path, trust: list[Path]) -> Path:
    """$HOME/.pki/nssdb with each PEM certificate in `trust` imported as a trusted CA for TLS servers."""
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True, exist_ok=True)
    subprocess.run([CERTUTIL, "-N", "-d", f"sql:{db}", "--empty-password"], check=True, capture_output=True)
    for number, cert in enumerate(trust):
        subprocess.run([CERTUTIL, "-A", "-d", f"sql:{db}", "-n", f"rpturn test CA {number}", "-t", "C,,",
                        "-i", str(cert)], check=True, capture_output=True)
    return db


class Chromium:
    def __init__(self, where: Path, *, trust: list[Path] = (), extra_args: tuple[str, ...] = ()) -> None:
        self.where = Path(where)
        self.home = self.where / "home"
        self.profile = self.where / "profile"
        self.trust = list(trust)
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None
        self._ws: websocket.WebSocket | None = None
        self._ids = itertools.count(1)
        self.log_path = self.where / "chromium.log"

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> Chromium:
        self.home.mkdir(parents=True, exist_ok=True)
        self.profile.mkdir(parents=True, exist_ok=True)
        if self.trust:
            make_nss_db(self.home, self.trust)
        command = [
            CHROMIUM, "--headless=new", f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1", "--no-first-run", "--no-default-browser-check",
            "--disable-gpu", "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--metrics-recording-only", *self.extra_args,
        ]
        if os.geteuid() == 0:
            command.append("--no-sandbox")  # the sandbox needs an unprivileged user; CI runs as root
        env = {**os.environ, "HOME": str(self.home)}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([*command, "about:blank"], stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BrowserError(f"chromium did not start: {self.log()[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            pages = [t for t in json.load(answer) if t.get("type") == "page"]
        if not pages:
            self.stop()
            raise BrowserError("chromium has no page to drive")
        self._ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout,
                                               suppress_origin=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive meanwhile are skipped)."""
        assert self._ws is not None
        message_id = next(self._ids)
        self._ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str, timeout: float = 60.0) -> Any:
        """The value of a JavaScript expression in the page (a promise is awaited); a thrown error raises."""
        assert self._ws is not None
        self._ws.settimeout(timeout + 5)
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True,
                           timeout=int(timeout * 1000))
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"script failed: {text}")
        return result["result"].get("value")

    def stop(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None
        stop_process(self.process)


def relay_round_trip(browser: Chromium, ice_servers: list[dict], messages: int = 5, timeout: float = 15.0) -> dict:
    """Run tests/support/webrtc_relay.js: two relay-only peer connections, a data channel round trip; the echoes
    and the selected candidate pair (see there)."""
    return browser.evaluate(f"{PAGE}\nrelayRoundTrip({json.dumps(ice_servers)}, {messages}, {int(timeout * 1000)})",
                            timeout=timeout + 5)
