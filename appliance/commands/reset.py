"""`rpturn reset`: back to the sample configuration, like the old appliance's "restore default settings".

Refuses while the appliance runs (a live pid file or an answering management listener, see appliance.running)
unless `--force`. Lists what it will do and asks (or `--yes`); then removes the users (userdb), the TURN shared
secrets (auth_secrets_file), the generated self-signed certificate, the ACME account key and certificate, and the
bundles `rpturn cert install` kept (`certificate.pem` and `.previous` beside the config), restores the sample config
atomically (the replaced config kept as `.bak`) and asks whether to delete the logs (`--logs`, default
/var/log/rpturn; with `--yes` only when `--delete-logs` is given).

The sample is the project's `conf/rpturn.toml`; when that is the very file being reset, the copy `rpturn setup`
kept the first time it replaced it (`FILE.orig`) is restored instead.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, TextIO

from appliance import running
from appliance.atomic import remove_file, write_atomically
from appliance.cli import CommandError
from appliance.prompt import Console
from appliance.wizard import validate_yes_no

HELP = "restore the sample configuration; remove users, secrets and generated certificates"
SAMPLE = Path(__file__).resolve().parents[2] / "conf" / "rpturn.toml"
INSTALLED_CERTIFICATE = "certificate.pem"  # where `rpturn cert install` puts the bundle, beside the config
DEFAULT_LOGS = "/var/log/rpturn"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="conf/rpturn.toml", metavar="FILE", help="the config to reset")
    parser.add_argument("--yes", action="store_true", help="do not ask (logs are kept unless --delete-logs)")
    parser.add_argument("--force", action="store_true", help="reset even though the appliance seems to run")
    parser.add_argument("--pidfile", default=running.default_pidfile(),
                        help="the running appliance's pid file (default: %(default)s)")
    parser.add_argument("--sample", metavar="FILE", help=f"the configuration to restore (default: {SAMPLE})")
    parser.add_argument("--logs", action="append", metavar="PATH",
                        help=f"log file or directory (repeatable; default {DEFAULT_LOGS})")
    parser.add_argument("--delete-logs", action="store_true", help="with --yes: delete the logs too")


def sample_for(config: str, given: str | None) -> str:
    if given:
        return given
    if not os.path.exists(SAMPLE) or os.path.samefile(SAMPLE, config):
        orig = config + ".orig"
        if os.path.exists(orig):
            return orig
        raise CommandError(f"{config} is the sample itself and there is no {orig} (rpturn setup keeps one the first "
                           f"time it replaces a file): give --sample FILE")
    return str(SAMPLE)


def _path(table: dict[str, Any], key: str) -> str | None:
    value = table.get(key)
    return os.path.abspath(value) if isinstance(value, str) and value else None


def files_to_remove(config: str, document: dict[str, Any]) -> list[str]:
    relay = document.get("relay") if isinstance(document.get("relay"), dict) else {}
    proxy = document.get("revproxy") if isinstance(document.get("revproxy"), dict) else {}
    installed = os.path.join(os.path.dirname(config), INSTALLED_CERTIFICATE)
    candidates = [_path(relay, "userdb"), _path(relay, "auth_secrets_file"), _path(proxy, "self_signed"),
                  installed, installed + ".previous"]
    acme = proxy.get("acme")
    if isinstance(acme, dict):  # the ACME account key and the certificate obtained with it
        state = _path(acme, "state_dir") or os.path.abspath("var/acme")
        candidates += [os.path.join(state, "certificate.pem"), os.path.join(state, "account.key")]
    keep = {os.path.realpath(config), os.path.realpath(SAMPLE)}
    out = []
    for path in candidates:
        if path and os.path.isfile(path) and os.path.realpath(path) not in keep and path not in out:
            out.append(path)
    return out


def log_files(paths: list[str]) -> list[str]:
    out = []
    for path in paths:
        if os.path.isdir(path):
            out += sorted(p for p in glob.glob(os.path.join(path, "*")) if os.path.isfile(p))
        elif os.path.isfile(path):
            out += [path, *sorted(p for p in glob.glob(glob.escape(path) + ".*") if os.path.isfile(p))]
    return out


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    console = Console(stdin or sys.stdin, stdout or sys.stdout)
    config = os.path.abspath(args.config)
    try:
        document = tomllib.loads(Path(config).read_text())
    except FileNotFoundError:
        document = {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        console.say(f"note: {config} cannot be read ({e}); only the sample is restored")
        document = {}
    management = document.get("management", {}).get("listen") if isinstance(document.get("management"), dict) \
        else None
    state = running.detect(args.pidfile, management if isinstance(management, str) else None)
    if state and not args.force:
        raise CommandError(f"the appliance is running ({state.describe()}): stop it first, or give --force")
    sample = sample_for(config, args.sample)
    try:
        sample_text = Path(sample).read_bytes()
    except OSError as e:
        raise CommandError(f"{sample}: cannot read the sample: {e.strerror}") from None
    remove = files_to_remove(config, document)
    console.say(f"rpturn reset will restore {config} from {sample}" +
                (f" (the current one is kept as {config}.bak)" if os.path.exists(config) else ""))
    for path in remove:
        console.say(f"  and remove {path}")
    if not args.yes and not console.ask("Reset the appliance's configuration?", False, validate_yes_no,
                                        shown="no"):
        console.say("nothing was changed")
        return 1
    logs = log_files(args.logs or [DEFAULT_LOGS])
    delete_logs = args.delete_logs
    if logs and not args.yes:
        delete_logs = console.ask(f"Delete the {len(logs)} log file(s) too ({', '.join(logs[:3])}"
                                  f"{', ...' if len(logs) > 3 else ''})?", False, validate_yes_no, shown="no")
    for path in remove:
        remove_file(path)
        console.say(f"removed {path}")
    write_atomically(config, sample_text, mode=0o644, keep_backup=os.path.exists(config))
    console.say(f"restored {config} from {sample}")
    if delete_logs:
        for path in logs:
            remove_file(path)
        console.say(f"deleted {len(logs)} log file(s)")
    console.say(f"next: rpturn setup --config {config}")
    return 0
