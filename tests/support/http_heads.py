"""What the C and pure-Python HTTP head parsers are compared on (tests/property/test_revproxy_*_c_equivalence.py),
and the small strategies both equivalence tests build their heads from."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import strategies as st

from revproxy import http1

_SLOTS = http1.Head.__slots__


def outcome(parse: Callable[..., http1.Head], *args: bytes) -> tuple:
    """`parse(*args)` as one comparable value: every slot of the Head, or the HTTPError's status and detail."""
    try:
        head = parse(*args)
    except http1.HTTPError as e:
        return ("error", e.status, e.detail)
    return ("head", *[(name, getattr(head, name)) for name in _SLOTS])


def mostly(good: st.SearchStrategy[bytes], odd: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """`good` nine times in ten, else `odd` (so that most heads get past the first checks to the later ones)."""
    return st.integers(0, 9).flatmap(lambda i: odd if i == 0 else good)


def any_case(word: bytes) -> st.SearchStrategy[bytes]:
    """`word` as sent in any letter case."""
    return st.lists(st.booleans(), min_size=len(word), max_size=len(word)).map(
        lambda ups: bytes(b - 32 if up and 0x61 <= b <= 0x7A else b for b, up in zip(word, ups, strict=True)))
