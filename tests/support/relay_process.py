"""Run the real `twistd relay` process on loopback for integration tests, and talk raw STUN to it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.config import format_hostport
from relay import stun
from tests.support.net import free_port
from tests.support.processes import (  # noqa: F401 (re-exported)
    ROOT,
    TWISTD,
    stop_process,
    toml_value,
    twistd_command,
    twistd_exit,
    write_tables,
)


def binding_request() -> tuple[bytes, bytes]:
    transaction_id = os.urandom(12)
    message = stun.Message(stun.Method.BINDING, stun.MessageClass.REQUEST, transaction_id, [])
    return stun.encode(message, fingerprint=True), transaction_id


def udp_binding(host: str, port: int, timeout: float = 1.0, *, source: str | None = None) -> stun.Message | None:
    """One STUN Binding over UDP (from `source` when given); the parsed response, or None on timeout."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    request, transaction_id = binding_request()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if source is not None:
            sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.sendto(request, (host, port))
        try:
            data, _ = sock.recvfrom(2048)
        except TimeoutError:
            return None
    response = stun.parse(data)
    assert response.transaction_id == transaction_id
    return response


class RelayProcess:
    """`twistd -n --pidfile= relay --config <tmp>.toml` with a config written from keyword arguments."""

    def __init__(self, tmp_path: Path, host: str = "127.0.0.1", listen_host: str | None = None,
                 **relay_table) -> None:
        self.host = host  # where the tests' clients send to
        listen_host = listen_host or host
        self.port = free_port(listen_host)
        self.tmp_path = tmp_path
        self.config_path = tmp_path / "rpturn.toml"
        self.log_path = tmp_path / "relay.log"
        table = {
            "listen": [format_hostport(listen_host, self.port)],
            "realm": "rpturn.test",
            "min_port": 40000,
            "max_port": 44999,
            "relay_ip": "127.0.0.1",
            "allowed_peers": ["127.0.0.0/8"],
        }
        users = relay_table.pop("users", {"alice": "secret"})
        table.update(relay_table)
        write_tables(self.config_path, {"relay": table, "relay.users": users})
        self.process: subprocess.Popen | None = None

    def start(self, extra_args: tuple[str, ...] = ()) -> RelayProcess:
        self.process = subprocess.Popen(
            twistd_command("relay", self.config_path, *extra_args, logfile=self.log_path),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode(errors="replace")
                raise RuntimeError(f"relay exited with {self.process.returncode}: {output}\n{self.log()}")
            if udp_binding(self.host, self.port, timeout=0.2) is not None and self._tcp_listening():
                return self
        raise RuntimeError(f"relay did not answer a Binding and accept TCP within 15 s:\n{self.log()}")

    def _tcp_listening(self) -> bool:
        """Is a TCP socket listening on the relay's port (the tests use both; UDP answering alone is not ready)?

        Read from the kernel's table rather than by connecting: a test connection would count against the relay's
        per-source limits that some tests measure exactly."""
        port_suffix = f":{self.port:04X}"
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as lines:
                next(lines)  # the header
                for line in lines:
                    _slot, local, _remote, state, *_ = line.split()
                    if local.endswith(port_suffix) and state == "0A":  # 0A: LISTEN
                        return True
        return False

    def connect_tcp(self, source: str = "127.0.0.1") -> socket.socket:
        """A TCP connection to the relay from `source`. A refusal fails with whether the relay is still running and
        the end of its log: a listener gone from a live relay and a relay that died are different bugs."""
        conn = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        conn.bind((source, 0))
        try:
            conn.connect(self.address)
        except ConnectionRefusedError:
            conn.close()
            state = "running" if self.process is None or self.process.poll() is None else \
                f"exited with {self.process.returncode}"
            raise AssertionError(f"relay on {self.address} refused a TCP connection from {source}; relay {state}; "
                                 f"log ends:\n{self.log()[-3000:]}") from None
        return conn

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> int:
        """SIGTERM and wait; 0 for a clean shutdown (see `twistd_exit`)."""
        if self.process is None:
            return 0
        stop_process(self.process, 10, raise_on_timeout=True)
        return twistd_exit(self.process, self.log())

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


def relay_fixture(name: str, **relay_table: Any) -> Any:
    """A module-scoped pytest fixture giving a started `RelayProcess` (config keys as RelayProcess takes them); at
    the end of the module it must stop cleanly, with no traceback in its log."""
    import pytest

    @pytest.fixture(scope="module")
    def relay(tmp_path_factory: Any) -> Any:
        process = RelayProcess(tmp_path_factory.mktemp(name), **relay_table).start()
        yield process
        assert process.stop() == 0
        assert "Traceback" not in process.log()

    return relay


class RawTurnClient:
    """A deliberately small, blocking TURN client over one UDP, TCP or TLS socket, for checking exact server answers.

    `source` binds the client's socket to that address first (e.g. 127.0.0.2, to be another client host on
    loopback). Over TLS the server's certificate is not checked unless `ca_file` is given."""

    def __init__(self, server: tuple[str, int], username: str = "alice", password: str = "secret",
                 transport: str = "udp", timeout: float = 2.0, source: str | None = None,
                 ca_file: str | None = None, server_name: str = "localhost") -> None:
        self.server = server
        self.username = username
        self.password = password
        self.transport = transport
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET6 if ":" in server[0] else socket.AF_INET, kind)
        self.sock.settimeout(timeout)
        if source is not None:
            self.sock.bind((source, 0))
        if transport in ("tcp", "tls"):
            self.sock.connect(server)
            if transport == "tls":
                import ssl

                context = ssl.create_default_context(cafile=ca_file)
                if ca_file is None:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                self.sock = context.wrap_socket(self.sock, server_hostname=server_name)
        elif source is None:
            self.sock.bind((server[0], 0))
        self.buffer = b""
        self.realm: str | None = None
        self.nonce: str | None = None

    def close(self) -> None:
        self.sock.close()

    @property
    def local_address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def send_bytes(self, data: bytes) -> None:
        if self.transport == "udp":
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def recv_frame(self) -> bytes:
        if self.transport == "udp":
            return self.sock.recvfrom(70000)[0]
        while True:
            size = stun.tcp_frame_length(self.buffer) if len(self.buffer) >= 4 else None
            if size is not None and len(self.buffer) >= size:
                frame, self.buffer = self.buffer[:size], self.buffer[size:]
                return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk

    def recv_message(self, transaction_id: bytes | None = None) -> stun.Message:
        while True:
            frame = self.recv_frame()
            if stun.is_channel_data(frame):
                continue
            message = stun.parse(frame)
            if transaction_id is None or message.transaction_id == transaction_id:
                return message

    @property
    def key(self) -> bytes:
        assert self.realm is not None
        return stun.long_term_key(self.username, self.realm, self.password)

    def signed(self, method: int, attributes=(), *, transaction_id: bytes | None = None,
               fingerprint: bool = False, msg_class: int = stun.MessageClass.REQUEST) -> bytes:
        """An encoded request carrying USERNAME, REALM, NONCE and MESSAGE-INTEGRITY."""
        if self.nonce is None:
            self.learn_nonce()
        message = stun.Message(method, msg_class, transaction_id or os.urandom(12), list(attributes))
        message.add(stun.Attr.USERNAME, self.username).add(stun.Attr.REALM, self.realm)
        message.add(stun.Attr.NONCE, self.nonce)
        return stun.encode(message, integrity_key=self.key, fingerprint=fingerprint)

    def unsigned(self, method: int, attributes=(), *, transaction_id: bytes | None = None,
                 fingerprint: bool = False) -> bytes:
        message = stun.Message(method, stun.MessageClass.REQUEST, transaction_id or os.urandom(12),
                               list(attributes))
        return stun.encode(message, fingerprint=fingerprint)

    def learn_nonce(self) -> stun.Message:
        """An unauthenticated Allocate: the server's 401 carries REALM and NONCE."""
        transaction_id = os.urandom(12)
        self.send_bytes(self.unsigned(stun.Method.ALLOCATE, [(stun.Attr.REQUESTED_TRANSPORT, 17)],
                                      transaction_id=transaction_id))
        response = self.recv_message(transaction_id)
        assert response.get(stun.Attr.ERROR_CODE)[0] == 401, response
        self.realm = response.get(stun.Attr.REALM)
        self.nonce = response.get(stun.Attr.NONCE)
        return response

    def request(self, method: int, attributes=(), *, fingerprint: bool = False) -> stun.Message:
        """A signed request and its response; one retry with the fresh nonce on 438."""
        for _ in range(2):
            transaction_id = os.urandom(12)
            self.send_bytes(self.signed(method, attributes, transaction_id=transaction_id, fingerprint=fingerprint))
            response = self.recv_message(transaction_id)
            error = response.get(stun.Attr.ERROR_CODE)
            if error and error[0] == 438:
                self.nonce = response.get(stun.Attr.NONCE)
                continue
            return response
        return response

    def allocate(self, *extra) -> stun.Message:
        return self.request(stun.Method.ALLOCATE, [(stun.Attr.REQUESTED_TRANSPORT, 17), *extra])


def error_code(message: stun.Message) -> int | None:
    error = message.get(stun.Attr.ERROR_CODE)
    return error[0] if error else None


class EchoPeer:
    """A UDP echo peer on loopback, run in a thread; counts what it echoed."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        import threading

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(0.2)
        self.address = self.sock.getsockname()
        self.echoed = 0
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                data, addr = self.sock.recvfrom(70000)
            except TimeoutError:
                continue
            except OSError:
                return
            self.sock.sendto(data, addr)
            self.echoed += 1

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()

    def __enter__(self) -> EchoPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def turn_clients(server: tuple[str, int], count: int, **options: Any) -> Iterator[list[RawTurnClient]]:
    """`count` RawTurnClients to `server` (RawTurnClient's options), all closed at the end."""
    clients = [RawTurnClient(server, **options) for _ in range(count)]
    try:
        yield clients
    finally:
        for client in clients:
            client.close()
