"""Fixtures the TURN core's unit tests share (test_turn_*.py): a harness wiring a real TurnServer to fakes, alice's
client on it before and after her Allocate, and the log events the core emits. The harness, the peers and the
helpers are in tests/support/relay_fakes.py."""

import pytest

from relay.stun import Attr
from tests.support.relay_fakes import TurnHarness, error_code


@pytest.fixture
def harness():
    return TurnHarness()


@pytest.fixture
def client(harness):
    return harness.client("alice")


@pytest.fixture
def allocated(client):
    assert error_code(client.allocate()) is None
    return client


@pytest.fixture
def long_lived(client):
    """An allocation that outlives its channels (3600 s)."""
    assert client.allocate(lifetime=3600).get(Attr.LIFETIME) == 3600
    return client


@pytest.fixture
def events(harness):
    """The structured log events the core emits (through the harness's sink)."""
    return harness.events
