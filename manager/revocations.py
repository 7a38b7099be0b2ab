"""The Manager's revocation list: loaded from the database, kept fresh, changed here.

:class:`ManagerRevocations` owns the :class:`~common.revocation.RevocationList` that both
of the Manager's ``GuardedService`` instances enforce. It loads the list at ``start()``
(before the gRPC server takes calls), then every ``refresh`` seconds reads the list's
version — one single-row SELECT — and reloads the whole list when it moved: a revocation
made through another Manager on the same database is enforced here within ``refresh``.
A revocation made here is applied at once (the list tells the guards, which close the
certificate's open connections before the RPC answers).

A database error in the refresher is logged (at most once a minute) and retried at the
next tick; the last list loaded stays in force meanwhile. Revoked rows of certificates
that expired more than ``prune_after`` ago are deleted every ``prune_interval``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from common.errors import FleetError
from common.ratelimit import LogLimiter
from common.revocation import Revocation, RevocationList

from .periodic import Periodic
from .store.revocations import RevocationStore, SerialRevoked

log = logging.getLogger(__name__)

PRUNE_BATCH = 1000


class ManagerRevocations:
    """The revocation list of one Manager (see module doc)."""

    def __init__(
        self,
        *,
        store: RevocationStore,
        refresh: float,
        prune_interval: float = 3600.0,
        prune_after: float = 7 * 86400.0,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        # Called once a change made here is stored (tells the other Managers at once).
        self._on_change = on_change
        self.list = RevocationList()
        self._clock = clock
        self._prune_interval = prune_interval
        self._prune_after = prune_after
        self._pruned_at = clock()
        # One load at a time, and a local change's reload is the one that counts the
        # connections it closed.
        self._lock = asyncio.Lock()
        self._errors = LogLimiter(interval=60.0)
        self._failing = False
        self._loop = Periodic(name="revocations", interval=refresh, step=self._step)
        self._started = False

    @property
    def version(self) -> int:
        """The version of the list in force (what Heartbeat answers)."""
        return self.list.version

    async def start(self) -> None:
        """Load the list (a database failure here fails the start), then keep it fresh."""
        if self._started:
            raise RuntimeError("revocations already started")
        self._started = True
        async with self._lock:
            await self._load()
        log.info(
            "revocation list loaded: version %d, %d entries", self.list.version, len(self.list)
        )
        await self._loop.start()

    def close(self) -> None:
        self._loop.close()

    async def wait_closed(self) -> None:
        await self._loop.wait_closed()

    async def _load(self) -> bool:
        version, entries = await self.store.load(now=self._clock())
        changed = self.list.replace(version, entries)
        if changed:
            log.info("revocation list now version %d (%d entries)", version, len(entries))
        return changed

    async def refresh(self) -> None:
        """Reload now if the stored version moved (another Manager said it changed it)."""
        if await self.store.version() != self.list.version:
            async with self._lock:
                await self._load()

    async def _step(self) -> None:
        try:
            await self.refresh()
            if self._clock() - self._pruned_at >= self._prune_interval:
                self._pruned_at = self._clock()
                await self._prune()
        except FleetError as exc:  # the database: keep the last list, try again next tick
            held = self._errors.allow("refresh", time.monotonic())
            if held is not None:
                log.warning(
                    "cannot refresh the revocation list (keeping version %d)%s: %s",
                    self.list.version,
                    f" ({held} more failures)" if held else "",
                    exc,
                )
            self._failing = True
            return
        if self._failing:
            self._failing = False
            log.info("revocation list refreshed again: version %d", self.list.version)

    async def _prune(self) -> None:
        cutoff = self._clock() - self._prune_after
        total = 0
        while True:
            deleted = await self.store.delete_expired(cutoff, batch=PRUNE_BATCH)
            total += deleted
            if deleted < PRUNE_BATCH:
                break
        if total:
            log.info(
                "revocations: deleted %d rows of certificates expired before %.0f", total, cutoff
            )

    async def _apply(self, entry: Revocation) -> int:
        """Enforce a change just stored: reload (the list's subscribers close the open
        connections it revokes); if the database cannot be read back right now, add
        ``entry`` to the list in force so it is enforced anyway (keeping the old
        version, so the refresher reloads once it can). Returns connections closed."""
        before = self.list.closed
        try:
            await self._load()
        except FleetError as exc:
            log.warning("revocation stored but the list cannot be reloaded (%s): applied here", exc)
            self.list.replace(self.list.version, [*self.list.entries(), entry])
        return self.list.closed - before

    async def revoke_serial(
        self, serial: str, *, reason: str, revoked_by: str
    ) -> tuple[SerialRevoked, int]:
        """Revoke ``serial`` (normalised hex) and enforce it here now; the stored result
        and how many open connections this Manager closed."""
        now = self._clock()
        async with self._lock:
            result = await self.store.revoke_serial(
                serial, reason=reason, revoked_by=revoked_by, now=now
            )
            revoked_at = result.certificate.revoked_at
            entry = Revocation(serial=serial, revoked_at=revoked_at, reason=reason)
            closed = await self._apply(entry)
        self._on_change()
        return result, closed

    async def revoke_identity(
        self, identity: str, *, reason: str, revoked_by: str
    ) -> tuple[float, int]:
        """Revoke every certificate of ``identity`` issued until now and enforce it here
        now; (the moment, connections this Manager closed)."""
        now = self._clock()
        async with self._lock:
            await self.store.revoke_identity(
                identity, not_before_max=now, reason=reason, revoked_by=revoked_by, now=now
            )
            entry = Revocation(identity=identity, not_before_max=now, revoked_at=now, reason=reason)
            closed = await self._apply(entry)
        self._on_change()
        return now, closed
