"""Which head parsers (the response's and the request's) the proxy runs: revproxy/_http1.c where it is built (the
install builds it, CI included), the pure-Python reference with RPTURN_HTTP_PARSER=python or without the extension.
The Python one is also run here under the http1 unit tests, in a child process with RPTURN_HTTP_PARSER=python (as
the relay's RPTURN_DATAGRAM_IO=python back-end), so CI covers the fallback too. That both give the same outcome for
any head is tests/property/test_revproxy_http1_c_equivalence.py (responses) and
tests/property/test_revproxy_request_c_equivalence.py (requests)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], parser: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RPTURN_HTTP_PARSER"}
    if parser is not None:
        env["RPTURN_HTTP_PARSER"] = parser
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("setting", "expected"), [(None, "c revproxy._http1"), ("", "c revproxy._http1"),
                                                   ("c", "c revproxy._http1"),
                                                   ("python", "python revproxy.http1")])
def test_rpturn_http_parser_chooses_the_parser(setting, expected):
    code = ("from revproxy import http1; "
            "print(http1.PARSER, http1.parse_response.__module__, http1.parse_request.__module__)")
    parser, module = expected.split()
    assert run(["-c", code], setting).stdout.split() == [parser, module, module]


def test_the_http1_unit_tests_pass_with_the_python_parser():
    done = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_revproxy_http1.py"], "python")
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
