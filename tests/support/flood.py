"""A loopback STUN flood from many 127.x.y.z sources, and a legitimate client's success rate while it runs.

Used by the relay's flood tests and `benchmarks/relay_flood.py`. The flood runs in a child process (its own core,
as an attacker's would be): Binding requests, round-robin over `sources` UDP sockets bound to 127.1.0.1,
127.1.0.2, ... and sent as fast as one Python loop can, for `seconds`. Traffic stays on 127.0.0.0/8. A flood of
`costly_binding()`s is what an attacker would send: each costs the relay's parser a few hundred µs, so a few
hundred sources within their per-source rate are enough to overwhelm it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import struct
import time

from relay import stun
from tests.support.relay_process import RawTurnClient, binding_request


def source_address(i: int) -> str:
    return f"127.1.{i // 250}.{1 + i % 250}"


def costly_binding(size: int = 1380) -> bytes:
    """A Binding request of `size` bytes made of empty comprehension-optional attributes (type 0x8030, unknown to
    us, so they are skipped, one by one): the request that costs the most parsing per datagram."""
    count = (size - 20) // 4
    attributes = struct.pack("!HH", 0x8030, 0) * count
    return struct.pack("!HHI", 0x0001, len(attributes), stun.MAGIC_COOKIE) + os.urandom(12) + attributes


def _flood(target: tuple[str, int], sources: int, seconds: float, ready, sent, request: bytes | None,
           pps: float | None) -> None:
    socks = []
    for i in range(sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source_address(i), 0))
        sock.setblocking(False)
        socks.append(sock)
    if request is None:
        request = stun.encode(stun.Message(stun.Method.BINDING, stun.MessageClass.REQUEST, os.urandom(12), []))
    ready.set()
    count = 0
    start = time.monotonic()
    deadline = start + seconds
    senders = [sock.sendto for sock in socks]  # answers are never read: the kernel drops them when a buffer fills
    while (now := time.monotonic()) < deadline:
        if pps is not None and count > (now - start) * pps:
            time.sleep(min(count / pps - (now - start), deadline - now))  # ahead of the pace: wait for it
            continue
        for send in senders:
            with contextlib.suppress(OSError):  # our own send buffer full: the flood just goes on
                send(request, target)
        count += len(senders)
    sent.value = count
    for sock in socks:
        sock.close()


class Flood:
    """`with Flood(address, sources=250, seconds=6) as flood: ...`; `flood.rate` is packets a second offered.
    `request`: the datagram every source sends (a small Binding request by default); `pps`: packets a second in
    all at most (default: as fast as one Python loop can)."""

    def __init__(self, target: tuple[str, int], sources: int = 250, seconds: float = 6.0,
                 request: bytes | None = None, pps: float | None = None) -> None:
        context = multiprocessing.get_context("fork")
        self.ready = context.Event()
        self.sent = context.Value("q", 0)
        self.seconds = seconds
        self.process = context.Process(target=_flood, daemon=True,
                                       args=(target, sources, seconds, self.ready, self.sent, request, pps))

    def __enter__(self) -> Flood:
        self.process.start()
        assert self.ready.wait(10), "the flood did not start"
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.process.join(self.seconds + 10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    @property
    def rate(self) -> float:
        return self.sent.value / self.seconds


def one_binding(target: tuple[str, int], source: str, timeout: float = 1.0) -> bool:
    """One Binding from `source`, one try, no retransmission: was it answered within `timeout`?"""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        request, transaction_id = binding_request()
        sock.sendto(request, target)
        try:
            while stun.parse(sock.recvfrom(2048)[0]).transaction_id != transaction_id:
                pass
        except TimeoutError:
            return False
    return True


def one_challenge(target: tuple[str, int], source: str, timeout: float = 1.0) -> bool:
    """An unauthenticated Allocate from `source`, one try: did its 401 come back within `timeout`?"""
    client = RawTurnClient(target, timeout=timeout, source=source)
    try:
        client.learn_nonce()
        return True
    except TimeoutError:
        return False
    finally:
        client.close()


def legitimate_success(target: tuple[str, int], attempts: int = 6, timeout: float = 1.0,
                       source: str = "127.0.0.1") -> tuple[int, int]:
    """(Bindings answered, unauthenticated Allocates answered with their 401) out of `attempts` each, one try
    each with `timeout`: what a fresh client (not yet authenticated, so without any trust) sees."""
    bindings = allocates = 0
    for _ in range(attempts):
        bindings += one_binding(target, source, timeout)
        allocates += one_challenge(target, source, timeout)
    return bindings, allocates
