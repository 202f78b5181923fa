"""Shared test set-up: markers from the directory (unit, property, integration), the hypothesis profiles
(`HYPOTHESIS_PROFILE=fuzz` for the large budget) and the CI rule that integration tests never skip for a missing
tool. `pytest tests/unit` and `pytest tests/property` need nothing but the Python packages."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import tests.support.strategies  # noqa: F401  (registers and loads the hypothesis profiles)

HERE = Path(__file__).resolve().parent
KINDS = ("unit", "property", "integration")

# Third-party tools the integration tests drive. When they are collected, a missing tool fails, never skips.
REQUIRED_TOOLS = ("turnutils_uclient", "turnutils_peer", "turnutils_stunclient", "turnserver", "curl", "openssl",
                  "tmux", "pebble", "slapd", "slapadd")


def _kind(path: Path) -> str | None:
    try:
        relative = path.resolve().relative_to(HERE)
    except ValueError:
        return None
    return relative.parts[0] if relative.parts and relative.parts[0] in KINDS else None


def pytest_collection_modifyitems(session, config, items):
    kinds = set()
    for item in items:
        kind = _kind(Path(str(item.fspath)))
        if kind is not None:
            item.add_marker(getattr(pytest.mark, kind))
            kinds.add(kind)
    if "integration" in kinds:
        missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
        if missing:
            raise pytest.UsageError(
                f"missing tools {missing}: run `bash .ci/setup` (installs Debian's coturn, curl, openssl)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throwaway PKI (tests.support.revproxy_process.Pki: root, intermediate, a localhost bundle) for one module."""
    from tests.support.revproxy_process import Pki

    return Pki(tmp_path_factory.mktemp("pki"))
