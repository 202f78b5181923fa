"""The open-files limit: every relay allocation and every proxied stream holds sockets.

One place for the services, the load tools and the benchmarks: raise the soft RLIMIT_NOFILE towards the hard
limit (children inherit it) and report what is now in force; read the limit in force.
"""

from __future__ import annotations

import contextlib
import resource

# What "unlimited" is taken to mean: the kernel's default fs.nr_open.
UNLIMITED = 1 << 20


def open_files_limit() -> int:
    """The soft limit in force: what a service may hold open (it sizes its connection limits from it)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_files_limit(needed: int | None = None) -> tuple[int, int]:
    """Raise the soft limit to the hard limit (or to `needed`, if given and lower); (soft, hard) afterwards.

    Never fails: a limit that cannot be raised stays where it is and the caller sees it in the result.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = UNLIMITED if hard == resource.RLIM_INFINITY else hard
    target = ceiling if needed is None else min(needed, ceiling)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
