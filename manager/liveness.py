"""Liveness: online while heartbeats arrive within the grace period, then offline.

A node's grace is ``liveness.grace`` when set, else ``grace_factor`` × the heartbeat
interval its Daemon reported at RegisterNode (default 3 × 60 s). Each heartbeat flush
pushes the node's ``offline_after`` deadline forward; this sweeper marks nodes whose
deadline passed offline, with an event saying how long they were silent.

Restart guard: right after the Manager starts, no node is declared offline until a full
grace period has passed since start-up, because heartbeats sent while the Manager was
down could not arrive (the Kubernetes node controller does the same).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .heartbeats import HeartbeatBuffer
from .metrics import ManagerMetrics
from .periodic import Periodic
from .store import Store, Transition

log = logging.getLogger(__name__)


def log_transitions(transitions: list[Transition], metrics: ManagerMetrics) -> None:
    """Log and count recorded status transitions."""
    for t in transitions:
        log.info("node %s: %s -> %s (%s)", t.node_id, t.old or "new", t.new, t.reason)
        metrics.transitions.labels(t.new).inc()


class LivenessMonitor:
    """Periodically declares silent nodes offline (see module doc)."""

    def __init__(
        self,
        *,
        store: Store,
        heartbeats: HeartbeatBuffer,
        metrics: ManagerMetrics,
        sweep_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._heartbeats = heartbeats
        self._metrics = metrics
        self._started_at = 0.0
        self._clock = clock
        self._held_logged = False
        self._loop = Periodic(name="liveness", interval=sweep_interval, step=self.sweep)

    async def sweep(self) -> None:
        now = self._clock()
        transitions, held = await self._store.mark_overdue_offline(
            now=now, started_at=self._started_at, exclude=self._heartbeats.pending_ids()
        )
        log_transitions(transitions, self._metrics)
        self._metrics.restart_guard_held.set(held)
        if held and not self._held_logged:
            self._held_logged = True
            log.info(
                "restart guard: %d silent node(s) stay online until a full grace period "
                "has passed since the Manager started",
                held,
            )

    async def start(self) -> None:
        """Start sweeping; the restart guard counts from now (start it once serving)."""
        self._started_at = self._clock()
        await self._loop.start()

    def close(self) -> None:
        self._loop.close()

    async def wait_closed(self) -> None:
        await self._loop.wait_closed()
