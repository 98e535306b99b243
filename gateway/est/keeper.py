"""Enrollment and renewal over EST inside a running gateway: the identity cert (hub link) and, with
`[edge_ca] method = "est"`, the Edge CA. Decisions come from `gateway.est.schedule`; this module does
the I/O and keeps going while the EST server cannot be reached: what the gateway holds stays in use,
`status()` says how long is left, and warnings go to the log and the counters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from gateway.config import Config
from gateway.config_est import EstAutoRenewConfig, EstConfig
from gateway.errors import EstError, EstRejected, EstReplyInvalid, EstUnavailable
from gateway.est.client import ClientAuth, EstClient
from gateway.est.csr import build_csr
from gateway.est.issued import chain_file_certs, issued_problem, pick_leaf
from gateway.est.pairstore import CertKeyPair, PairStore
from gateway.est.schedule import (
    ExpiryLevel,
    describe_left,
    expiry_level,
    next_renewal,
    renewal_due_at,
)
from gateway.metrics import Counters
from gateway.pki.keys import generate_key

log = logging.getLogger("edgegate.est")

# The loop looks again at least this often (status, warnings, a pending confirmation).
MAX_SLEEP = timedelta(seconds=30)
# First enrollment while the EST server is unreachable: try again after 1, 2, 4 ... 60 s.
FIRST_RETRY = 1.0
MAX_FIRST_RETRY = 60.0
# Reasons with which the EST server refused the identity itself: enroll again with the bootstrap cert.
_IDENTITY_REFUSED = ("client_cert_refused", "auth_refused", "reenroll_needs_identity", "client_certificate_required")
_LOUD = (ExpiryLevel.EXPIRES_WITHIN_7_DAYS, ExpiryLevel.EXPIRES_WITHIN_1_DAY, ExpiryLevel.EXPIRED)

# Called after a new pair is on disk: "worked", "rejected" (roll back) or "unknown" (ask again later).
Adopt = Callable[[], Awaitable[str]]


@dataclass(slots=True)
class Slot:
    """One EST-issued certificate: where it lives, how it is renewed, and what happened lately."""

    name: str  # "identity" | "edge_ca"
    url: str
    common_name: str
    ca: bool
    auto_renew: EstAutoRenewConfig
    store: PairStore
    pair: CertKeyPair | None = None
    level: ExpiryLevel = ExpiryLevel.OK
    last_error: dict[str, str] | None = None
    last_renewed: datetime | None = None
    renewals: int = 0
    failures: int = 0
    tried_since_start: bool = False
    planned: datetime | None = None  # the retry moment the loop is sleeping towards
    adopt: Adopt | None = field(default=None, repr=False)

    def dates(self) -> tuple[datetime, datetime] | None:
        if self.pair is None:
            return None
        return self.pair.leaf.not_valid_before_utc, self.pair.leaf.not_valid_after_utc


class EstKeeper:
    """Owns the EST client and the slots; `ensure_ready()` before the gateway starts, then `run()`."""

    def __init__(self, config: Config, est: EstConfig, clock: Callable[[], datetime], counters: Counters) -> None:
        self.est, self.clock, self.counters = est, clock, counters
        self.client = EstClient(est.trusted_certs, est.username, est.password)
        name = config.hub.gateway_id if config.hub is not None else config.hostname
        self.identity = Slot("identity", est.url, name, False, est.identity_auto_renew,
                             PairStore(est.identity_cert, est.identity_pk))
        self.slots = [self.identity]
        edge = config.edge_ca
        if edge.est is not None and edge.cert is not None and edge.pk is not None:
            self.edge_ca: Slot | None = Slot("edge_ca", edge.est.url, edge.est.common_name, True,
                                             edge.est.auto_renew, PairStore(edge.cert, edge.pk))
            self.slots.append(self.edge_ca)
        else:
            self.edge_ca = None

    # -- start-up ----------------------------------------------------------------------------------

    async def ensure_ready(self) -> None:
        """Enroll what is missing (and an expired Edge CA) before the gateway serves anyone.

        An expired identity does not hold the start back: devices are served from the cache and the
        run loop re-enrolls with the bootstrap cert. Refusals raise EstError (the process exits).
        """
        for slot in self.slots:
            slot.pair = slot.store.load()
            now = self.clock()
            if slot.pair is not None and (not slot.ca or now < slot.pair.leaf.not_valid_after_utc):
                log.info("EST %s: %s, %s", slot.name, slot.pair.leaf.subject.rfc4514_string(),
                         describe_left(slot.pair.leaf.not_valid_after_utc, now))
                continue
            delay = FIRST_RETRY
            while True:
                try:
                    await self.obtain(slot)
                    slot.store.confirm()  # nothing was using the old one
                    break
                except EstUnavailable as exc:
                    self._failed(slot, exc)
                    log.warning("EST %s: first enrollment not possible yet, trying again in %gs: %s",
                                slot.name, delay, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_FIRST_RETRY)

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Renew each slot at its threshold, retry on its grid, warn, confirm; never returns."""
        while True:
            waits: list[timedelta] = [MAX_SLEEP]
            for slot in self.slots:
                waits.append(await self._tend(slot))
            await asyncio.sleep(max(0.05, min(waits).total_seconds()))

    async def _tend(self, slot: Slot) -> timedelta:
        """One look at one slot; how long until it needs another."""
        if slot.store.pending and slot.adopt is not None:
            await self._settle(slot)
        dates = slot.dates()
        if dates is None:
            return await self._attempt(slot)
        now = self.clock()
        self._warn(slot, now)
        threshold, retry = slot.auto_renew.threshold / 100, slot.auto_renew.retry / 100
        due = now >= renewal_due_at(*dates, threshold)
        if (slot.planned is not None and now >= slot.planned) or (due and not slot.tried_since_start):
            return await self._attempt(slot)
        slot.planned = next_renewal(*dates, threshold, retry, now)
        return slot.planned - now

    async def _attempt(self, slot: Slot) -> timedelta:
        slot.tried_since_start, slot.planned = True, None
        try:
            await self.obtain(slot)
        except EstError as exc:
            self._failed(slot, exc)
            level = logging.ERROR if isinstance(exc, EstRejected | EstReplyInvalid) else logging.WARNING
            left = describe_left(slot.pair.leaf.not_valid_after_utc, self.clock()) if slot.pair else "nothing held"
            log.log(level, "EST %s renewal failed (%s), keeping the current certificate (%s): %s",
                    slot.name, exc.reason, left, exc)
            # The next look finds the next retry moment on the slot's grid.
            return MAX_SLEEP if slot.pair is None else timedelta(0)
        await self._settle(slot)
        return timedelta(0)

    async def _settle(self, slot: Slot) -> None:
        """Put a new pair to work; keep, confirm or roll it back by what the user of it says."""
        if slot.adopt is None:
            slot.store.confirm()
            return
        verdict = await slot.adopt()
        if verdict == "worked":
            slot.store.confirm()
        elif verdict == "rejected":
            previous = slot.store.rollback()
            slot.pair = previous
            log.error("EST %s: the new certificate did not work; the previous one is back in use", slot.name)
            if previous is not None:
                await slot.adopt()

    # -- one enrollment ----------------------------------------------------------------------------

    async def obtain(self, slot: Slot) -> CertKeyPair:
        """Ask the EST server for a new certificate for `slot` and install it (previous pair kept)."""
        now = self.clock()
        current = slot.store.load()
        key = current.key if current is not None and not slot.auto_renew.rotate_key else generate_key()
        csr = build_csr(key, slot.common_name, ca=slot.ca)
        auth, reenroll = self._auth(slot, now)
        try:
            certs = await self.client.enroll(slot.url, csr, auth, reenroll=reenroll)
        except EstRejected as exc:
            fallback = auth.kind == "identity" and exc.reason in _IDENTITY_REFUSED
            if not fallback or self.est.bootstrap_identity_cert is None:
                raise
            log.warning("EST %s: the server refused our identity (%s); enrolling again with the bootstrap cert",
                        slot.name, exc.reason)
            auth, reenroll = self._bootstrap_auth(), False
            certs = await self.client.enroll(slot.url, csr, auth, reenroll=False)
        problem = issued_problem(certs, key, slot.common_name, ca=slot.ca, now=self.clock())
        if problem is not None:
            raise EstReplyInvalid(problem.reason, f"the EST server at {slot.url} issued an unusable {slot.name} "
                                                  f"certificate: {problem.message}")
        leaf = pick_leaf(certs, key)
        assert leaf is not None  # issued_problem checked it
        cacerts = await self.client.cacerts(slot.url)
        pair = slot.store.install(chain_file_certs(leaf, certs, cacerts), key)
        slot.pair, slot.last_error, slot.last_renewed = pair, None, self.clock()
        slot.renewals += 1
        slot.level = ExpiryLevel.OK
        self.counters.inc("est_renewals", cert=slot.name, result="ok")
        log.info("EST %s: %s obtained with the %s certificate%s, valid until %s UTC (%s)", slot.name,
                 leaf.subject.rfc4514_string(), auth.kind, " (new key)" if current is None or key is not current.key
                 else " (same key)", f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S}",
                 "simplereenroll" if reenroll else "simpleenroll")
        return pair

    def _auth(self, slot: Slot, now: datetime) -> tuple[ClientAuth, bool]:
        """The identity while it is valid (reenroll for the identity itself), else bootstrap, else Basic."""
        identity = self.identity.store.load()
        if identity is not None and identity.leaf.not_valid_before_utc <= now < identity.leaf.not_valid_after_utc:
            return ClientAuth("identity", self.identity.store.cert, self.identity.store.key), slot is self.identity
        if self.est.bootstrap_identity_cert is not None:
            return self._bootstrap_auth(), False
        if self.est.username is not None:
            return ClientAuth("basic"), False
        raise EstRejected("no_credentials", f"the identity {self.identity.store.cert} is missing or expired and "
                          "no bootstrap certificate is configured: add cert_issuance.est.auth."
                          "bootstrap_identity_cert and bootstrap_identity_pk")

    def _bootstrap_auth(self) -> ClientAuth:
        return ClientAuth("bootstrap", self.est.bootstrap_identity_cert, self.est.bootstrap_identity_pk)

    # -- warnings and status -----------------------------------------------------------------------

    def _failed(self, slot: Slot, exc: EstError) -> None:
        slot.failures += 1
        slot.last_error = {"reason": exc.reason, "message": str(exc), "at": self.clock().isoformat()}
        self.counters.inc("est_renewals", cert=slot.name, result=exc.reason)

    def _warn(self, slot: Slot, now: datetime) -> None:
        dates = slot.dates()
        if dates is None:
            return
        level = expiry_level(*dates, slot.auto_renew.threshold / 100, now)
        if level is not slot.level and level in _LOUD:
            log.warning("EST %s certificate %s: %s (%s)", slot.name, level.value, describe_left(dates[1], now),
                        "renewal keeps being tried" if level is not ExpiryLevel.EXPIRED else
                        "re-enrolling as soon as the EST server answers")
            self.counters.inc("est_expiry_warnings", cert=slot.name, level=level.value)
        slot.level = level

    def status(self) -> dict[str, Any]:
        """For status.json / `edgegate status`: each slot's dates, time left, level and last error."""
        now = self.clock()
        out: dict[str, Any] = {"url": self.est.url}
        for slot in self.slots:
            dates = slot.dates()
            entry: dict[str, Any] = {"state": "not enrolled"} if dates is None else {
                "subject": slot.pair.leaf.subject.rfc4514_string() if slot.pair else "",
                "not_before": dates[0].isoformat(),
                "not_after": dates[1].isoformat(),
                "seconds_left": int((dates[1] - now).total_seconds()),
                "left": describe_left(dates[1], now),
                "level": expiry_level(*dates, slot.auto_renew.threshold / 100, now).value,
                "next_renewal": next_renewal(*dates, slot.auto_renew.threshold / 100,
                                             slot.auto_renew.retry / 100, now).isoformat(),
            }
            entry |= {"renewals": slot.renewals, "failures": slot.failures, "last_error": slot.last_error,
                      "last_renewed": slot.last_renewed.isoformat() if slot.last_renewed else None,
                      "waiting_to_confirm": slot.store.pending}
            out[slot.name] = entry
        return out

