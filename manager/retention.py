"""Retention: host metric samples, node and agent events older than their retention are
deleted.

Deletion runs in the background in bounded batches (``metrics.retention_batch`` rows per
short transaction), so it never holds a long lock on a table. Node events are kept
``events.retention`` (30 days), agent events (manager/events.py) too; their growth is
bounded besides by the event quotas (manager/quotas.py, manager/events.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from .leases import Lease
from .metrics import ManagerMetrics
from .periodic import Periodic
from .store import Store
from .store.events import EventStore

log = logging.getLogger(__name__)


class MetricRetention:
    """Deletes host metric samples and node events past their retention, in batches."""

    def __init__(
        self,
        *,
        store: Store,
        metrics: ManagerMetrics,
        retention: float,
        interval: float,
        batch: int,
        events_retention: float = 30 * 86400.0,
        event_store: EventStore | None = None,
        lease: Lease | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._lease = lease
        self._metrics = metrics
        self._retention = retention
        self._events_retention = events_retention
        self._event_store = event_store
        self._batch = batch
        self._clock = clock
        self._loop = Periodic(name="retention", interval=interval, step=self._step)

    async def _step(self) -> None:
        if self._lease is not None and not self._lease.held:
            return  # the holder of the duties lease deletes
        await self.run_once()
        await self.run_events_once()

    async def run_once(self) -> int:
        """Delete expired samples batch by batch; returns how many were deleted."""
        cutoff = int(self._clock() - self._retention)
        total = await self._drain(
            lambda: self._store.delete_metrics_before(cutoff, batch=self._batch),
            self._metrics.metric_rows_deleted.inc,
        )
        if total:
            log.info("retention: deleted %d metric samples older than %d", total, cutoff)
        return total

    async def run_events_once(self) -> int:
        """Delete expired node and agent events batch by batch; returns how many were
        deleted."""
        cutoff = self._clock() - self._events_retention
        total = await self._drain(
            lambda: self._store.delete_events_before(cutoff, batch=self._batch),
            self._metrics.node_events_deleted.inc,
        )
        if total:
            log.info("retention: deleted %d node events older than %.0f", total, cutoff)
        if self._event_store is not None:
            event_store = self._event_store
            agent_events = await self._drain(
                lambda: event_store.delete_before(cutoff, batch=self._batch), lambda _n: None
            )
            if agent_events:
                log.info("retention: deleted %d agent events older than %.0f", agent_events, cutoff)
            total += agent_events
        return total

    async def _drain(
        self, delete: Callable[[], Awaitable[int]], count: Callable[[float], None]
    ) -> int:
        total = 0
        while True:
            deleted = await delete()
            total += deleted
            count(deleted)
            if deleted < self._batch:
                return total

    async def start(self) -> None:
        await self._loop.start()

    def close(self) -> None:
        self._loop.close()

    async def wait_closed(self) -> None:
        await self._loop.wait_closed()
