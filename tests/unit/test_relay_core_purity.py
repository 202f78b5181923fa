"""The relay's pure core imports no Twisted: its log lines go through an injected sink, so it runs (and is tested)
without a reactor, and a metrics or TLS layer can wrap it without dragging the shell in."""

import subprocess
import sys

PURE_MODULES = (
    "relay.allocation",
    "relay.authenticator",
    "relay.dispatch",
    "relay.events",
    "relay.handlers",
    "relay.relay_ports",
    "relay.transactions",
    "relay.stun",
    "relay.stun_message",
    "relay.client_stream",
    "relay.ports",
    "relay.policy",
    "relay.ratelimit",
)


def test_pure_core_modules_import_no_twisted():
    code = (
        "import sys\n"
        f"for name in {PURE_MODULES!r}: __import__(name)\n"
        "print(sorted(m for m in sys.modules if m == 'twisted' or m.startswith('twisted.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_core_log_lines_reach_the_injected_sink():
    from tests.support.relay_fakes import TurnHarness

    harness = TurnHarness()
    harness.client("alice").allocate()
    (event,) = harness.events
    assert event["event"] == "allocation_created" and event["text"].startswith("TURN allocation created udp ")
