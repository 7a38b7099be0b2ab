"""Metric retention: host metric samples older than the retention are deleted.

Deletion runs in the background in bounded batches (``metrics.retention_batch`` rows per
short transaction), so it never holds a long lock on the table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .metrics import ManagerMetrics
from .periodic import Periodic
from .store import Store

log = logging.getLogger(__name__)


class MetricRetention:
    """Deletes host metric samples older than the retention, in bounded batches."""

    def __init__(
        self,
        *,
        store: Store,
        metrics: ManagerMetrics,
        retention: float,
        interval: float,
        batch: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._retention = retention
        self._batch = batch
        self._clock = clock
        self._loop = Periodic(name="metric-retention", interval=interval, step=self._step)

    async def _step(self) -> None:
        await self.run_once()

    async def run_once(self) -> int:
        """Delete expired samples batch by batch; returns how many were deleted."""
        cutoff = int(self._clock() - self._retention)
        total = 0
        while True:
            deleted = await self._store.delete_metrics_before(cutoff, batch=self._batch)
            total += deleted
            self._metrics.metric_rows_deleted.inc(deleted)
            if deleted < self._batch:
                break
        if total:
            log.info("retention: deleted %d metric samples older than %d", total, cutoff)
        return total

    async def start(self) -> None:
        await self._loop.start()

    def close(self) -> None:
        self._loop.close()

    async def wait_closed(self) -> None:
        await self._loop.wait_closed()
