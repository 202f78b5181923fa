"""Loopback helpers every real-process test needs."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host` (STUN/TURN listens on both; HTTP needs only TCP)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host}")


def wait_for_port(host: str, port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Until a TCP connect to host:port succeeds; fails at once if `proc` (the process meant to listen) exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")


def still_open_after(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Wait up to `timeout` for the other end to close each of `socks` (an orderly close or a reset; whatever it
    sends first is read and dropped); the ones still open then."""
    deadline = time.monotonic() + timeout
    pending = list(socks)
    while pending and time.monotonic() < deadline:
        for sock in list(pending):
            sock.settimeout(0.01)
            try:
                if sock.recv(4096) == b"":
                    pending.remove(sock)
            except TimeoutError:
                pass
            except ConnectionResetError:
                pending.remove(sock)
        time.sleep(0.1)
    return pending
