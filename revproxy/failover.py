"""What to do when a node fails a request: a pure decision, inputs in, a `Verdict` out.

The kinds of failure are a `NodeFailure`; the verdict is retry on the same node over a fresh connection (a reused
keep-alive connection the node had closed), retry on the next node (marking this one down), answer the client with
an error status, or abort the client connection (a response was already under way).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class NodeFailure(enum.Enum):
    CONNECT = "connect"  # TCP connect error or timeout, TLS handshake failure
    STALE = "stale"  # a reused keep-alive connection closed before answering
    LOST = "lost"  # the connection closed after the request went out, before the response was complete
    TIMEOUT = "timeout"  # no answer within upstream_read_timeout once the request was all sent
    BAD = "bad"  # a malformed response


class Action(enum.Enum):
    RETRY_SAME = "retry-same"  # same node, fresh connection, not counted as an attempt
    RETRY_NEXT = "retry-next"  # mark the node down, try the next one in the plan
    FAIL = "fail"  # answer the client with `status`
    ABORT = "abort"  # cut the client connection: part of the response is already out


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    status: int = 0
    mark_down: bool = False


ABORT = Verdict(Action.ABORT)
RETRY_SAME = Verdict(Action.RETRY_SAME)


def failure_status(kind: NodeFailure) -> int:
    return 504 if kind is NodeFailure.TIMEOUT else 502


def after_failure(kind: NodeFailure, *, idempotent: bool, response_started: bool, stale_retried: bool,
                  request_complete: bool, attempts_left: int) -> Verdict:
    """`attempts_left`: nodes in the plan after the current one. A connect failure moves any request to the next
    node (nothing reached the node); a request that may have reached it moves only when it is idempotent. A
    failure while the client is still sending its body is never retried elsewhere and never marks the node down:
    the client is the slow party."""
    if response_started:
        return ABORT
    if kind is NodeFailure.STALE and not stale_retried:
        return RETRY_SAME
    if not request_complete and kind is not NodeFailure.CONNECT:
        return Verdict(Action.FAIL, failure_status(kind))
    if kind is NodeFailure.CONNECT or (idempotent and kind in _RETRYABLE):
        if attempts_left > 0:
            return Verdict(Action.RETRY_NEXT, mark_down=True)
        return Verdict(Action.FAIL, failure_status(kind), mark_down=True)
    return Verdict(Action.FAIL, failure_status(kind))


_RETRYABLE = frozenset({NodeFailure.LOST, NodeFailure.TIMEOUT, NodeFailure.STALE})


RETRY_STATUSES = (502, 503, 504)


def retry_status(status: int, *, idempotent: bool, attempts_left: int) -> bool:
    """A node's 502/503/504 is passed on, unless an idempotent request has another node to try."""
    return status in RETRY_STATUSES and idempotent and attempts_left > 0
