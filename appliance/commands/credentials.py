"""`rpturn credentials --user U --ttl 86400`: a time-limited TURN username/password, the way a platform hands one to
a browser (the TURN REST API scheme, relay/restauth.py).

The secrets come from the config's `[relay] auth_secrets` and `auth_secrets_file`; new credentials are made with the
first of them (inline ones before the file's), so when rotating put the new secret first and drop the old one once
no credentials made with it are still in use (the longest ttl handed out). Any configured secret verifies.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

from appliance.cli import CommandError

HELP = "print a time-limited TURN username and password made with the shared secret (TURN REST API)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", default="", help="the user part of the username (may be empty)")
    parser.add_argument("--ttl", type=int, default=86400, help="seconds the credentials stay valid (default 86400)")
    parser.add_argument("--config", default="conf/rpturn.toml", metavar="FILE",
                        help="the appliance's config (default: %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help='print {"username", "password", "ttl", "expires"} as JSON')


def run(args: argparse.Namespace) -> int:
    from relay.config import ConfigError, load_relay_config
    from relay.restauth import SecretsFileError, SharedSecrets, make_credentials

    if args.ttl <= 0:
        raise CommandError(f"--ttl: must be a positive number of seconds, got {args.ttl}")
    if ":" in args.user:
        raise CommandError("--user: cannot contain ':' (it separates the expiry from the user)")
    try:
        config = load_relay_config(args.config)
        secrets = SharedSecrets(config.auth_secrets, config.auth_secrets_file)
    except (ConfigError, SecretsFileError) as exc:
        raise CommandError(str(exc)) from None
    if not secrets:
        raise CommandError(f"{args.config}: [relay] auth_secrets: no shared secret configured "
                           "(set auth_secrets or auth_secrets_file)")
    now = time.time()
    username, password = make_credentials(secrets.secrets[0], args.user or None, args.ttl, now)
    expires = datetime.datetime.fromtimestamp(int(now) + args.ttl, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if args.json:
        print(json.dumps({"username": username, "password": password, "ttl": args.ttl, "expires": expires}))
    else:
        print(f"username: {username}")
        print(f"password: {password}")
        print(f"expires:  {expires} (in {args.ttl} s)")
    return 0
