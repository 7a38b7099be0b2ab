"""Liveness: online while heartbeats arrive within the grace period, then offline.

A node's grace is ``liveness.grace`` when set, else ``grace_factor`` × the heartbeat
interval its Daemon reported at RegisterNode (default 3 × 60 s). Each heartbeat flush
pushes the node's ``offline_after`` deadline forward; this sweeper marks nodes whose
deadline passed offline, with an event saying how long they were silent.

The Manager does not blame nodes for its own faults:

* **Restart guard.** Right after the Manager starts, no node is declared offline until a
  full grace period has passed since start-up: heartbeats sent while the Manager was
  down could not arrive (the Kubernetes node controller does the same). With several
  Managers the sweep runs only on the holder of the ``duties`` lease
  (manager/leases.py), and the guard counts from when this Manager took the lease: the
  nodes that heartbeated to a holder that just died may not have found this one yet.
* **Its own stalls.** While the Manager's event loop cannot run (a CPU-bound request,
  the process stopped, a paused VM), heartbeats wait unread in socket buffers. The
  :class:`~manager.stalls.StallClock` measures those stalls, and a node is overdue only
  when it was silent for longer than its grace *not counting* the time the Manager
  itself was stalled.
* **Mass silence.** When at least ``mass_offline_min_nodes`` online nodes, and at least
  ``mass_offline_share`` of them, have all been silent for more than half their grace at
  the moment one would be marked offline, the likelier culprit is the Manager or its
  network, not every node at once (the Kubernetes node lifecycle controller stops
  evicting when a zone is mostly unhealthy). The transitions are held — logged,
  counted in ``fleet_manager_liveness_held_nodes{reason="mass_silence"}`` and
  ``fleet_manager_liveness_mass_silence`` — for up to ``mass_offline_hold``; a fleet
  still silent then is really down and is marked offline, the events saying they were
  held. A single dead node is never a mass silence: it goes offline on time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from common.durations import format_duration
from common.ratelimit import LogLimiter

from .heartbeats import HeartbeatBuffer
from .leases import Lease
from .metrics import ManagerMetrics
from .periodic import Periodic
from .stalls import StallClock
from .store import Store, Transition

log = logging.getLogger(__name__)

# Overdue nodes looked at per sweep (the longest overdue first).
_SWEEP_LIMIT = 1000


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
        stalls: StallClock,
        sweep_interval: float,
        mass_offline_share: float = 0.5,
        mass_offline_min_nodes: int = 5,
        mass_offline_hold: float = 300.0,
        lease: Lease | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._lease = lease
        self._heartbeats = heartbeats
        self._metrics = metrics
        self._stalls = stalls
        self._mass_share = mass_offline_share
        self._mass_min = mass_offline_min_nodes
        self._mass_hold = mass_offline_hold
        self._started_at = 0.0
        self._clock = clock
        self._held_logged = False
        self._mass_since: float | None = None  # wall clock: when the mass silence began
        self._mass_released = False
        self._stall_log = LogLimiter(interval=10.0)
        self._loop = Periodic(name="liveness", interval=sweep_interval, step=self.sweep)

    async def sweep(self) -> None:
        if self._lease is not None and not self._lease.held:
            self._report_holds(0, 0, 0, 0.0)
            return  # another Manager sweeps
        now = self._clock()
        since = max(self._started_at, self._lease.acquired_at if self._lease else 0.0)
        overdue = await self._store.overdue_nodes(now=now, limit=_SWEEP_LIMIT)
        pending = self._heartbeats.pending_ids()
        due: list[tuple[str, str]] = []
        held_restart = held_stall = 0
        longest_stall = 0.0
        for node_id, last, grace in overdue:
            if node_id in pending:
                continue  # a heartbeat is on its way to the database
            if now - since < grace:
                held_restart += 1
                continue
            silent = now - last
            stalled = self._stalls.stalled(last, now)
            if silent - stalled <= grace:
                held_stall += 1
                longest_stall = max(longest_stall, stalled)
                continue
            reason = f"no heartbeat for {silent:.0f} s (grace {grace:g} s)"
            if stalled >= 1:
                reason += f", not counting {stalled:.0f} s the Manager was stalled"
            due.append((node_id, reason))
        held_mass = 0
        if due or self._mass_since is not None:
            due, held_mass = await self._mass_silence(now, due, pending)
        transitions = await self._store.mark_offline(due, now=now) if due else []
        log_transitions(transitions, self._metrics)
        self._report_holds(held_restart, held_stall, held_mass, longest_stall)

    async def _mass_silence(
        self, now: float, due: list[tuple[str, str]], pending: set[str]
    ) -> tuple[list[tuple[str, str]], int]:
        """(what to mark offline now, how many are held) given the mass-silence rule."""
        if self._mass_hold <= 0:
            return due, 0
        online, late_rows = await self._store.late_nodes(now=now)
        late = 0
        for node_id, last, grace in late_rows:
            if node_id in pending:
                continue
            if now - last - self._stalls.stalled(last, now) > grace / 2:
                late += 1
        mass = late >= self._mass_min and late >= self._mass_share * online
        if not mass:
            if self._mass_since is not None:
                log.info(
                    "liveness: mass silence over after %s (%d of %d online nodes silent "
                    "now): offline transitions are decided node by node again",
                    format_duration(now - self._mass_since),
                    late,
                    online,
                )
                self._mass_since = None
                self._mass_released = False
                self._metrics.mass_silence.set(0)
            return due, 0
        if self._mass_since is None:
            self._mass_since = now
            self._metrics.mass_silence.set(1)
            log.warning(
                "liveness: %d of %d online nodes went silent at once: suspecting the Manager "
                "or its network rather than every node; holding their offline transitions "
                "for up to %s",
                late,
                online,
                format_duration(self._mass_hold),
            )
        held_for = now - self._mass_since
        if held_for < self._mass_hold:
            return [], len(due)
        if due and not self._mass_released:
            self._mass_released = True
            log.warning(
                "liveness: %d of %d online nodes still silent after holding %s: they are "
                "down, marking them offline",
                late,
                online,
                format_duration(held_for),
            )
        note = (
            f"; one of {late} of {online} nodes silent at once, held "
            f"{format_duration(held_for)} as a suspected Manager or network fault"
        )
        return [(node_id, reason + note) for node_id, reason in due], 0

    def _report_holds(self, restart: int, stall: int, mass: int, longest_stall: float) -> None:
        held = self._metrics.liveness_held
        held.labels("restart_guard").set(restart)
        held.labels("manager_stall").set(stall)
        held.labels("mass_silence").set(mass)
        self._metrics.restart_guard_held.set(restart)
        if restart and not self._held_logged:
            self._held_logged = True
            log.info(
                "restart guard: %d silent node(s) stay online until a full grace period "
                "has passed since the Manager started",
                restart,
            )
        if stall and self._stall_log.allow("held", time.monotonic()) is not None:
            log.warning(
                "liveness: %d overdue node(s) stay online: up to %.1f s of their silence "
                "is the Manager's own stall",
                stall,
                longest_stall,
            )

    async def start(self) -> None:
        """Start sweeping; the restart guard counts from now (start it once serving)."""
        self._started_at = self._clock()
        await self._loop.start()

    def close(self) -> None:
        self._loop.close()

    async def wait_closed(self) -> None:
        await self._loop.wait_closed()
