"""The Manager's Prometheus metrics, on a registry owned by one Manager (no globals).

With several worker processes (``manager.workers``, manager/workers.py) every worker
writes its values to prometheus_client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``,
set by the parent before the workers start) and any worker's ``/metrics`` renders the
sum over all of them: counters and histograms add up, each gauge says how it combines
(``multiprocess_mode``: per-process figures sum over the live workers, database-derived
ones take the most recent, the loop lag and liveness holds the worst). Ignored by a
single process.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

NODE_STATUSES = ("registering", "online", "offline", "stopped")
POOL_STATES = ("idle", "connecting", "ready", "reconnecting")


class ManagerMetrics:
    """Every metric the Manager exports (``/metrics``); see docs/manager.md."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.nodes = Gauge(
            "fleet_manager_nodes",
            "Nodes by status.",
            ["status"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.agents = Gauge(
            "fleet_manager_agents",
            "Agents by status (synced view).",
            ["status"],
            multiprocess_mode="mostrecent",
            registry=r,
        )
        self.rpcs = Counter(
            "fleet_manager_rpc",
            "gRPC calls served, by method and code.",
            ["method", "code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "fleet_manager_rpc_duration_seconds",
            "gRPC call latency by method.",
            ["method"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.heartbeats = Counter(
            "fleet_manager_heartbeats", "Heartbeats accepted (before coalescing).", registry=r
        )
        self.liveness_by_report = Counter(
            "fleet_manager_liveness_by_report",
            "ReportMetrics and SyncAgentStates calls that counted as their node's liveness "
            "(each one a heartbeat the Daemon may skip), by method.",
            ["method"],
            registry=r,
        )
        self.heartbeat_flush_size = Histogram(
            "fleet_manager_heartbeat_flush_size",
            "Nodes written per heartbeat flush.",
            buckets=(1, 5, 10, 50, 100, 500, 1000, 5000, 10000),
            registry=r,
        )
        self.heartbeat_flush_seconds = Histogram(
            "fleet_manager_heartbeat_flush_duration_seconds",
            "Time to write one heartbeat flush.",
            registry=r,
        )
        self.metric_rows = Counter(
            "fleet_manager_metric_rows_written", "Host metric samples stored.", registry=r
        )
        self.metric_rows_deleted = Counter(
            "fleet_manager_metric_rows_deleted",
            "Host metric samples removed by retention.",
            registry=r,
        )
        self.transitions = Counter(
            "fleet_manager_node_transitions",
            "Node status transitions recorded, by new status.",
            ["status"],
            registry=r,
        )
        self.restart_guard_held = Gauge(
            "fleet_manager_restart_guard_held_nodes",
            "Overdue nodes not yet declared offline because the Manager started recently.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.lease_held = Gauge(
            "fleet_manager_lease_held",
            "1 while this Manager holds the lease (manager/leases.py), else 0.",
            ["lease"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.daemon_connections = Gauge(
            "fleet_manager_daemon_connections",
            "Manager->Daemon channels by connection state.",
            ["state"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.daemon_calls = Counter(
            "fleet_manager_daemon_calls",
            "Calls proxied to Daemons, by method and code.",
            ["method", "code"],
            registry=r,
        )
        # Issue 11: the Manager's own stalls, liveness holds, quotas, relayed text, TLS.
        self.loop_lag = Gauge(
            "fleet_manager_event_loop_lag_seconds",
            "How late the event loop ran its last timer check.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.loop_stalls = Counter(
            "fleet_manager_event_loop_stalls",
            "Event-loop stalls (a timer late by more than the stall threshold).",
            registry=r,
        )
        self.loop_stall_seconds = Counter(
            "fleet_manager_event_loop_stall_seconds",
            "Seconds the event loop was stalled (not counted against any node's liveness).",
            registry=r,
        )
        self.liveness_held = Gauge(
            "fleet_manager_liveness_held_nodes",
            "Overdue nodes not declared offline in the last sweep, by why.",
            ["reason"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.mass_silence = Gauge(
            "fleet_manager_liveness_mass_silence",
            "1 while a large share of nodes went silent at once and offline transitions "
            "are held as a suspected Manager or network fault.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.throttled_nodes = Gauge(
            "fleet_manager_throttled_nodes",
            "Nodes over a per-node quota (refused within the quota window), by quota.",
            ["quota"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.quota_refusals = Counter(
            "fleet_manager_quota_refusals",
            "Calls refused (metrics) or node events not recorded (events) for a quota.",
            ["quota"],
            registry=r,
        )
        self.agent_sync_problems = Counter(
            "fleet_manager_agent_sync_problems",
            "SyncAgentStates fields stored other than as sent (kind: sanitised).",
            ["kind"],
            registry=r,
        )
        self.rpc_shed = Counter(
            "fleet_manager_rpc_shed",
            "Calls refused by admission control before their request was read, by method "
            "and reason (busy: the method's budget was full; deadline: too late to serve).",
            ["method", "reason"],
            registry=r,
        )
        self.agent_restarts = Counter(
            "fleet_manager_agent_restarts",
            "Agent restarts after a crash, by node and agent (as its Daemon counts them; "
            'beyond the series cap, node and agent are "_other").',
            ["node", "agent"],
            registry=r,
        )
        self.agent_fatal = Counter(
            "fleet_manager_agent_fatal",
            "Times an agent entered FATAL (its Daemon gave up restarting it), by node and agent.",
            ["node", "agent"],
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "fleet_manager_tls_handshake_failures",
            "TLS handshakes refused on the gRPC port, by reason.",
            ["reason"],
            registry=r,
        )
        self.connections_refused = Counter(
            "fleet_manager_connections_refused",
            "Connections closed as soon as accepted: a connection cap was reached, by port "
            "and reason (server_full, peer_full).",
            ["port", "reason"],
            registry=r,
        )
        self.node_events_deleted = Counter(
            "fleet_manager_node_events_deleted",
            "Node events removed by retention.",
            registry=r,
        )
        self.database_writable = Gauge(
            "fleet_manager_database_writable",
            "1 when the last write check succeeded, 0 when it failed (see /readyz).",
            multiprocess_mode="livemin",
            registry=r,
        )
        self.watch_streams = Gauge(
            "fleet_manager_watch_streams",
            "WatchEvents streams open (each one an event subscriber).",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.watch_dropped = Counter(
            "fleet_manager_watch_dropped",
            "WatchEvents streams ended because the client did not keep up (too slow).",
            registry=r,
        )
        for reason in ("restart_guard", "manager_stall", "mass_silence"):
            self.liveness_held.labels(reason)
        for quota in ("metrics", "events"):
            self.throttled_nodes.labels(quota)
            self.quota_refusals.labels(quota)
        self.agent_sync_problems.labels("sanitised")
        # Label children per (method, code) and per method, bound on first use: ``labels()``
        # on every request is a measurable part of a Manager serving thousands of calls/s.
        self._rpc_children: dict[tuple[str, str], Any] = {}
        self._rpc_seconds_children: dict[str, Any] = {}
        self._agent_statuses: set[str] = set()
        for status in NODE_STATUSES:
            self.nodes.labels(status)
        for state in POOL_STATES:
            self.daemon_connections.labels(state)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """``common.rpc.GuardedService`` observer."""
        counter = self._rpc_children.get((method, code))
        if counter is None:
            counter = self._rpc_children[method, code] = self.rpcs.labels(method, code)
        histogram = self._rpc_seconds_children.get(method)
        if histogram is None:
            histogram = self._rpc_seconds_children[method] = self.rpc_seconds.labels(method)
        counter.inc()
        histogram.observe(seconds)

    def observe_shed(self, method: str, reason: str) -> None:
        self.rpc_shed.labels(method, reason).inc()

    def set_status_counts(self, nodes: dict[str, int], agents: dict[str, int]) -> None:
        for status in set(NODE_STATUSES) | set(nodes):
            self.nodes.labels(status).set(nodes.get(status, 0))
        # Set to 0 rather than cleared: a multiprocess file keeps a removed child's value.
        for status in set(self._agent_statuses) - set(agents):
            self.agents.labels(status).set(0)
        self._agent_statuses.update(agents)
        for status, count in agents.items():
            self.agents.labels(status).set(count)

    def set_pool_states(self, states: dict[str, str]) -> None:
        counts = dict.fromkeys(POOL_STATES, 0)
        for state in states.values():
            counts[state] = counts.get(state, 0) + 1
        for state, count in counts.items():
            self.daemon_connections.labels(state).set(count)

    def render(self) -> bytes:
        """This process's metrics, or every worker's combined (see module doc)."""
        directory = os.environ.get(MULTIPROC_ENV)
        if not directory:
            return generate_latest(self.registry)
        combined = CollectorRegistry()
        MultiProcessCollector(combined, path=directory)
        return generate_latest(combined)
