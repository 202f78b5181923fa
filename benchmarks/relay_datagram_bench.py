#!/usr/bin/env python3
"""Micro-benchmark of the relay's per-packet UDP path: CPU per relayed datagram, in one process, no reactor.

    .venv/bin/python benchmarks/relay_datagram_bench.py [--allocations 10] [--size 100] [--burst 32]
        [--seconds 3] [--backend auto|python|batched] [--mode channels|indications]

The real shell (`relay.shell`: the client listener and one relay socket per allocation) and the real core on
loopback sockets; allocations and channels are made with real, signed requests through the listener. Then rounds
of: the clients send `burst` ChannelData (or Send indications) each, the listener reads and relays them, an echo
peer in this process sends every datagram back to its relayed address, the relay sockets read them and send them to
the clients as ChannelData (or Data indications). The relay's sockets are read as the reactor reads them (a
non-blocking epoll poll, then each ready reader's `doRead`). Only the relay's side (poll and reads) is timed, with
`time.process_time` (user + system CPU of this thread, so the system calls count): the figure is CPU µs per
datagram the relay moved, each direction counted, as relay_vs_coturn counts them. The load side's own work is not
in it. On a shared machine it is noisy (other processes' cache and frequency effects): compare runs made back to
back, several times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from relay import datagram
from relay.datagram import READ_BURST
from relay.stun import Attr, Message, MessageClass, Method, encode, encode_channel_data
from tests.support.relay_loopback import LoopbackRelay, drain, udp_socket

CHANNEL = 0x4000


def send_indication(peer: tuple[str, int], payload: bytes) -> bytes:
    message = Message(Method.SEND, MessageClass.INDICATION, os.urandom(12),
                      [(Attr.XOR_PEER_ADDRESS, peer), (Attr.DATA, payload)])
    return encode(message)


def run(allocations: int, size: int, burst: int, seconds: float, mode: str) -> dict:
    peer = udp_socket()
    relay = LoopbackRelay()
    clients = [relay.client(peer.getsockname(), channel=CHANNEL if mode == "channels" else None)
               for _ in range(allocations)]
    payload = os.urandom(size)
    outgoing = encode_channel_data(CHANNEL, payload) if mode == "channels" else \
        send_indication(peer.getsockname(), payload)
    relayed = lost = 0
    cpu = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for client in clients:
            for _ in range(burst):
                client.sock.send(outgoing)
        start = time.process_time()
        relay.run_reactor(allocations * burst // READ_BURST + 1)  # as the reactor would: readable again
        cpu += time.process_time() - start
        echoed = drain(peer)
        for data, addr in echoed:
            peer.sendto(data, addr)
        start = time.process_time()
        relay.run_reactor()
        cpu += time.process_time() - start
        back = sum(len(drain(client.sock)) for client in clients)
        relayed += len(echoed) + back
        lost += allocations * burst * 2 - len(echoed) - back
    relay.close()
    peer.close()
    return {"backend": datagram.backend(), "mode": mode, "allocations": allocations, "size": size, "burst": burst,
            "relayed": relayed, "lost": lost, "cpu_us_per_datagram": cpu / relayed * 1e6 if relayed else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allocations", type=int, default=10)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--burst", type=int, default=32, help="datagrams per client per round (default 32)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--mode", choices=("channels", "indications"), default="channels")
    parser.add_argument("--backend", choices=("auto", "python", "batched"), default="auto")
    args = parser.parse_args(argv)
    if args.backend != "auto":
        datagram.use_backend(args.backend)
    result = run(args.allocations, args.size, args.burst, args.seconds, args.mode)
    print(" ".join(f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}"
                   for key, value in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
