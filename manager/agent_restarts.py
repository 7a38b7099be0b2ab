"""Agent crash restarts and FATALs on the Manager's /metrics, for crash-loop alerts.

A Daemon counts an agent's crash restarts (``AgentState.restart_count``) and syncs its
state; the Manager turns what changes between two syncs into Prometheus counters:

* ``fleet_manager_agent_restarts_total{node, agent}`` grows by the rise of
  ``restart_count`` (a Daemon that restarted counts from 0 again: then by the new value);
* ``fleet_manager_agent_fatal_total{node, agent}`` grows when an agent enters ``FATAL``.

The first sync of an agent after the Manager starts sets its baseline (Prometheus counts
from a restart of the exporter anyway: ``increase()`` handles it). An alert such as
``increase(fleet_manager_agent_restarts_total[15m]) > 3`` fires on a crash loop.

Label cardinality is bounded: at most ``max_series`` (node, agent) pairs get their own
series; the rest are counted under ``node="_other", agent="_other"``, so one fleet with
many short-lived agents cannot grow the Manager's memory or the scrape without bound.
With several Managers, each counts the syncs it received; sum them in the query.
"""

from __future__ import annotations

from collections.abc import Iterable

from .metrics import ManagerMetrics
from .store import AgentRecord

OTHER = "_other"
FATAL = "FATAL"


class AgentRestartCounter:
    """Turns synced agent states into restart and FATAL counters (module doc)."""

    def __init__(self, *, metrics: ManagerMetrics, max_series: int = 5000) -> None:
        self._metrics = metrics
        self._max_series = max_series
        # node -> agent -> (restart_count, status) at the last sync.
        self._last: dict[str, dict[str, tuple[int, str]]] = {}
        self._series: set[tuple[str, str]] = set()

    def observe(self, node_id: str, records: Iterable[AgentRecord], *, full: bool) -> None:
        """Account one SyncAgentStates of ``node_id`` (``full``: its complete agent list)."""
        last = self._last.get(node_id)
        if last is None:
            last = self._last[node_id] = {}
        current: dict[str, tuple[int, str]] = {}
        for record in records:
            key = (node_id, record.agent_id)
            current[record.agent_id] = (record.restart_count, record.status)
            previous = last.get(record.agent_id)
            if previous is None:
                continue
            count, status = previous
            rise = record.restart_count - count
            if rise < 0:  # the Daemon's count started again
                rise = record.restart_count
            if rise > 0:
                self._metrics.agent_restarts.labels(*self._labels(key)).inc(rise)
            if record.status == FATAL and status != FATAL:
                self._metrics.agent_fatal.labels(*self._labels(key)).inc()
        if full:
            self._last[node_id] = current  # agents gone from the node are forgotten
        else:
            last.update(current)

    def forget_node(self, node_id: str) -> None:
        """A removed node: drop its baselines (its series stay until the Manager restarts)."""
        self._last.pop(node_id, None)

    def _labels(self, key: tuple[str, str]) -> tuple[str, str]:
        if key in self._series:
            return key
        if len(self._series) < self._max_series:
            self._series.add(key)
            return key
        return (OTHER, OTHER)
