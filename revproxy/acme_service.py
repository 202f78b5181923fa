"""The proxy's ACME shell (Twisted): checks for renewal on start and every `check_interval`, runs the blocking
client in a thread, installs the result with the same checks as `rpturn cert install`, and makes every proxy
worker pick the new bundle up.

Only worker 0 talks to the ACME server (one order at a time, one account). Every worker watches
`state_dir/certificate.pem`: when it changes, the worker reloads (`RevproxyService.reload`, the SIGHUP path), so
with `workers = N` all of them serve the new certificate within `WATCH_INTERVAL`. A failed attempt keeps the last
good certificate, is logged in one line with the reason, counted (`acme` failed/renewed in the proxy's snapshot,
`rpturn_proxy_acme_events_total` in /metrics) and retried at the next check.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import threads
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from appliance import certs
from appliance.atomic import write_atomically
from revproxy import acme

log = Logger(namespace="revproxy")
WATCH_INTERVAL = 1.0


class AcmeService(Service):
    def __init__(self, proxy: Any, worker_index: int, reactor: Any) -> None:
        self.proxy = proxy
        self.worker_index = worker_index
        self.reactor = reactor
        self.events: dict[str, int] = {}
        self.busy = False
        self.next_check = 0.0
        self.seen: float | None = None
        self.loop: LoopingCall | None = None

    def settings(self) -> acme.AcmeSettings | None:
        return self.proxy.config.acme

    def startService(self) -> None:
        super().startService()
        self.seen = self._mtime()
        self.loop = LoopingCall(self.tick)
        self.loop.clock = self.reactor
        self.loop.start(WATCH_INTERVAL, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self.loop is not None and self.loop.running:
            self.loop.stop()

    def _mtime(self) -> float | None:
        settings = self.settings()
        try:
            return os.stat(settings.bundle_path).st_mtime if settings else None
        except OSError:
            return None

    def tick(self) -> None:
        settings = self.settings()
        if settings is None:
            return
        mtime = self._mtime()
        if mtime != self.seen:
            self.seen = mtime
            log.info("acme: new certificate in {path}: reloading", path=settings.bundle_path)
            self.proxy.reload()
        now = self.reactor.seconds()
        if self.worker_index != 0 or self.busy or now < self.next_check:
            return
        self.next_check = now + settings.check_interval
        hostname = self.proxy.config.hostname
        try:
            with open(settings.bundle_path, "rb") as f:
                current: bytes | None = f.read()
        except OSError:
            current = None
        reason = acme.renewal_reason(current, hostname, settings.renew_days)
        if reason is None:
            return
        log.info("acme: obtaining a certificate for {hostname} from {directory}: {reason}", hostname=hostname,
                 directory=settings.directory, reason=reason)
        self.busy = True
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), acme.obtain, settings, hostname)
        d.addCallback(self.install, settings, hostname)
        d.addErrback(self.failed, settings)
        d.addBoth(self._done)

    def install(self, bundle: bytes, settings: acme.AcmeSettings, hostname: str) -> None:
        inspection = certs.inspect_bundle(bundle, hostname)
        if not inspection.ok:
            raise ValueError("; ".join(f.message for f in inspection.errors))
        write_atomically(settings.bundle_path, bundle, secret=True)
        self._count("renewed")
        d = inspection.description
        log.info("acme: installed a certificate for {hostname}, valid until {until} (sha256 {fp})",
                 hostname=hostname, until=f"{d.not_after:%Y-%m-%d %H:%M} UTC" if d else "?",
                 fp=d.sha256[:23] if d else "?", event="acme_renewed")
        self.tick()  # this worker reloads now; the others within WATCH_INTERVAL

    def failed(self, failure: Any, settings: acme.AcmeSettings) -> None:
        self._count("failed")
        self.next_check = self.reactor.seconds() + min(settings.check_interval, 3600.0)  # retry sooner
        log.error("acme: could not obtain a certificate from {directory}, the current one stays: {error}",
                  directory=settings.directory, error=f"{failure.type.__name__}: {failure.getErrorMessage()}",
                  event="acme_failed")

    def _done(self, _: object) -> None:
        self.busy = False

    def _count(self, name: str) -> None:
        self.events[name] = self.events.get(name, 0) + 1
