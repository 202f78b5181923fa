"""Shared test set-up: the hypothesis profiles (`HYPOTHESIS_PROFILE=fuzz` for the large budget) and CI rules."""

import shutil

import pytest
import strategies  # noqa: F401  (registers and loads the hypothesis profiles)

# Third-party tools the integration tests drive. In CI they must be there: a missing one fails, never skips.
REQUIRED_TOOLS = ("turnutils_uclient", "turnutils_peer", "turnutils_stunclient", "turnserver", "curl", "openssl")


def pytest_sessionstart(session):
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        raise pytest.UsageError(
            f"missing tools {missing}: run `bash .ci/setup` (installs Debian's coturn, curl, openssl)"
        )
