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
from collections import deque
from collections.abc import Callable

from .metrics import ManagerMetrics
from .ratelimit import LogLimiter

log = logging.getLogger(__name__)

# Stalls older than this are forgotten (no grace is longer: heartbeat intervals are at
# most a day, graces a few intervals).
_KEEP_SECONDS = 4 * 86_400.0
_MAX_STALLS = 4096


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
        # (start, end) in wall-clock seconds, oldest first, merged when close together.
        self._stalls: deque[tuple[float, float]] = deque(maxlen=_MAX_STALLS)
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
        if self._stalls and start - self._stalls[-1][1] <= 2 * self._tick:
            start = min(start, self._stalls[-1][0])  # one sluggish stretch, not many
            self._stalls.pop()
        self._stalls.append((start, now))
        while self._stalls and self._stalls[0][1] < now - _KEEP_SECONDS:
            self._stalls.popleft()
        self._unlogged += late
        held = self._log.allow("stall", self._monotonic())
        if held is not None:
            more = f" ({held} shorter stalls before it)" if held else ""
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
        total = 0.0
        ongoing = self.current_stall()
        if ongoing:
            now = self._clock()
            total += _overlap(now - ongoing, now, since, until)
        for start, end in reversed(self._stalls):
            if end <= since:
                break
            total += _overlap(start, end, since, until)
        return min(total, max(0.0, until - since))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    async def wait_closed(self) -> None:
        return None


def _overlap(start: float, end: float, since: float, until: float) -> float:
    return max(0.0, min(end, until) - max(start, since))
