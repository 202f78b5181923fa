"""The STUN/TURN request handlers: Binding, and Allocate, Refresh, CreatePermission, ChannelBind (RFC 5766 6-11).

Each TURN handler runs after authentication, takes the request and the `TurnServer` it acts on, and returns the
success response or raises `TurnError`; `relay.dispatch` signs, caches and sends what comes back.

Decisions the RFC leaves open, taken here:
- DONT-FRAGMENT in an Allocate is honoured by asking the relay socket to set DF on everything it sends
  (`RelayTransport.set_dont_fragment`); where the OS cannot, the Allocate gets 420 listing DONT-FRAGMENT, as RFC
  5766 6.2 permits. In a Send indication it is ignored: DF is per socket, not per packet.
- Relayed addresses are IPv4 (the family of the relay socket): REQUESTED-ADDRESS-FAMILY IPv6 gets 440 (RFC
  6156), peers of the other family get 443.
- A CHANGE-REQUEST with no flags (sent by RFC 3489 clients in their first test) is ignored rather than 420'd.
- One allocation holds permissions for at most `MAX_PERMISSIONS` peer IPs (508 beyond).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.allocation import Address, Allocation, ClientSender, FiveTuple, TurnError
from relay.stats import quota_cause
from relay.stun import MAGIC_COOKIE, Attr, Message, Method, success_response

if TYPE_CHECKING:
    from relay.dispatch import TurnServer

__all__ = ["MAX_PERMISSIONS", "TURN_HANDLERS", "binding"]

# Peer IPs one allocation may hold permissions for at once (RFC 5766 sets no limit; a media session needs a few).
MAX_PERMISSIONS = 1000

TRANSPORT_UDP = 17  # REQUESTED-TRANSPORT protocol number (RFC 5766 14.7)
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x7FFF
REQUESTED_ADDRESS_FAMILY = 0x0017  # RFC 6156; the codec keeps it as raw bytes
CHANGE_REQUEST = 0x0003  # RFC 3489/5780


def binding(request: Message, five_tuple: FiveTuple) -> Message:
    """Binding (RFC 5389): the client's address as we see it. No authentication."""
    unknown = [
        kind for kind in request.unknown_required
        if not (kind == CHANGE_REQUEST and request.get(CHANGE_REQUEST) == b"\0\0\0\0")
    ]  # fmt: skip
    if unknown:
        raise TurnError(420, unknown=tuple(unknown))
    response = success_response(request)
    if request.cookie == MAGIC_COOKIE:
        response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple[1])
    else:  # RFC 3489 client: it cannot read XOR-MAPPED-ADDRESS (RFC 5389 12.2)
        response.add(Attr.MAPPED_ADDRESS, five_tuple[1])
    return response


def unknown_required(request: Message) -> tuple[int, ...]:
    """Comprehension-required attributes of an authenticated request that we do not handle (-> 420)."""
    unknown = list(request.unknown_required)
    if request.method == Method.ALLOCATE and REQUESTED_ADDRESS_FAMILY in unknown:
        unknown.remove(REQUESTED_ADDRESS_FAMILY)
    return tuple(unknown)


def allocate(server: TurnServer, request: Message, five_tuple: FiveTuple, send: ClientSender, username: str,
             now: float) -> Message:
    settings = server.settings
    if five_tuple in server.allocations:
        raise TurnError(437)
    transport = request.get(Attr.REQUESTED_TRANSPORT)
    if transport is None:
        raise TurnError(400, "REQUESTED-TRANSPORT missing")
    if transport != TRANSPORT_UDP:
        raise TurnError(442)
    family = request.get(REQUESTED_ADDRESS_FAMILY)
    if family is not None and family[:1] != b"\x01":
        raise TurnError(440, "Address Family not Supported")
    even_port = request.get(Attr.EVEN_PORT)
    token = request.get(Attr.RESERVATION_TOKEN)
    if token is not None and even_port is not None:
        raise TurnError(400, "EVEN-PORT and RESERVATION-TOKEN together")
    if not server.quota.try_acquire(username, settings.user_quota, settings.total_quota):
        server.stats[f"error_486 {quota_cause(settings, server.quota, username)}"] += 1
        raise TurnError(486)
    lifetime = _lifetime(server, request)
    allocation = Allocation(five_tuple, username, send, now, lifetime)
    relay_ports = server.relay_ports
    try:
        reservation_token = relay_ports.bind(allocation, even_port, token, now, settings.reservation_lifetime)
    except TurnError:
        server.quota.release(username)
        raise
    if request.get(Attr.DONT_FRAGMENT) is not None:
        set_dont_fragment = getattr(allocation.relay, "set_dont_fragment", None)
        if set_dont_fragment is None or not set_dont_fragment():
            allocation.close()
            relay_ports.release(allocation.port)
            server.quota.release(username)
            relay_ports.drop_reservation(reservation_token)
            raise TurnError(420, unknown=(Attr.DONT_FRAGMENT,))
    host = settings.external_ip or settings.relay_ip
    if host in ("0.0.0.0", "::"):  # no advertised address configured: the one the client reached
        host = five_tuple[2][0]
    allocation.relayed_address = (host, allocation.port)
    server.add_allocation(allocation)
    if five_tuple[0] != "udp":
        server.connections.allocated(five_tuple)  # the quotas bound it from now on
    server.stats["allocations_created"] += 1
    server.events.allocation_created(allocation)
    response = success_response(request)
    response.add(Attr.XOR_RELAYED_ADDRESS, allocation.relayed_address)
    response.add(Attr.LIFETIME, lifetime)
    if reservation_token is not None:
        response.add(Attr.RESERVATION_TOKEN, reservation_token)
    response.add(Attr.XOR_MAPPED_ADDRESS, five_tuple[1])
    return response


def refresh(server: TurnServer, request: Message, five_tuple: FiveTuple, send: ClientSender, username: str,
            now: float) -> Message:
    allocation = _allocation_of(server, five_tuple, username)
    requested = request.get(Attr.LIFETIME)
    response = success_response(request)
    if requested == 0:
        server.delete(allocation, "refresh-0")
        response.add(Attr.LIFETIME, 0)
        return response
    lifetime = _lifetime(server, request)
    allocation.lifetime = lifetime
    allocation.expires_at = now + lifetime
    server.stats["allocations_refreshed"] += 1
    server.events.allocation_refreshed(allocation)
    response.add(Attr.LIFETIME, lifetime)
    return response


def create_permission(server: TurnServer, request: Message, five_tuple: FiveTuple, send: ClientSender,
                      username: str, now: float) -> Message:
    allocation = _allocation_of(server, five_tuple, username)
    peers = request.get_all(Attr.XOR_PEER_ADDRESS)
    if not peers:
        raise TurnError(400, "XOR-PEER-ADDRESS missing")
    for peer in peers:  # all or nothing (RFC 5766 9.2)
        _check_peer(server, allocation, peer)
    new_hosts = {host for host, _ in peers} - allocation.permissions.keys()
    if len(allocation.permissions) + len(new_hosts) > MAX_PERMISSIONS:
        # One call talks to a handful of peers; thousands are a client filling our memory.
        raise TurnError(508, "too many permissions on this allocation")
    expires_at = now + server.settings.permission_lifetime
    for host, _ in peers:
        allocation.install_permission(host, expires_at)
    return success_response(request)


def channel_bind(server: TurnServer, request: Message, five_tuple: FiveTuple, send: ClientSender, username: str,
                 now: float) -> Message:
    allocation = _allocation_of(server, five_tuple, username)
    number = request.get(Attr.CHANNEL_NUMBER)
    peer = request.get(Attr.XOR_PEER_ADDRESS)
    if number is None or peer is None:
        raise TurnError(400, "CHANNEL-NUMBER and XOR-PEER-ADDRESS needed")
    if not CHANNEL_MIN <= number <= CHANNEL_MAX:
        raise TurnError(400, "channel number outside 0x4000-0x7FFF")
    conflict = allocation.channel_conflict(number, peer, now)
    if conflict is not None:
        raise TurnError(400, conflict)
    _check_peer(server, allocation, peer)
    if peer[0] not in allocation.permissions and len(allocation.permissions) >= MAX_PERMISSIONS:
        raise TurnError(508, "too many permissions on this allocation")
    allocation.bind_channel(number, peer, now + server.settings.channel_lifetime)
    # A channel binding also installs or refreshes the permission for the peer's IP (RFC 5766 11.2).
    allocation.install_permission(peer[0], now + server.settings.permission_lifetime)
    return success_response(request)


TURN_HANDLERS = {
    Method.ALLOCATE: allocate,
    Method.REFRESH: refresh,
    Method.CREATE_PERMISSION: create_permission,
    Method.CHANNEL_BIND: channel_bind,
}


def _allocation_of(server: TurnServer, five_tuple: FiveTuple, username: str) -> Allocation:
    allocation = server.allocations.get(five_tuple)
    if allocation is None:
        raise TurnError(437)
    if allocation.username != username:  # RFC 5766 4: the 5-tuple's allocation belongs to one user
        raise TurnError(441)
    return allocation


def _check_peer(server: TurnServer, allocation: Allocation, peer: Address) -> None:
    host = peer[0]
    reason = server.policy.deny_reason(host)
    if reason is not None:
        server.stats["permissions_denied"] += 1
        server.events.permission_denied(allocation, host, reason)
        raise TurnError(403)
    if (":" in host) != (":" in allocation.relayed_address[0]):
        raise TurnError(443, "Peer Address Family Mismatch")


def _lifetime(server: TurnServer, request: Message) -> int:
    """RFC 5766 6.2/7.2: min(requested, maximum), but never below the default."""
    requested = request.get(Attr.LIFETIME)
    settings = server.settings
    if requested is None:
        return settings.default_lifetime
    return max(settings.default_lifetime, min(requested, settings.max_lifetime))
