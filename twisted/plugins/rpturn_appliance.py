"""twistd drop-in for the whole appliance: the relay and the reverse proxy in one process tree.

Kept light: nothing is imported until `twistd rpturn` actually runs (`appliance.tap`).
"""

from twisted.application.service import ServiceMaker

rpturnAppliance = ServiceMaker(
    "rpturn appliance",
    "appliance.tap",
    "STUN/TURN relay and HTTPS reverse proxy from one config file",
    "rpturn",
)
