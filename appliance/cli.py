"""`rpturn`: the operator command (`rpturn check`, `rpturn status`, ...), like `nginx -t` and friends.

A subcommand lives in `appliance.commands.<name>`; this module only finds it, parses its arguments and turns any
operator-facing error into one line on stderr and exit status 1 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# How an operator command reports an exception: the exception types, the text after "PROG: ", the exit status.
ErrorReport = tuple[type[BaseException] | tuple[type[BaseException], ...], Callable[[BaseException], str], int]

# name -> module under appliance.commands; each module has HELP, add_arguments(parser) and run(args) -> int.
SUBCOMMANDS: dict[str, str] = {
    "check": "check",
    "setup": "setup",
    "credentials": "credentials",
    "reset": "reset",
    "cert": "cert",
    "status": "status",
}


class CommandError(Exception):
    """A problem the operator can act on; printed as one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpturn", description="Operate the rpturn DMZ appliance.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(f"appliance.commands.{module_name}")
        sp = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sp)
        sp.set_defaults(run=module.run)
    return parser


def run_reporting(prog: str, run: Callable[[], int], reports: Sequence[ErrorReport]) -> int:
    """`run()`'s exit status; an exception `reports` lists (the first row that matches, as `except` clauses would)
    is one line `prog: text` on stderr and that row's status instead of a traceback. Anything else propagates.

    The operator commands (`rpturn`, `rpturn-users`) differ only in these rows.
    """
    try:
        return run()
    except BaseException as exc:
        for kinds, text, status in reports:
            if isinstance(exc, kinds):
                print(f"{prog}: {text(exc)}", file=sys.stderr)
                return status
        raise


REPORTS: tuple[ErrorReport, ...] = (
    (CommandError, str, 1),
    (KeyboardInterrupt, lambda _exc: "interrupted", 130),
)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_reporting(f"rpturn {args.command}", lambda: int(args.run(args)), REPORTS)


if __name__ == "__main__":
    sys.exit(main())
