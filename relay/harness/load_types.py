"""What the load generator (relay.harness.load) takes and gives back: `LoadOptions` for one run of clients, and the
figures of its set-up (`SetupResult`) and of each paced step (`RunResult`)."""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field

from relay.client import Credentials

Address = tuple[str, int]


@dataclass(frozen=True)
class LoadOptions:
    server: Address
    credentials: Credentials
    tcp: bool = False
    peer: Address | None = None
    channels: bool = True
    size: int = 100
    traffic: bool = True  # False: allocate only (no permission, no channel)
    setup_timeout: float = 60.0
    raw_echo: bool = False  # measure the client alone: no TURN, the frames go to a plain UDP echo and come back
    tls: bool = False  # TURN over TLS (set tcp too: the framing is the stream's)
    ca_file: str | None = None  # with tls: verify the server against this CA bundle; None: no verification
    server_name: str | None = None  # with tls: SNI and the name checked with ca_file


@dataclass
class SetupResult:
    allocations: int = 0
    allocation_seconds: float = 0.0
    ready: int = 0
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class RunResult:
    sent: int = 0
    received: int = 0
    late: int = 0  # echoes of an earlier step's packets
    send_seconds: float = 0.0
    seconds: float = 0.0
    rtt_ns: array = field(default_factory=lambda: array("q"))
    errors: Counter[str] = field(default_factory=Counter)
    client_drops: int | None = None  # echoes dropped in our own full sockets; None: unknown (TCP, no /proc)
