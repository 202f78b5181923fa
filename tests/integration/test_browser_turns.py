"""Headless Chromium's WebRTC stack through TURN over TLS (`turns:`), relay-only, with time-limited (TURN REST API)
credentials: a data channel round trip, and the selected candidate pair relayed at both ends with the browser
reaching its TURN server over TLS. Chromium trusts the test CA through an NSS database in its own HOME, with
certificate checks on (tests/support/chromium.py); without that CA the TLS connection is refused.

Against coturn here (proves the driver and the page); the same page runs against the appliance's HTTPS port in the
TURN-on-443 tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.restauth import make_credentials
from tests.support.chromium import BrowserError, Chromium
from tests.support.chromium import relay_round_trip as webrtc_relay_round_trip
from tests.support.coturn import Coturn, running_coturn
from tests.support.revproxy_process import Pki

SECRET = "browser-test-secret-0123456789"


def relay_round_trip(browser: Chromium, turns_url: str, secret: str, messages: int = 5,
                     timeout: float = 15.0) -> dict:
    username, password = make_credentials(secret, "browser", 600, time.time())
    servers = [{"urls": [turns_url], "username": username, "credential": password}]
    return webrtc_relay_round_trip(browser, servers, messages, timeout)


@pytest.fixture(scope="module")
def coturn(pki: Pki) -> Iterator[Coturn]:
    with running_coturn(tls_bundle=pki.bundle, auth_secret=SECRET) as server:
        yield server


def test_chromium_relays_a_data_channel_through_turns_with_rest_credentials(coturn: Coturn, pki: Pki,
                                                                            tmp_path: Path) -> None:
    with Chromium(tmp_path, trust=[pki.root]) as browser:
        result = relay_round_trip(browser, f"turns:localhost:{coturn.tls_port}?transport=tcp", SECRET)
    assert result["echoes"] == [f"echo:message {i}" for i in range(5)], result
    assert result["local"]["candidateType"] == "relay" and result["remote"]["candidateType"] == "relay", result
    assert result["local"]["relayProtocol"] == "tls", result


def test_chromium_refuses_a_turns_server_whose_ca_it_does_not_trust(coturn: Coturn, tmp_path: Path) -> None:
    with Chromium(tmp_path) as browser, pytest.raises(BrowserError, match="timed out"):
        relay_round_trip(browser, f"turns:localhost:{coturn.tls_port}?transport=tcp", SECRET, timeout=4)
