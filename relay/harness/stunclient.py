"""rpturn-stunclient: one STUN Binding over UDP, TCP or TLS; prints the mapped address, SOFTWARE and round-trip time.

Exit status 0 on a success response, 1 on an error response, a timeout or a refused connection (one line on
stderr says which), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import defer, task

from appliance.config import format_hostport
from relay.harness.common import host_port, non_negative_float
from relay.harness.twisted_client import RequestFailed, TransportFailed, connect
from relay.stun import Attr

PROG = "rpturn-stunclient"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="Send one STUN Binding request and print the answer.")
    parser.add_argument("server", type=host_port, metavar="HOST[:PORT]", help="STUN server (port 3478 by default)")
    parser.add_argument("--tcp", action="store_true", help="over TCP instead of UDP")
    parser.add_argument("--tls", action="store_true",
                        help="over TLS (the server's certificate is not checked unless --ca is given)")
    parser.add_argument("--ca", metavar="FILE", help="with --tls: verify the server against this CA bundle")
    parser.add_argument("--server-name", metavar="NAME", help="with --tls: SNI and the name --ca checks")
    parser.add_argument("--timeout", type=non_negative_float, default=5.0,
                        help="give up after this many seconds (UDP retransmits on the RFC 5389 schedule until "
                             "then; default 5)")
    args = parser.parse_args(argv)
    if (args.ca or args.server_name) and not args.tls:
        parser.error("--ca and --server-name go with --tls")
    return args


@defer.inlineCallbacks
def _binding(reactor: Any, args: argparse.Namespace) -> Any:
    host, port = args.server
    transport = "TLS" if args.tls else "TCP" if args.tcp else "UDP"
    where = f"{host}:{port} over {transport}"
    try:
        client = yield connect(reactor, host, port, tcp=args.tcp, tls=args.tls, ca_file=args.ca,
                               server_name=args.server_name, connect_timeout=args.timeout,
                               transaction_timeout=args.timeout)
        started = reactor.seconds()
        success = yield client.binding()
        rtt = reactor.seconds() - started
    except RequestFailed as e:
        if e.code == 0:
            print(f"{PROG}: no response from {where} within {args.timeout:g} s (timeout)", file=sys.stderr)
        else:
            print(f"{PROG}: error response from {where}: {e.code} {e.reason}", file=sys.stderr)
        return 1
    except TransportFailed as e:
        print(f"{PROG}: {where}: {e}", file=sys.stderr)
        return 1
    client.close()
    message = success.message
    mapped = message.get(Attr.XOR_MAPPED_ADDRESS) or message.get(Attr.MAPPED_ADDRESS)
    if mapped is None:
        print(f"{PROG}: success response from {where} carries no mapped address", file=sys.stderr)
        return 1
    print(f"mapped address: {format_hostport(*mapped)}")
    print(f"software: {message.get(Attr.SOFTWARE) or '-'}")
    print(f"rtt: {rtt * 1000:.3f} ms")
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def run(reactor: Any) -> defer.Deferred[Any]:
        return _binding(reactor, args).addCallback(_exit_code)

    task.react(run)


def _exit_code(code: int) -> None:
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
