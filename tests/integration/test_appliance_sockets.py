"""The shared listening sockets and open-files limit, on loopback: dual-stack only for `::`, one backlog,
SO_REUSEPORT groups, one-line errors naming the service's table, key and address."""

from __future__ import annotations

import resource
import socket
import subprocess
from pathlib import Path

import pytest

from appliance.config import ConfigError
from appliance.limits import raise_open_files_limit
from appliance.sockets import BACKLOG, Listener, bind_all, bind_listener, bind_tcp, bind_udp, check_local_address


@pytest.mark.parametrize("bind", [bind_udp, bind_tcp])
def test_only_the_ipv6_wildcard_is_dual_stack(bind):
    with bind("::", 0) as wildcard, bind("::1", 0) as loopback:
        assert wildcard.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert loopback.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1


def test_dual_stack_listener_takes_an_ipv4_client():
    with bind_tcp("::", 0) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            listener.setblocking(True)
            _conn, peer = listener.accept()
            _conn.close()
    assert peer[0] == "::ffff:127.0.0.1"


def test_sockets_are_non_blocking_and_tcp_listens_with_the_one_backlog():
    with bind_tcp("127.0.0.1", 0) as tcp, bind_udp("127.0.0.1", 0) as udp:
        assert not tcp.getblocking() and not udp.getblocking()
        assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        # The backlog the kernel applies (ss's Send-Q of a listening socket): BACKLOG, capped by somaxconn.
        port = tcp.getsockname()[1]
        listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True)
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert listing.stdout.split()[2] == str(min(BACKLOG, somaxconn)), listing.stdout
    assert BACKLOG == 4096


@pytest.mark.parametrize("bind", [bind_udp, bind_tcp])
def test_reuse_port_groups_share_a_port_and_others_cannot_join(bind):
    with bind("127.0.0.1", 0, reuse_port=True) as first:
        port = first.getsockname()[1]
        with bind("127.0.0.1", port, reuse_port=True) as second:
            assert second.getsockname()[1] == port
        with pytest.raises(OSError):
            bind("127.0.0.1", port)


def test_port_in_use_is_one_line_naming_table_key_and_address():
    with bind_udp("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as raised:
            bind_listener(Listener("udp", "127.0.0.1", port, "relay", "listen"), "conf/x.toml")
    assert str(raised.value) == (f"conf/x.toml: [relay] listen: the relay cannot listen on 127.0.0.1:{port} (UDP): "
                                 "already in use (another process listens there)")


def test_bind_all_closes_what_it_bound_when_one_fails():
    with bind_tcp("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        free = socket.socket()
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
        free.close()
        with pytest.raises(ConfigError, match=r"\[revproxy\] http: the revproxy cannot listen on"):
            bind_all([Listener("tcp", "127.0.0.1", free_port, "revproxy", "https"),
                      Listener("tcp", "127.0.0.1", port, "revproxy", "http")], "x.toml")
    # The first one was released again: binding it now works.
    bind_tcp("127.0.0.1", free_port).close()


def test_an_address_not_on_this_host_is_found_by_binding():
    check_local_address("x.toml", "relay", "relay_ip", "127.0.0.1")
    with pytest.raises(ConfigError) as raised:
        check_local_address("x.toml", "relay", "relay_ip", "192.0.2.77")  # TEST-NET-1: bound, never sent to
    assert str(raised.value) == ("x.toml: [relay] relay_ip: cannot bind 192.0.2.77: it is not an address of this "
                                 "host")


def test_open_files_limit_goes_up_to_the_hard_limit_or_to_what_is_needed():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_open_files_limit(300) == (min(300, hard), hard)
        assert raise_open_files_limit(100)[0] == min(300, hard)  # never lowered
        assert raise_open_files_limit() == (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
