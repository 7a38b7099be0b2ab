"""Per-node quotas on what valid input may make the Manager store (issue 11 item 10).

A node's certificate lets it send only its own data, but every report is valid input
that becomes rows: one node reporting metrics as fast as it could grew the database by
~700 MB a minute, and one re-registering with a fresh instance id each time wrote ~370
node events a second. Both are bounded per node, in memory, O(1) per call:

* :class:`MetricsQuota`: host metric samples per node per window (a token bucket that
  refills continuously). A report that does not fit is refused whole with
  ``RESOURCE_EXHAUSTED`` and a retry hint; the node is *throttled* until a report fits
  again — visible as a node event at both ends, a log line and
  ``fleet_manager_throttled_nodes{quota="metrics"}``.
* :class:`EventQuota`: node events per node per window. Past it, events are counted,
  not written; the next event written says how many were left out. The node's status
  itself is always right: only its history is coalesced.

Quotas are per Manager process (two Managers on one database each allow the quota).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from common.durations import format_duration
from common.ratelimit import LogLimiter, TokenBuckets

from .metrics import ManagerMetrics

log = logging.getLogger(__name__)


class QuotaAnswer(NamedTuple):
    """What :meth:`MetricsQuota.take` decided."""

    retry: float  # 0.0: accepted; else seconds until a report this size would fit
    started: bool  # refused, and the first refusal since the node was last accepted
    ended: int  # accepted after refusals: how many reports were refused meanwhile


_ACCEPTED = QuotaAnswer(0.0, False, 0)


class MetricsQuota:
    """At most ``samples`` metric samples per node per ``window`` seconds (0: no quota)."""

    def __init__(
        self,
        *,
        samples: int,
        window: float,
        metrics: ManagerMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.samples = samples
        self.window = window
        self._metrics = metrics
        self._clock = clock
        self._buckets = TokenBuckets(capacity=samples, window=window) if samples else None
        # node -> [last refusal (clock), reports refused in this episode]
        self._throttled: dict[str, list[float]] = {}
        self._refused = metrics.quota_refusals.labels("metrics")

    def describe(self) -> str:
        return f"{self.samples} samples per {format_duration(self.window)}"

    def take(self, node_id: str, count: int) -> QuotaAnswer:
        """Count ``count`` samples against ``node_id`` if they fit (see QuotaAnswer)."""
        if self._buckets is None:
            return _ACCEPTED
        now = self._clock()
        retry = self._buckets.take(node_id, count, now)
        episode = self._throttled.get(node_id)
        if retry:
            self._refused.inc()
            if episode is None:
                self._throttled[node_id] = [now, 1]
                return QuotaAnswer(retry, True, 0)
            episode[0] = now
            episode[1] += 1
            return QuotaAnswer(retry, False, 0)
        if episode is None:
            return _ACCEPTED
        del self._throttled[node_id]
        return QuotaAnswer(0.0, False, int(episode[1]))

    def throttled_count(self) -> int:
        """Nodes refused within the last window (for the gauge)."""
        now = self._clock()
        return sum(1 for last, _ in self._throttled.values() if now - last < self.window)


class EventQuota:
    """At most ``events`` node events per node per ``window`` seconds are written (0: all).

    Called by the store for every event as ``quota(node_id, reason)``: the reason to
    write — with a note of how many events were left out before it — or None to write
    nothing.
    """

    def __init__(
        self,
        *,
        events: int,
        window: float,
        metrics: ManagerMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.events = events
        self.window = window
        self._metrics = metrics
        self._clock = clock
        self._buckets = TokenBuckets(capacity=events, window=window) if events else None
        self._dropped: dict[str, int] = {}
        self._log = LogLimiter(interval=60.0)
        self._throttled = metrics.throttled_nodes.labels("events")
        self._refused = metrics.quota_refusals.labels("events")

    def __call__(self, node_id: str, reason: str) -> str | None:
        if self._buckets is None:
            return reason
        now = self._clock()
        if not self._buckets.take(node_id, 1, now):
            if not self._dropped:
                return reason
            dropped = self._dropped.pop(node_id, 0)
            if not dropped:
                return reason
            self._throttled.set(len(self._dropped))
            return (
                f"{reason} ({dropped} earlier event(s) not recorded: over the node event "
                f"quota of {self.events} per {format_duration(self.window)})"
            )
        dropped = self._dropped[node_id] = self._dropped.get(node_id, 0) + 1
        self._refused.inc()
        self._throttled.set(len(self._dropped))
        held = self._log.allow(node_id, now)
        if held is not None:
            log.warning(
                "node %s: over its event quota (%d per %s): %d event(s) counted but not "
                "recorded so far, e.g. %r; the next one recorded says how many",
                node_id,
                self.events,
                format_duration(self.window),
                dropped,
                reason[:200],
            )
        return None
