"""systemd's readiness protocol (sd_notify) in a few lines: one datagram to $NOTIFY_SOCKET.

The unit files use Type=notify: the appliance sends READY=1 once every listener of every service is bound and every
worker process serves (appliance.supervisor.Supervisor.ready),
RELOADING=1 / READY=1 around a SIGHUP reload and STOPPING=1 on SIGTERM. Without $NOTIFY_SOCKET (not started by
systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time

READY = "READY=1"
STOPPING = "STOPPING=1"


def notify(state: str) -> bool:
    """Send `state` ("READY=1", ...) to systemd; True if a notify socket took it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def reloading() -> bool:
    """RELOADING=1 with the MONOTONIC_USEC systemd 253+ asks for (older versions ignore the field)."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
