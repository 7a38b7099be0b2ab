"""StallClock: when the Manager's own event loop could not run, measured as it happens.

Heartbeats are read by the event loop. While it is blocked — a CPU-bound request, a
decode bomb, a synchronous call that hangs, a GC pause, the process stopped (SIGSTOP,
a paused VM) — heartbeats wait unread in socket buffers, and a node's silence is the
Manager's fault, not the node's. A callback scheduled every ``tick`` seconds notes how
late it runs; lateness beyond ``threshold`` is recorded as a stall (wall-clock interval).
:meth:`StallClock.stalled` tells liveness how much of a node's silence the Manager
itself was stalled, including a stall still in progress (the sweep may run before the
late tick does, in the same loop turn).
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_right
from collections.abc import Callable

from common.ratelimit import LogLimiter

from .metrics import ManagerMetrics

log = logging.getLogger(__name__)

# Stalls older than this are forgotten (no grace is longer: heartbeat intervals are at
# most a day, graces a few intervals), and at most this many are kept (the oldest half
# goes when full; forgetting only ever makes liveness stricter).
_KEEP_SECONDS = 4 * 86_400.0
_MAX_STALLS = 100_000


class StallClock:
    """Measures event-loop stalls (see module doc); house lifecycle, no task of its own."""

    def __init__(
        self,
        *,
        metrics: ManagerMetrics,
        tick: float = 0.25,
        threshold: float = 0.5,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._tick = tick
        self._threshold = threshold
        self._clock = clock
        self._monotonic = monotonic
        # Stalls as wall-clock intervals, oldest first, and the stalled seconds up to the
        # end of each (cumulative): how much of any span was stalled is two binary
        # searches, however many stalls a sluggish hour recorded. Only the lateness is
        # recorded, not the time between late ticks: a loop that runs late all the time
        # excuses that share of a node's silence, not all of it.
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._cumulative: list[float] = []
        self._due = 0.0  # monotonic time the pending tick should run
        self._handle: asyncio.TimerHandle | None = None
        self._started = False
        self._log = LogLimiter(interval=10.0)
        self._unlogged = 0.0  # stalled seconds not yet in a log line

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("stall clock already started")
        self._started = True
        self._schedule()

    def _schedule(self) -> None:
        self._due = self._monotonic() + self._tick
        self._handle = asyncio.get_running_loop().call_later(self._tick, self._on_tick)

    def _on_tick(self) -> None:
        late = self._monotonic() - self._due
        self._metrics.loop_lag.set(max(0.0, late))
        if late > self._threshold:
            self._record(late)
        self._schedule()

    def _record(self, late: float) -> None:
        now = self._clock()
        start = now - late
        self._metrics.loop_stalls.inc()
        self._metrics.loop_stall_seconds.inc(late)
        if self._ends:  # wall clock stepped back: keep the intervals ordered
            start = max(start, self._ends[-1])
            now = max(now, start)
        total = self._cumulative[-1] if self._cumulative else 0.0
        self._starts.append(start)
        self._ends.append(now)
        self._cumulative.append(total + (now - start))
        old = bisect_right(self._ends, now - _KEEP_SECONDS)
        if len(self._ends) > _MAX_STALLS:
            old = max(old, len(self._ends) // 2)
        if old:
            del self._starts[:old], self._ends[:old], self._cumulative[:old]
        self._unlogged += late
        held = self._log.allow("stall", self._monotonic())
        if held is not None:
            more = f" ({held} more stalls not logged)" if held else ""
            log.warning(
                "event loop stalled %.2f s, %.1f s in all since the last line%s: heartbeats "
                "that arrived meanwhile could not be read, and liveness does not count that "
                "time against any node",
                late,
                self._unlogged,
                more,
            )
            self._unlogged = 0.0

    def current_stall(self) -> float:
        """How late the pending tick is now, when that is a stall (else 0)."""
        if self._handle is None:
            return 0.0
        late = self._monotonic() - self._due
        return late if late > self._threshold else 0.0

    def stalled(self, since: float, until: float) -> float:
        """Seconds of [since, until] (wall clock) during which the loop was stalled."""
        if until <= since:
            return 0.0
        total = self._stalled_before(until) - self._stalled_before(since)
        ongoing = self.current_stall()
        if ongoing:
            now = self._clock()
            total += _overlap(now - ongoing, now, since, until)
        return min(total, until - since)

    def _stalled_before(self, moment: float) -> float:
        """Stalled seconds recorded up to ``moment`` (relative to a fixed origin)."""
        ends = self._ends
        if not ends:
            return 0.0
        i = bisect_right(ends, moment)  # stalls [0, i) ended by then
        before = self._cumulative[i - 1] if i else self._cumulative[0] - (ends[0] - self._starts[0])
        if i < len(ends) and self._starts[i] < moment:
            before += moment - self._starts[i]  # inside stall i
        return before

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    async def wait_closed(self) -> None:
        return None


def _overlap(start: float, end: float, since: float, until: float) -> float:
    return max(0.0, min(end, until) - max(start, since))
