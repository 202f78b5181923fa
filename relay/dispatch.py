"""`TurnServer`, the TURN server's pure core: what the shell hands over, dispatched to the module doing each job.

The shell (relay.shell) gives it whole STUN messages and ChannelData from clients (identified by their 5-tuple),
lost TCP connections and an expiry tick about once a second; it returns the bytes to answer with and asks the shell
for relay sockets through `open_relay`. It keeps the table of allocations by 5-tuple and the counters (plain ints
in `stats`, read by the `relay stats` line and exported by the metrics layer). Nothing here does I/O of its own,
reads the clock outside `handle_stun` and `expire`, or imports Twisted: log lines go to the injected `emit`.

The per-packet paths (ChannelData, Send indications, peer datagrams) go straight to the `Allocation`: one dict
look-up here, then its own. Everything else is a request; from a client without an allocation it first passes the
flood gate (`admit`: its source's token bucket and the global budget, relay.source_limit), so a flood is dropped
before any parsing (the UDP listener asks `admit` itself, before any STUN work, and says so with `admitted`):
- Binding: answered at once, no authentication (relay.handlers.binding);
- TURN requests: a retransmission gets the cached answer (relay.transactions), otherwise the long-term
  credential check (relay.authenticator), then the handler (relay.handlers); the answer is signed with the
  user's key, cached and returned.
- TCP control connections without an allocation are admitted, capped and timed out by relay.control_connections.
- Restricted mode (`turn_clients`, relay.restricted): a TURN request from a source outside the list gets no answer
  at all and is counted (`turn_restricted`); Binding is answered for anyone. ChannelData and Send indications
  need an allocation, which only an allowed source can make, so the per-packet path checks nothing more; those
  from an outsider without one are counted as restricted too.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING

from relay import handlers
from relay.allocation import Address, Allocation, ClientSender, FiveTuple, RelayOpener, TurnError, TurnSettings
from relay.authenticator import Authenticator
from relay.control_connections import Admission, ControlConnections
from relay.events import EventLog, EventSink, discard
from relay.quota import LocalQuota
from relay.relay_ports import RelayPorts
from relay.restricted import TurnClients
from relay.source_limit import BUDGET_SECONDS, SourceRateLimiter
from relay.stun import (
    MAGIC_COOKIE,
    Attr,
    Message,
    MessageClass,
    Method,
    StunDecodeError,
    encode,
    error_response,
    parse,
    parse_send_indication,
)
from relay.transactions import TransactionCache

if TYPE_CHECKING:
    from relay.auth import CredentialStore, NonceIssuer
    from relay.policy import PeerPolicy
    from relay.ports import PortPool
    from relay.quota import Quota
    from relay.restauth import SharedSecrets

__all__ = ["TurnServer"]

SEND_INDICATION_TYPE = b"\x00\x16"  # a Send indication's first two bytes: Send (0x006) | indication (0x010)


class TurnServer:
    """The TURN server's state and logic: every allocation, keyed by its 5-tuple."""

    def __init__(
        self,
        settings: TurnSettings,
        *,
        credentials: CredentialStore,
        nonces: NonceIssuer,
        policy: PeerPolicy,
        ports: PortPool,
        open_relay: RelayOpener,
        clock: Callable[[], float],
        quota: Quota | None = None,
        emit: EventSink = discard,
        secrets: SharedSecrets | None = None,
        turn_clients: TurnClients | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.ports = ports
        self.clock = clock
        # Allocation counts per user and in all; shared by every worker process when there are several.
        self.quota: Quota = quota if quota is not None else LocalQuota()
        self.allocations: dict[FiveTuple, Allocation] = {}
        # The UDP ones again, by listener address then client address (`udp_allocations`).
        self._udp_allocations: dict[Address, dict[Address, Allocation]] = {}
        self.stats: collections.Counter[str] = collections.Counter()
        self.events = EventLog(emit, clock)
        self.relay_ports = RelayPorts(ports, open_relay)
        self.authenticator = Authenticator(settings.realm, credentials, nonces, self.events, self.stats, secrets)
        self.turn_clients = turn_clients if turn_clients is not None else TurnClients()
        self.transactions = TransactionCache(settings.transactions_per_user, settings.transaction_cache_bytes)
        self.connections = ControlConnections(settings.tcp_unallocated_per_ip, settings.tcp_unallocated_max,
                                              settings.tcp_unallocated_lifetime)
        self.sources = SourceRateLimiter(settings.unauthenticated_rate, settings.unauthenticated_burst,
                                         budget=settings.unauthenticated_budget, budget_seconds=BUDGET_SECONDS)

    @property
    def credentials(self) -> CredentialStore:
        return self.authenticator.credentials

    @property
    def nonces(self) -> NonceIssuer:
        return self.authenticator.nonces

    @property
    def reservations(self) -> dict[bytes, tuple[int, float]]:
        return self.relay_ports.reservations

    def reconfigure(
        self,
        *,
        settings: TurnSettings | None = None,
        credentials: CredentialStore | None = None,
        policy: PeerPolicy | None = None,
        secrets: SharedSecrets | None = None,
        turn_clients: TurnClients | None = None,
    ) -> None:
        """SIGHUP: new settings, users or peer policy for new requests; live allocations are kept as they are."""
        if settings is not None:
            self.settings = settings
            self.authenticator.realm = settings.realm
            self.transactions.per_user = settings.transactions_per_user
            self.transactions.max_bytes = settings.transaction_cache_bytes
            connections = self.connections
            connections.per_ip, connections.max_total = settings.tcp_unallocated_per_ip, settings.tcp_unallocated_max
            connections.lifetime = settings.tcp_unallocated_lifetime
            self.sources.rate, self.sources.burst = settings.unauthenticated_rate, settings.unauthenticated_burst
            self.sources.budget = settings.unauthenticated_budget
        if credentials is not None:
            self.authenticator.credentials = credentials
        if policy is not None:
            self.policy = policy
        if secrets is not None:
            self.authenticator.secrets = secrets
        if turn_clients is not None:
            self.turn_clients = turn_clients

    # --- from the shell ---

    def admit(self, source: str, size: int = 0) -> bool:
        """May a request from `source` (a client without an allocation; `size` bytes, which the budget counts) be
        handled? False: drop it unparsed, counted by why (`rate_limited`: over its source's bucket; `budget_shed`:
        the global budget is spent and this source has been spending its bucket)."""
        sources = self.sources
        if not sources.rate:
            return True
        drop = sources.check(source, self.clock(), size)
        if drop is None:
            return True
        self.stats[drop] += 1
        return False

    def handle_stun(self, data: bytes, five_tuple: FiveTuple, send: ClientSender,
                    admitted: bool = False) -> bytes | None:
        """A whole STUN message (never ChannelData) from a client: the response to send back, or None.
        `admitted`: the shell already asked `admit` for this datagram (or its source holds an allocation)."""
        if data[:2] == SEND_INDICATION_TYPE:
            self._send_indication(data, five_tuple)
            return None
        if not admitted and five_tuple not in self.allocations and not self.admit(five_tuple[1][0], len(data)):
            return None
        try:
            request = parse(data)
        except StunDecodeError:
            self.stats["malformed"] += 1
            return None
        if request.msg_class == MessageClass.INDICATION:
            self.stats["indications"] += 1  # Binding keepalives; other indications from a client are ignored
            return None
        if request.msg_class != MessageClass.REQUEST:
            self.stats["unexpected_responses"] += 1
            return None
        self.stats["requests"] += 1
        if request.method == Method.BINDING:
            self.stats["binding_requests"] += 1
            try:
                return self._finish(request, handlers.binding(request, five_tuple))
            except TurnError as refusal:
                return self._finish(request, self._error(request, refusal))
        if not self.turn_clients.allows(five_tuple[1][0]):
            self.stats["turn_restricted"] += 1  # restricted mode: no answer at all, as the old firewall did
            return None
        handler = handlers.TURN_HANDLERS.get(request.method)
        if handler is None or request.cookie != MAGIC_COOKIE:
            return self._finish(request, self._error(request, TurnError(400, "unknown method or no magic cookie")))
        cached = self.transactions.get(five_tuple, request.transaction_id)
        if cached is not None:
            self.stats["retransmissions"] += 1
            return cached
        return self._turn_request(request, five_tuple, send, handler)

    def udp_allocations(self, local: Address) -> dict[Address, Allocation]:
        """The UDP allocations made through the listener at `local`, by client address, in step with `allocations`.

        The UDP listener looks each datagram's source up here (ChannelData then goes straight to the allocation)
        instead of building a 5-tuple per datagram and hashing it: the shell's per-packet path.
        """
        return self._udp_allocations.setdefault(local, {})

    def add_allocation(self, allocation: Allocation) -> None:
        """A new allocation joins the table (and the UDP listener's look-up)."""
        transport, client, local = allocation.five_tuple
        self.allocations[allocation.five_tuple] = allocation
        if transport == "udp":
            self.udp_allocations(local)[client] = allocation

    def handle_channel_data(self, data: bytes, five_tuple: FiveTuple) -> None:
        """ChannelData from a client (hot path)."""
        allocation = self.allocations.get(five_tuple)
        if allocation is None or len(data) < 4:
            self.stats["channel_data_dropped"] += 1
            if allocation is None and not self.turn_clients.allows(five_tuple[1][0]):
                self.stats["turn_restricted"] += 1
            return
        allocation.on_client_channel_data(data)

    def tcp_connection_made(self, five_tuple: FiveTuple, close: Callable[[], None],
                            fd_limit: int | None = None) -> bool:
        """A client opened a TCP control connection: False when a limit refuses it (the shell closes it at once).
        `close` ends the connection when it outlives `tcp_unallocated_lifetime` without an allocation."""
        admission = self.connections.opened(five_tuple, close, self.clock(), fd_limit)
        if admission is Admission.ADMITTED:
            return True
        self.stats["tcp_refused_per_source" if admission is Admission.PER_SOURCE_LIMIT else "tcp_refused_global"] += 1
        return False

    def connection_lost(self, five_tuple: FiveTuple) -> None:
        """The client's TCP control connection closed: its allocation goes with it (RFC 5766 2.1)."""
        self.connections.closed(five_tuple)
        allocation = self.allocations.get(five_tuple)
        if allocation is not None:
            self.delete(allocation, "connection-lost")

    def expire(self) -> None:
        """Drop what has run out: allocations, permissions, channels, reservations, cached responses."""
        now = self.clock()
        cooldown = self.settings.channel_cooldown
        for allocation in list(self.allocations.values()):
            if allocation.expires_at <= now:
                self.delete(allocation, "expired")
            else:
                allocation.sweep(now, cooldown)
        self.relay_ports.expire(now)
        self.transactions.expire(now)
        expired = self.connections.expire(now)
        if expired:
            self.stats["tcp_unallocated_expired"] += expired
        self.events.flush(now)

    def close(self) -> None:
        """Shutdown: delete every allocation and reservation."""
        for allocation in list(self.allocations.values()):
            self.delete(allocation, "shutdown")
        self.relay_ports.close()
        self.transactions.clear()

    def delete(self, allocation: Allocation, reason: str) -> None:
        """Delete an allocation: its socket closed, its port and quota given back, one log line."""
        del self.allocations[allocation.five_tuple]
        transport, client, local = allocation.five_tuple
        if transport == "udp":
            self._udp_allocations[local].pop(client, None)
        elif reason != "connection-lost":
            # The control connection stays open without an allocation: bounded again as any such connection.
            self.connections.deallocated(allocation.five_tuple, self.clock())
        allocation.close()
        self.relay_ports.release(allocation.port)
        self.quota.release(allocation.username)
        self.stats["allocations_deleted"] += 1
        if allocation.peer_packets_dropped:
            self.stats["peer_packets_dropped"] += allocation.peer_packets_dropped
        if allocation.client_packets_dropped:
            self.stats["client_packets_dropped"] += allocation.client_packets_dropped
        # Its relayed counts join the totals (relay.stats reads live allocations' own counts directly).
        self.stats["packets_from_client"] += allocation.packets_from_client
        self.stats["bytes_from_client"] += allocation.bytes_from_client
        self.stats["packets_to_client"] += allocation.packets_to_client
        self.stats["bytes_to_client"] += allocation.bytes_to_client
        self.events.allocation_deleted(allocation, reason)

    # --- requests ---

    def _send_indication(self, data: bytes, five_tuple: FiveTuple) -> None:
        allocation = self.allocations.get(five_tuple)
        if allocation is None:
            self.stats["send_dropped"] += 1
            if not self.turn_clients.allows(five_tuple[1][0]):
                self.stats["turn_restricted"] += 1
            return
        self.send_indication(data, allocation)

    def send_indication(self, data: bytes, allocation: Allocation) -> None:
        """A Send indication from the client of `allocation` (the per-packet path of RFC 5766 10)."""
        parsed = parse_send_indication(data)
        if parsed is None:
            self.stats["malformed"] += 1
            return
        allocation.on_client_send(parsed[1], parsed[0])

    def _turn_request(self, request: Message, five_tuple: FiveTuple, send: ClientSender, handler) -> bytes:
        now = self.clock()
        try:
            username, key = self.authenticator.authenticate(request, five_tuple, now)
        except TurnError as refusal:
            return self._finish(request, self._error(request, refusal))
        # Authenticated: every answer from here on carries MESSAGE-INTEGRITY and is replayed to retransmissions.
        self.sources.trust(five_tuple[1][0], now)  # its other 5-tuples' first requests skip the flood bucket
        unknown = handlers.unknown_required(request)
        try:
            if unknown:
                raise TurnError(420, unknown=unknown)
            response = handler(self, request, five_tuple, send, username, now)
        except TurnError as refusal:
            response = self._error(request, refusal)
        raw = self._finish(request, response, key)
        self.transactions.put(five_tuple, request.transaction_id, raw, now + self.settings.transaction_lifetime,
                              username)
        return raw

    def _error(self, request: Message, refusal: TurnError) -> Message:
        self.stats[f"error_{refusal.code}"] += 1
        if refusal.code == 508:
            self.stats[f"error_508 {refusal.reason or ''}"] += 1  # by cause (relay.stats names them)
        response = error_response(request, refusal.code, refusal.reason)
        if refusal.code == 420:
            # error_response lists the codec's unknown attributes; ours may differ (DONT-FRAGMENT, CHANGE-REQUEST).
            response.attributes = [(kind, value) for kind, value in response.attributes
                                   if kind != Attr.UNKNOWN_ATTRIBUTES]
            unknown = refusal.unknown if refusal.unknown is not None else tuple(request.unknown_required)
            response.add(Attr.UNKNOWN_ATTRIBUTES, unknown)
        for kind, value in refusal.attributes:
            response.add(kind, value)
        return response

    def _finish(self, request: Message, response: Message, key: bytes | None = None) -> bytes:
        """SOFTWARE on every response; MESSAGE-INTEGRITY once authenticated; FINGERPRINT if the request had one."""
        response.add(Attr.SOFTWARE, self.settings.software)
        return encode(response, integrity_key=key, fingerprint=request.get(Attr.FINGERPRINT) is not None)
