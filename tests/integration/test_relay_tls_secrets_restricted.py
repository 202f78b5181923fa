"""The real `twistd relay` with TURN over TLS (`tls_listen`), TURN REST API shared secrets (`auth_secrets`,
`auth_secrets_file`) and restricted mode (`turn_clients`), driven by coturn's turnutils_uclient, our harness tools
and raw sockets on loopback."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay import stun
from relay.auth import NonceIssuer
from relay.restauth import make_credentials
from tests.support.coturn import turn_peer_fixture, turnutils_uclient
from tests.support.net import free_port, still_open_after
from tests.support.relay_process import EchoPeer, RawTurnClient, RelayProcess, error_code, udp_binding
from tests.support.revproxy_process import Pki

BIN = Path(sys.executable).parent
FIRST, SECOND = "first-shared-secret-0123456789", "second-shared-secret-0123456789"
FILE_SECRET = "file-shared-secret-0123456789"
NONCE_SECRET = "00112233445566778899aabbccddeeff"
PER_SOURCE = 20  # tcp_unallocated_per_ip: control connections without an allocation from one address


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[RelayProcess]:
    where = tmp_path_factory.mktemp("relay")
    secrets_file = where / "secrets"
    secrets_file.write_text(f"# rotated\n{FILE_SECRET}\n")
    os.chmod(secrets_file, 0o600)
    tls_port = free_port()
    process = RelayProcess(where, tls_listen=[f"127.0.0.1:{tls_port}"], certificate=str(pki.bundle),
                           auth_secrets=[FIRST, SECOND], auth_secrets_file=str(secrets_file),
                           tcp_unallocated_per_ip=PER_SOURCE)
    process.tls_port = tls_port  # type: ignore[attr-defined]
    process.secrets_file = secrets_file  # type: ignore[attr-defined]
    process.start()
    yield process
    process.stop()
    assert "Traceback" not in process.log()


turn_peer = turn_peer_fixture()  # coturn's turnutils_peer: a UDP echo peer on loopback


# -- TURN over TLS ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [(), ("-s",)], ids=["channels", "indications"])
def test_turnutils_uclient_over_tls_loses_nothing(relay: RelayProcess, turn_peer: int, mode: tuple) -> None:
    figures = turnutils_uclient(relay.tls_port, turn_peer, "-t", "-S", "-u", "alice", "-w", "secret", *mode)
    # uclient makes its clients in RTP/RTCP pairs: 3 clients are 4 allocations over TCP/TLS.
    assert figures["sent"] >= 150 and figures["received"] == figures["sent"] and figures["lost"] == 0, \
        figures["output"][-1500:]


@pytest.mark.parametrize("secret", [FIRST, SECOND, FILE_SECRET])
def test_turnutils_uclient_with_each_shared_secret_over_tls(relay: RelayProcess, turn_peer: int,
                                                             secret: str) -> None:
    figures = turnutils_uclient(relay.tls_port, turn_peer, "-t", "-S", "-u", "browser", "-W", secret, clients=2)
    assert figures["sent"] >= 100 and figures["received"] == figures["sent"] and figures["lost"] == 0, \
        figures["output"][-1500:]


def test_allocations_over_tls_are_logged_with_their_transport(relay: RelayProcess, turn_peer: int) -> None:
    turnutils_uclient(relay.tls_port, turn_peer, "-t", "-S", "-u", "alice", "-w", "secret", clients=1, messages=5)
    assert re.search(rf"tls 127\.0\.0\.1:\d+->127\.0\.0\.1:{relay.tls_port}", relay.log())


def test_harness_tools_over_tls_verify_the_certificate(relay: RelayProcess, pki: Pki) -> None:
    done = subprocess.run([str(BIN / "rpturn-stunclient"), f"127.0.0.1:{relay.tls_port}", "--tls", "--ca",
                           str(pki.root), "--server-name", "localhost"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "software: rpturn" in done.stdout, done.stderr
    peer = EchoPeer()
    try:
        done = subprocess.run([str(BIN / "rpturn-uclient"), f"127.0.0.1:{relay.tls_port}", "--tls", "--ca",
                               str(pki.root), "--server-name", "localhost", "-u", "app", "--secret", SECOND,
                               "--peer", f"127.0.0.1:{peer.address[1]}", "--clients", "2", "--messages", "50",
                               "--quiet"], capture_output=True, text=True, timeout=60)
    finally:
        peer.close()
    assert done.returncode == 0 and "loss: 0.000 %" in done.stdout, done.stdout + done.stderr


# -- credentials refused (raw socket) --------------------------------------------------------------------------


def rest_client(relay: RelayProcess, secret: str, ttl: int, transport: str = "tls",
                made_ago: float = 0.0) -> RawTurnClient:
    username, password = make_credentials(secret, "browser", ttl, time.time() - made_ago)
    port = relay.tls_port if transport == "tls" else relay.port
    return RawTurnClient(("127.0.0.1", port), username, password, transport=transport)


@pytest.mark.parametrize("transport", ["udp", "tls"])
def test_expired_credentials_get_401_with_the_reason_logged(relay: RelayProcess, transport: str) -> None:
    client = rest_client(relay, FIRST, ttl=600, transport=transport, made_ago=610)
    try:
        response = client.allocate()
    finally:
        client.close()
    assert error_code(response) == 401 and response.get(stun.Attr.NONCE)
    assert "expired credentials" in relay.log()


@pytest.mark.parametrize("transport", ["udp", "tls"])
def test_credentials_of_a_secret_not_configured_get_401(relay: RelayProcess, transport: str) -> None:
    client = rest_client(relay, "some-other-secret-0123456789", ttl=600, transport=transport)
    try:
        assert error_code(client.allocate()) == 401
    finally:
        client.close()
    assert "bad MESSAGE-INTEGRITY (shared secret)" in relay.log()


def test_credentials_command_output_is_accepted_by_the_relay(relay: RelayProcess) -> None:
    done = subprocess.run([str(BIN / "rpturn"), "credentials", "--user", "browser", "--ttl", "600", "--config",
                           str(relay.config_path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    username = re.search(r"username: (\S+)", done.stdout).group(1)
    password = re.search(r"password: (\S+)", done.stdout).group(1)
    client = RawTurnClient(("127.0.0.1", relay.tls_port), username, password, transport="tls")
    try:
        assert client.allocate().msg_class == stun.MessageClass.SUCCESS
    finally:
        client.close()


def test_sighup_rereads_the_secrets_file(relay: RelayProcess) -> None:
    rotated = "rotated-in-secret-0123456789"
    relay.secrets_file.write_text(f"{FILE_SECRET}\n{rotated}\n")
    relay.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "configuration reloaded" not in relay.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    client = rest_client(relay, rotated, ttl=600)
    try:
        assert client.allocate().msg_class == stun.MessageClass.SUCCESS
    finally:
        client.close()


# -- floods on tls_listen --------------------------------------------------------------------------------------


def test_floods_of_garbage_and_half_handshakes_on_tls_listen_are_bounded(relay: RelayProcess, pki: Pki) -> None:
    from relay.tls import HANDSHAKE_TIMEOUT

    garbage, half = [], []
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # the start of a ClientHello, and then nothing
    not_tls = [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff" + os.urandom(199), b"\x00\x01\x00\x00" + os.urandom(60)]
    for i in range(400):
        # Past the per-source limit the relay accepts and aborts at once; on a busy machine that reset can reach
        # the client before its connect() has returned (a timeout socket reads SO_ERROR after the handshake) or
        # before sendall: a refused connection is a bounded one.
        try:
            sock = socket.create_connection(("127.0.0.1", relay.tls_port), timeout=5)
        except ConnectionResetError:
            continue
        try:
            sock.sendall(not_tls[i % 3] if i % 2 else hello)
        except (ConnectionResetError, BrokenPipeError):
            sock.close()
            continue
        (garbage if i % 2 else half).append(sock)
    assert garbage and half, f"only {len(garbage) + len(half)} of 400 flood connections were not refused"
    # Meanwhile a real client (from another address: the flood's has hit its per-source limit) is served.
    context = pki.client_context()
    with socket.create_connection(("127.0.0.1", relay.tls_port), timeout=5, source_address=("127.0.0.3", 0)) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        request = stun.encode(stun.Message(stun.Method.BINDING, stun.MessageClass.REQUEST, os.urandom(12), []))
        tls.sendall(request)
        assert stun.parse(tls.recv(2048)).msg_class == stun.MessageClass.SUCCESS
    not_closed = 0
    for sock in garbage:  # the server closes a connection whose first bytes are no TLS at once
        sock.settimeout(5)
        try:
            while sock.recv(4096):  # a TLS alert may come first; then the end
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            not_closed += 1
        sock.close()
    assert not not_closed, f"{not_closed} of {len(garbage)} connections sending no TLS still open"
    # A handshake that never finishes is closed by the server after HANDSHAKE_TIMEOUT (or refused at once).
    still_open = still_open_after(half, HANDSHAKE_TIMEOUT + 3)
    for sock in half:
        sock.close()
    assert not still_open, f"{len(still_open)} half-done handshakes still open"
    assert udp_binding("127.0.0.1", relay.port) is not None
    assert "Traceback" not in relay.log()


# -- restricted mode -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    process = RelayProcess(tmp_path_factory.mktemp("restricted"), turn_clients=["127.0.0.2/32"],
                           nonce_secret=NONCE_SECRET)
    process.start()
    yield process
    process.stop()


def signed_allocate(client: RawTurnClient, nonce: str) -> bytes:
    client.realm, client.nonce = "rpturn.test", nonce
    return client.signed(stun.Method.ALLOCATE, [(stun.Attr.REQUESTED_TRANSPORT, 17)])


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_outsider_binding_is_answered_and_a_signed_allocate_is_not(restricted: RelayProcess,
                                                                  transport: str) -> None:
    client = RawTurnClient(restricted.address, transport=transport, timeout=1.0)
    try:
        binding = stun.Message(stun.Method.BINDING, stun.MessageClass.REQUEST, os.urandom(12), [])
        client.send_bytes(stun.encode(binding))
        assert client.recv_message(binding.transaction_id).msg_class == stun.MessageClass.SUCCESS
        # A correctly signed Allocate: a valid nonce for this address (we know the nonce secret), the right key.
        nonce = NonceIssuer(bytes.fromhex(NONCE_SECRET)).issue("127.0.0.1", time.time())
        client.send_bytes(signed_allocate(client, nonce))
        with pytest.raises(TimeoutError):
            client.recv_frame()
        client.send_bytes(client.unsigned(stun.Method.ALLOCATE, [(stun.Attr.REQUESTED_TRANSPORT, 17)]))
        with pytest.raises(TimeoutError):
            client.recv_frame()  # not even the 401 challenge
    finally:
        client.close()


def test_listed_source_allocates_and_relays(restricted: RelayProcess) -> None:
    peer = EchoPeer()
    client = RawTurnClient(restricted.address, source="127.0.0.2")
    try:
        assert client.allocate().msg_class == stun.MessageClass.SUCCESS
        bind = client.request(stun.Method.CHANNEL_BIND, [(stun.Attr.CHANNEL_NUMBER, 0x4001),
                                                         (stun.Attr.XOR_PEER_ADDRESS, peer.address)])
        assert bind.msg_class == stun.MessageClass.SUCCESS, bind
        for i in range(20):
            client.send_bytes(stun.encode_channel_data(0x4001, b"media %d" % i))
            frame = client.recv_frame()
            assert frame[4:] .startswith(b"media %d" % i)
    finally:
        client.close()
        peer.close()


# -- TURN disabled (turn = false): a STUN-only server ----------------------------------------------------------


@pytest.fixture(scope="module")
def stun_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    process = RelayProcess(tmp_path_factory.mktemp("stun-only"), turn=False, nonce_secret=NONCE_SECRET)
    process.start()
    yield process
    process.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.2"])
def test_with_turn_off_binding_is_answered_and_no_turn_request_is(stun_only: RelayProcess, transport: str,
                                                                  source: str) -> None:
    client = RawTurnClient(stun_only.address, transport=transport, timeout=1.0, source=source)
    try:
        binding = stun.Message(stun.Method.BINDING, stun.MessageClass.REQUEST, os.urandom(12), [])
        client.send_bytes(stun.encode(binding))
        assert client.recv_message(binding.transaction_id).msg_class == stun.MessageClass.SUCCESS
        nonce = NonceIssuer(bytes.fromhex(NONCE_SECRET)).issue(source, time.time())
        client.send_bytes(signed_allocate(client, nonce))  # signed with the users' key: still nothing
        with pytest.raises(TimeoutError):
            client.recv_frame()
        client.send_bytes(client.unsigned(stun.Method.ALLOCATE, [(stun.Attr.REQUESTED_TRANSPORT, 17)]))
        with pytest.raises(TimeoutError):
            client.recv_frame()
    finally:
        client.close()
    assert "TURN disabled (turn = false)" in stun_only.log()


# -- aioice over TLS -------------------------------------------------------------------------------------------


def test_aioice_turn_client_over_tls_with_rest_credentials(relay: RelayProcess, pki: Pki) -> None:
    import asyncio

    from aioice.turn import create_turn_endpoint

    peer = EchoPeer()
    username, password = make_credentials(FIRST, "aioice", 600, time.time())
    context = pki.client_context()
    context.check_hostname = False  # aioice connects by address; the chain is still checked against the test CA

    class Collect(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.received: list[bytes] = []
            self.arrived = asyncio.Event()

        def datagram_received(self, data: bytes, addr: tuple) -> None:
            self.received.append(data)
            if len(self.received) == 50:
                self.arrived.set()

    async def exchange() -> list[bytes]:
        endpoint, collector = await create_turn_endpoint(
            Collect, server_addr=("127.0.0.1", relay.tls_port), username=username, password=password,
            transport="tcp", ssl=context)
        try:
            for i in range(50):
                endpoint.sendto(b"%05d" % i + b"y" * 300, peer.address)
                await asyncio.sleep(0.002)
            await asyncio.wait_for(collector.arrived.wait(), 10)
            return collector.received
        finally:
            endpoint.close()
            await asyncio.sleep(0.1)

    try:
        received = asyncio.run(exchange())
    finally:
        peer.close()
    assert sorted(received) == [b"%05d" % i + b"y" * 300 for i in range(50)]


def test_sighup_rereads_the_certificate_of_tls_listen(relay: RelayProcess, pki: Pki) -> None:
    def served_certificate() -> bytes:
        context = pki.client_context()
        with socket.create_connection(("127.0.0.1", relay.tls_port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.getpeercert(binary_form=True)

    before = served_certificate()
    leaf, key = pki.issue(names=("localhost", "127.0.0.1"))
    original = pki.bundle.read_bytes()
    pki.bundle.write_bytes(leaf + key + pki.intermediate_pem)
    try:
        marker = relay.log().count("configuration reloaded")
        relay.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while relay.log().count("configuration reloaded") == marker and time.monotonic() < deadline:
            time.sleep(0.05)
        after = served_certificate()
        assert after != before
        assert after == ssl.PEM_cert_to_DER_cert(leaf.decode())
    finally:
        pki.bundle.write_bytes(original)
        relay.signal(signal.SIGHUP)


def test_a_flood_of_full_tls_handshakes_is_capped_per_source(relay: RelayProcess, pki: Pki) -> None:
    context = pki.client_context()
    opened, refused = [], 0
    for _ in range(3 * PER_SOURCE):
        raw = socket.socket()
        raw.settimeout(2)
        raw.bind(("127.0.0.4", 0))
        try:
            raw.connect(("127.0.0.1", relay.tls_port))
            tls = context.wrap_socket(raw, server_hostname="localhost")
            tls.sendall(stun.encode(stun.Message(stun.Method.BINDING, stun.MessageClass.REQUEST, os.urandom(12),
                                                 [])))
            if not tls.recv(2048):
                raise ConnectionResetError
            opened.append(tls)
        except (OSError, ssl.SSLError):
            refused += 1
            raw.close()
    try:
        # The source's cap holds for TLS as for TCP; another address is still served.
        assert len(opened) <= PER_SOURCE and refused >= 2 * PER_SOURCE, (len(opened), refused)
        with socket.create_connection(("127.0.0.1", relay.tls_port), timeout=5,
                                      source_address=("127.0.0.5", 0)) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(stun.encode(stun.Message(stun.Method.BINDING, stun.MessageClass.REQUEST, os.urandom(12), [])))
            assert stun.parse(tls.recv(2048)).msg_class == stun.MessageClass.SUCCESS
    finally:
        for tls in opened:
            tls.close()
    assert "Traceback" not in relay.log()
