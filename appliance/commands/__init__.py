"""The `rpturn` operator command's subcommands, one module each.

Each module has `HELP` (one line for `rpturn --help`), `add_arguments(parser)` and `run(args) -> int` (the exit
status). They are imported only when chosen, so `rpturn status` does not pay for the certificate tooling."""
