"""twistd drop-in for the STUN/TURN relay; imports nothing heavy until the plugin is chosen."""

from twisted.application.service import ServiceMaker

rpturnRelay = ServiceMaker(
    "rpturn STUN/TURN relay",
    "relay.tap",
    "STUN (RFC 5389) and TURN (RFC 5766) relay over UDP and TCP",
    "relay",
)
