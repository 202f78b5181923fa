"""twistd drop-in for the HTTPS reverse proxy; imports nothing heavy until the plugin is chosen."""

from twisted.application.service import ServiceMaker

rpturnRevproxy = ServiceMaker(
    "rpturn HTTPS reverse proxy",
    "revproxy.tap",
    "HTTPS reverse proxy to the Conferencing Nodes",
    "revproxy",
)
