"""CPU time and resident memory of a process and its descendants, read from /proc (Linux only).

The benchmark charges a server for everything its process tree does: coturn is one process with threads (their
time is in the process's own /proc/<pid>/stat), our relay with `workers = N` is a supervisor and N children.
CPU is utime + stime of every live process in the tree; RSS is the sum of their VmRSS (shared pages of forked
workers are counted once per process, as `ps` would: an upper bound, which is the honest side to err on).
Wake-ups (asked for with `wakeups=True`) are the voluntary context switches of every thread of every process in
the tree: each is the server going to sleep for want of work (epoll_wait, recvmsg) and being woken by a datagram
later, so datagrams relayed per wake-up is how much work a server finds per wake-up — the same count for coturn's
threads and our workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessGone(RuntimeError):
    """The measured process is not running any more."""


@dataclass(frozen=True)
class Sample:
    """CPU seconds (user + system) and RSS bytes of a process tree at one moment."""

    cpu_seconds: float
    rss_bytes: int
    processes: int
    threads: int
    wakeups: int = 0  # voluntary context switches of all threads; 0 unless sample(..., wakeups=True)


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return text.rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """Direct children of `pid` (all its threads' children)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def tree(pid: int) -> list[int]:
    """`pid` and all its live descendants."""
    pids = [pid]
    i = 0
    while i < len(pids):
        pids += children(pids[i])
        i += 1
    return pids


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches of every thread of `pid` (its /proc/<pid>/status counts only the main one)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def sample(pid: int, *, wakeups: bool = False) -> Sample:
    """CPU and RSS of `pid`'s tree now (and its wake-ups if asked: a file per thread, so not on every sample).
    Raises ProcessGone if `pid` itself has exited."""
    cpu = 0.0
    rss = 0
    threads = 0
    woken = 0
    pids = tree(pid)
    for index, member in enumerate(pids):
        try:
            fields = _stat_fields(member)
            if fields[0] == "Z":
                raise FileNotFoundError(member)
            # Fields 14 and 15 of stat (utime, stime); [0] here is field 3 (state).
            cpu += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            threads += int(fields[17])
            rss += rss_bytes(member)
            if wakeups:
                woken += voluntary_switches(member)
        except (FileNotFoundError, ProcessLookupError):
            if index == 0:
                raise ProcessGone(f"process {pid} is not running") from None
    return Sample(cpu_seconds=cpu, rss_bytes=rss, processes=len(pids), threads=threads, wakeups=woken)
