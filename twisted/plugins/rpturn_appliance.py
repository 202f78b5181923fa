"""twistd drop-in for the whole appliance: the relay and the reverse proxy in one process tree.

Kept light: the two services' modules are imported only when `twistd rpturn` actually runs.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class ApplianceOptions(usage.Options):
    optParameters = [["config", "c", "conf/rpturn.toml", "the appliance's TOML config file"]]


@implementer(IServiceMaker, IPlugin)
class ApplianceMaker:
    tapname = "rpturn"
    description = "STUN/TURN relay and HTTPS reverse proxy from one config file"
    options = ApplianceOptions

    def makeService(self, options):
        from twisted.application.service import MultiService

        from relay import tap as relay_tap
        from revproxy import tap as revproxy_tap

        top = MultiService()
        for tap in (relay_tap, revproxy_tap):
            sub = tap.Options()
            sub.parseOptions(["--config", options["config"]])
            tap.makeService(sub).setServiceParent(top)
        return top


rpturnAppliance = ApplianceMaker()
