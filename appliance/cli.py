"""`rpturn`: the operator command (`rpturn check`, `rpturn status`, ...), like `nginx -t` and friends.

A subcommand lives in `appliance.commands.<name>`; this module only finds it, parses its arguments and turns any
operator-facing error into one line on stderr and exit status 1 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CommandError as e:
        print(f"rpturn {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rpturn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
