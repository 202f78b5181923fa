"""The operator commands' error rows (`appliance.cli.run_reporting`): one line and an exit status, never a traceback."""

from __future__ import annotations

import pytest

from appliance.cli import REPORTS, CommandError, run_reporting
from relay import users_cli


def raising(exc: BaseException):
    def run() -> int:
        raise exc

    return run


@pytest.mark.parametrize(("exc", "line", "status"), [
    (CommandError("no [relay] table"), "rpturn check: no [relay] table", 1),
    (KeyboardInterrupt(), "rpturn check: interrupted", 130),
])
def test_rpturn_reports_in_one_line_with_its_status(capsys, exc, line, status):
    assert run_reporting("rpturn check", raising(exc), REPORTS) == status
    assert capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize(("exc", "line"), [
    (users_cli.UsageError("no userdb"), "rpturn-users: error: no userdb"),
    (PermissionError(13, "Permission denied", "/etc/turnuserdb.conf"),
     "rpturn-users: error: /etc/turnuserdb.conf: Permission denied"),
    (KeyboardInterrupt(), "rpturn-users: interrupted; nothing changed"),
])
def test_rpturn_users_reports_in_one_line_with_status_1(capsys, exc, line):
    assert run_reporting(users_cli.PROG, raising(exc), users_cli.REPORTS) == 1
    assert capsys.readouterr().err == line + "\n"


def test_the_first_matching_row_wins_as_an_except_clause_would(capsys):
    rows = ((ValueError, lambda exc: "first", 2), (Exception, lambda exc: "second", 3))
    assert run_reporting("tool", raising(ValueError()), rows) == 2
    assert capsys.readouterr().err == "tool: first\n"


def test_an_unlisted_exception_propagates_and_a_clean_run_returns_its_status(capsys):
    with pytest.raises(ZeroDivisionError):
        run_reporting("rpturn check", raising(ZeroDivisionError()), REPORTS)
    assert run_reporting("rpturn check", lambda: 4, REPORTS) == 4
    assert capsys.readouterr().err == ""
