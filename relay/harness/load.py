"""The load generator behind rpturn-uclient: N TURN clients in one process, on a plain non-blocking socket loop.

`Engine.setup` allocates (and creates the permission, and binds the channel) for every client, a bounded number
of transactions in flight at once, all driven by the sans-I/O `relay.client.TurnClient`. `Engine.run` then sends
precomputed ChannelData or Send-indication packets (`PacketTemplate`: only the 8-byte send timestamp and the
4-byte step number are written per packet) round-robin over the clients at a paced rate, and reads the echoes,
taking the round-trip time from the timestamp. `Engine.close` deletes the allocations. Each run also counts the
datagrams the kernel dropped on the client's own UDP sockets (`/proc/net/udp*`, Linux), so a loss can be told apart
from the server's.

Over TLS (`tls`, which implies the stream framing of TCP) each socket is a non-blocking `ssl.SSLSocket` whose
handshake is done, blocking, when it is opened; a read may leave decrypted bytes inside the TLS layer that no socket
readiness will announce, so stream reads go on while `pending()` says so.

Why not the reactor: on this 2-core machine this loop offers about 200 000 datagrams/s from one process and
reads echoes at 100 000 pps without loss, where a Twisted DatagramProtocol loses 0.2-0.4 % at 100 000 pps.
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable

from appliance.limits import raise_open_files_limit
from relay import stun
from relay.client import (
    TIMEOUT,
    DataReceived,
    Failure,
    PacketTemplate,
    Success,
    TurnClient,
)
from relay.client_stream import StreamFramer, data_payload_offset
from relay.harness.common import client_tls_context, family_of, raise_buffers, udp_socket_drops
from relay.harness.load_types import LoadOptions, RunResult, SetupResult
from relay.stun import Method

Address = tuple[str, int]

SETUP_WINDOW = 128  # clients being set up at once: enough to keep a server busy, few enough not to flood it
BURST = 256  # packets sent in one go before reading echoes again
_STAMP = struct.Struct("!Q")
_STEP = struct.Struct("!I")
# A non-blocking read or write that cannot go on now: plain sockets and TLS sockets say it differently.
WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
MIN_SIZE = _STAMP.size
now_ns = time.perf_counter_ns


def error_key(failure: Failure) -> str:
    return "timeout" if failure.code == TIMEOUT else str(failure.code)


class Session:
    """One TURN client: its socket, its sans-I/O state, its packet template."""

    __slots__ = ("failed", "framer", "outgoing", "ready", "sock", "step", "template", "turn")

    def __init__(self, options: LoadOptions) -> None:
        self.turn = TurnClient(options.credentials, reliable=options.tcp, keepalive=True)
        self.sock: socket.socket | None = None
        self.framer = StreamFramer() if options.tcp else None
        self.outgoing = bytearray()  # TCP bytes the kernel would not take yet
        self.template: PacketTemplate | None = None
        self.step = "allocate"
        self.ready = False
        self.failed = False


class Engine:
    """The clients of one process; see the module docstring."""

    def __init__(self, options: LoadOptions, count: int) -> None:
        self.options = options
        self.sessions = [Session(options) for _ in range(count)]
        self.selector = selectors.DefaultSelector()
        self.udp_inodes: set[int] = set()  # our UDP sockets, to find their drop counters in /proc/net/udp
        self.tls_context = client_tls_context(options.ca_file) if options.tls else None
        raise_open_files_limit(count + 80)  # one socket per client, and some to spare

    # -- set-up ---------------------------------------------------------------------------------------------

    def setup(self) -> SetupResult:
        result = SetupResult()
        options = self.options
        waiting = list(reversed(self.sessions))
        active: set[Session] = set()
        started = time.monotonic()
        deadline = started + options.setup_timeout
        last_allocation = started
        while (waiting or active) and time.monotonic() < deadline:
            while waiting and len(active) < SETUP_WINDOW:
                session = waiting.pop()
                try:
                    self._open(session)
                except OSError as e:
                    result.errors[f"socket: {e.strerror or e}"] += 1
                    session.failed = True
                    continue
                if options.raw_echo:
                    self._raw_template(session)
                    continue
                session.turn.request_allocate(time.monotonic())
                self._flush(session)
                active.add(session)
            timeouts = [t for s in active if (t := s.turn.next_timeout()) is not None]
            wait = max(0.0, min(timeouts) - time.monotonic()) if timeouts else 0.05
            for key, _ in self.selector.select(min(wait, 0.05)):
                session = key.data
                if session not in active:
                    continue
                for event in self._read_events(session, result.errors):
                    if isinstance(event, Success) and event.method == Method.ALLOCATE:
                        result.allocations += 1
                        last_allocation = time.monotonic()
                    self._advance(session, event, result)
                if session.ready or session.failed:
                    active.discard(session)
            now = time.monotonic()
            for session in [s for s in active if (t := s.turn.next_timeout()) is not None and t <= now]:
                for event in session.turn.handle_timeout(now):
                    self._advance(session, event, result)
                self._flush(session)
                if session.failed:
                    active.discard(session)
        for session in active:
            session.failed = True
            result.errors["timeout"] += 1
        result.allocation_seconds = last_allocation - started if result.allocations else 0.0
        result.ready = sum(1 for s in self.sessions if s.ready)
        return result

    def _raw_template(self, session: Session) -> None:
        options = self.options
        peer = options.peer or options.server
        if options.channels:
            wire = stun.encode_channel_data(0x4000, bytes(options.size), pad=options.tcp)
            session.template = PacketTemplate(bytearray(wire), 4, options.size)
        else:
            session.template = session.turn.packet_template(peer, options.size, channel=False)
        session.ready = True

    def _open(self, session: Session) -> None:
        host, port = self.options.server
        if self.options.tcp:
            sock = socket.socket(family_of(host), socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raise_buffers(sock)
            sock.settimeout(5.0)
            sock.connect((host, port))
            if self.tls_context is not None:
                sock = self.tls_context.wrap_socket(sock, server_hostname=self.options.server_name or host)
        else:
            sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
            raise_buffers(sock)
            sock.connect((host, port))
            self.udp_inodes.add(os.fstat(sock.fileno()).st_ino)
        sock.setblocking(False)
        session.sock = sock
        self.selector.register(sock, selectors.EVENT_READ, session)

    def _advance(self, session: Session, event: object, result: SetupResult) -> None:
        if isinstance(event, Failure):
            result.errors[error_key(event)] += 1
            if not session.ready:
                session.failed = True
            return
        if not isinstance(event, Success) or session.ready:
            return
        options = self.options
        now = time.monotonic()
        if session.step == "allocate":
            if not options.traffic or options.peer is None:
                session.ready = True
                return
            if options.channels:
                session.step = "bind"
                session.turn.request_channel_bind(now, options.peer)  # installs the permission too
            else:
                session.step = "permit"
                session.turn.request_create_permission(now, [options.peer])
            self._flush(session)
            return
        assert options.peer is not None
        session.template = session.turn.packet_template(options.peer, options.size, channel=options.channels)
        session.ready = True

    # -- traffic ----------------------------------------------------------------------------------------------

    def run(
        self,
        rate: float,
        messages: int | None,
        duration: float | None,
        *,
        step: int = 0,
        start_at: float | None = None,
        linger: float = 1.0,
        quiet: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> RunResult:
        """Send `messages` per client (or for `duration` seconds) at `rate` pps in all, then wait up to `linger`
        seconds for the last echoes, or (`quiet`) until none came for that long: a lost step of the max-pps search
        then costs no more waiting than its queues take to drain. `start_at` (time.monotonic) lines processes up."""
        result = RunResult()
        ready = [s for s in self.sessions if s.ready and s.template is not None]
        if not ready:
            return result
        for session in ready:
            template = session.template
            if template.payload_size >= _STAMP.size + _STEP.size:
                _STEP.pack_into(template.buffer, template.payload_offset + _STAMP.size, step)
        total = messages * len(ready) if messages is not None else None
        self._settle(result, step)
        drops_before = self.socket_drops()
        if start_at is not None:
            while (delay := start_at - time.monotonic()) > 0:
                time.sleep(min(delay, 0.05))
        clients = len(ready)
        tcp = self.options.tcp
        sends = [(s, s.sock.send, s.template.buffer, s.template.payload_offset) for s in ready]
        pack = _STAMP.pack_into
        select = self.selector.select
        perf = time.perf_counter
        started = perf()
        end = started + duration if duration is not None else None
        next_progress = started + 1.0
        next_upkeep = started + 1.0
        sent = 0
        index = 0
        while True:
            now = perf()
            if (total is not None and sent >= total) or (end is not None and now >= end):
                break
            due = int((now - started) * rate) if rate > 0 else sent + BURST
            if total is not None:
                due = min(due, total)
            burst = 0
            while sent < due and burst < BURST:
                session, send, buffer, offset = sends[index]
                index = index + 1 if index + 1 < clients else 0
                pack(buffer, offset, now_ns())
                if tcp:
                    self._send_stream(session, buffer)
                else:
                    try:
                        send(buffer)
                    except (BlockingIOError, ConnectionRefusedError):
                        result.errors["send"] += 1  # full socket buffer / ICMP: counted as sent and lost
                sent += 1
                burst += 1
            if sent < due:
                timeout = 0.0
            elif rate > 0:
                timeout = max(0.0, started + (sent + 1) / rate - perf())
            else:
                timeout = 0.0
            self._receive(select(timeout), result, step)
            if now >= next_upkeep:
                next_upkeep = now + 1.0
                self._upkeep(result.errors)
            if progress is not None and now >= next_progress:
                next_progress = now + 1.0
                progress(sent, result.received)
        result.sent = sent
        result.send_seconds = perf() - started
        linger_end = perf() + linger
        last_arrival = perf()
        while result.received < sent and (now := perf()) < linger_end:
            if quiet is not None and now - last_arrival >= quiet:
                break
            before = result.received + result.late
            self._receive(select(min(0.05, linger_end - now)), result, step)
            if result.received + result.late != before:
                last_arrival = perf()
        result.seconds = perf() - started
        drops_after = self.socket_drops()
        if drops_before is not None and drops_after is not None:
            result.client_drops = drops_after - drops_before
        if progress is not None:
            progress(sent, result.received)
        return result

    def socket_drops(self) -> int | None:
        """Datagrams dropped so far on this engine's UDP sockets (None over TCP or without /proc)."""
        return None if self.options.tcp or not self.udp_inodes else udp_socket_drops(self.udp_inodes)

    def _settle(self, result: RunResult, step: int) -> None:
        """Read away an earlier overloaded step's backlog (bounded: 1 s) so it costs this step no CPU."""
        end = time.monotonic() + 1.0
        while time.monotonic() < end and (ready := self.selector.select(0.05)):
            self._receive(ready, result, step)
        result.late = 0
        result.received = 0
        del result.rtt_ns[:]

    def _send_stream(self, session: Session, buffer: bytearray) -> None:
        if session.outgoing:
            session.outgoing += buffer
            return
        try:
            written = session.sock.send(buffer)
        except WOULD_BLOCK:
            written = 0
        if written < len(buffer):
            session.outgoing += buffer[written:]
            self.selector.modify(session.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, session)

    def _receive(self, ready: list, result: RunResult, step: int) -> None:
        rtts = result.rtt_ns
        raw_echo = self.options.raw_echo
        for key, mask in ready:
            session = key.data
            sock = session.sock
            if mask & selectors.EVENT_WRITE:
                self._write_backlog(session)
            if not mask & selectors.EVENT_READ:
                continue
            for _ in range(BURST):
                try:
                    data = sock.recv(65536)
                except WOULD_BLOCK:
                    break
                except ConnectionRefusedError:
                    result.errors["ICMP unreachable"] += 1
                    break
                if session.framer is not None:
                    if not data:
                        result.errors["connection closed"] += 1
                        self.selector.unregister(sock)
                        session.ready = False
                        break
                    try:
                        frames = session.framer.feed(data)
                    except stun.StunDecodeError:
                        result.errors["unframeable stream"] += 1
                        break
                else:
                    frames = (data,)
                arrived = now_ns()
                for frame in frames:
                    offset = session.template.payload_offset if raw_echo else data_payload_offset(frame)
                    if offset < 0:
                        for event in session.turn.receive(frame, time.monotonic()):
                            if isinstance(event, Failure):
                                result.errors[error_key(event)] += 1
                        continue
                    if len(frame) < offset + _STAMP.size:
                        continue  # not one of ours
                    if len(frame) >= offset + _STAMP.size + _STEP.size and \
                            _STEP.unpack_from(frame, offset + _STAMP.size)[0] != step:
                        result.late += 1
                        continue
                    rtts.append(arrived - _STAMP.unpack_from(frame, offset)[0])
                    result.received += 1
                if session.framer is not None and not (self.tls_context and sock.pending()):
                    break  # one read per readiness event: the stream may hold no more (but TLS may have)

    def _write_backlog(self, session: Session) -> None:
        try:
            written = session.sock.send(session.outgoing)
        except WOULD_BLOCK:
            return
        del session.outgoing[:written]
        if not session.outgoing:
            self.selector.modify(session.sock, selectors.EVENT_READ, session)

    def _upkeep(self, errors: Counter[str]) -> None:
        """Retransmissions and keepalive refreshes (allocation, permission, channel) of long runs."""
        now = time.monotonic()
        for session in self.sessions:
            if session.sock is None or session.failed:
                continue
            due = session.turn.next_timeout()
            if due is not None and due <= now:
                for event in session.turn.handle_timeout(now):
                    if isinstance(event, Failure):
                        errors[error_key(event)] += 1
                self._flush(session)

    def hold(self, seconds: float) -> Counter[str]:
        """Keep the allocations for `seconds` without traffic (answering keepalives)."""
        errors: Counter[str] = Counter()
        end = time.monotonic() + seconds
        result = RunResult()
        while (now := time.monotonic()) < end:
            self._receive(self.selector.select(min(0.5, end - now)), result, -1)
            self._upkeep(errors)
        errors.update(result.errors)
        return errors

    # -- teardown ---------------------------------------------------------------------------------------------

    def close(self, timeout: float = 2.0) -> None:
        """Delete the allocations (Refresh, LIFETIME 0) so a server's quotas are free again, then close."""
        pending: set[Session] = set()
        for session in self.sessions:
            if session.sock is not None and session.turn.allocation is not None:
                session.turn.request_refresh(time.monotonic(), 0)
                self._flush(session)
                pending.add(session)
        end = time.monotonic() + timeout
        while pending and (now := time.monotonic()) < end:
            for key, _ in self.selector.select(min(0.05, end - now)):
                session = key.data
                if session in pending:
                    self._read_events(session, Counter())
                    if session.turn.allocation is None or session.failed:
                        pending.discard(session)
        for session in self.sessions:
            if session.sock is not None:
                session.sock.close()
                session.sock = None
        self.selector.close()

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _flush(self, session: Session) -> None:
        sock = session.sock
        for data in session.turn.data_to_send():
            try:
                if self.options.tcp:
                    self._send_stream(session, data)  # what the socket will not take now waits in `outgoing`
                else:
                    sock.send(data)
            except (*WOULD_BLOCK, ConnectionRefusedError):
                pass  # a lost request is retransmitted (UDP) or times out like any other
            except OSError:
                session.failed = True

    def _read_events(self, session: Session, errors: Counter[str]) -> list:
        """Read what one socket has and feed it to its client; the events, data packets dropped."""
        events: list = []
        sock = session.sock
        if session.outgoing:
            self._write_backlog(session)
        for _ in range(64):
            try:
                data = sock.recv(65536)
            except WOULD_BLOCK:
                break
            except ConnectionRefusedError:
                errors["ICMP unreachable"] += 1
                break
            except OSError as e:
                errors[f"socket: {e.strerror or e}"] += 1
                session.failed = True
                break
            if session.framer is not None:
                if not data:
                    errors["connection closed"] += 1
                    session.failed = True
                    self.selector.unregister(sock)
                    break
                try:
                    frames = session.framer.feed(data)
                except stun.StunDecodeError:
                    errors["unframeable stream"] += 1
                    session.failed = True
                    break
            else:
                frames = [data]
            now = time.monotonic()
            for frame in frames:
                events.extend(e for e in session.turn.receive(frame, now) if not isinstance(e, DataReceived))
            self._flush(session)
            if session.framer is not None and not (self.tls_context and sock.pending()):
                break
        return events
