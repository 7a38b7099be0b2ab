"""Agent crash restarts and FATALs on the Manager's /metrics (issue 13, item 5): a real
Manager, a real Daemon, real crashing agents; the counters a crash-loop alert reads."""

from __future__ import annotations

from pathlib import Path

from harness import wait_until
from harness.daemon import agent, start_daemon
from harness.manager import start_manager
from test_manager_http import get, sample

from manager.agent_restarts import AgentRestartCounter
from manager.metrics import ManagerMetrics
from manager.store import AgentRecord


def test_crash_loops_and_fatal_agents_are_counted_per_node_and_agent(
    tmp_path: Path, certs: Path
) -> None:
    mgr = start_manager(tmp_path, certs)
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=mgr.grpc_port,
        agents=[
            # Runs past start_seconds, then crashes: restarted again and again.
            agent("looper", "crasher", "3", "1.0", start_seconds=0.5, backoff_initial=0.2),
            # Never lasts start_seconds: FATAL after its retries (seconds after the first sync).
            agent(
                "doomed", "crasher", "3", "0.5", start_seconds=3, start_retries=3, backoff_initial=1
            ),
            agent("steady", "sleeper"),
        ],
    )
    try:

        def metrics() -> str:
            return get(f"{mgr.http_url}/metrics")[2]

        wait_until(
            lambda: (
                (sample(metrics(), "fleet_manager_agent_restarts_total", agent="looper") or 0) >= 2
            ),
            timeout=90,
            what="looper's crash restarts counted",
        )
        wait_until(
            lambda: sample(metrics(), "fleet_manager_agent_fatal_total", agent="doomed") == 1,
            timeout=90,
            what="doomed counted once as FATAL",
        )
        text = metrics()
        assert sample(text, "fleet_manager_agent_restarts_total", node="node-a", agent="looper")
        assert sample(text, "fleet_manager_agent_restarts_total", agent="steady") is None
        assert sample(text, "fleet_manager_agent_fatal_total", agent="looper") is None
    finally:
        daemon.stop()
        mgr.stop()


def _record(agent_id: str, restarts: int, status: str = "RUNNING") -> AgentRecord:
    return AgentRecord(agent_id=agent_id, status=status, restart_count=restarts)


def test_counter_baselines_resets_and_bounded_series() -> None:
    metrics = ManagerMetrics()
    counter = AgentRestartCounter(metrics=metrics, max_series=2)

    def value(name: str, node: str, agent_id: str) -> float:
        got = metrics.registry.get_sample_value(name, {"node": node, "agent": agent_id})
        return got or 0.0

    counter.observe("n1", [_record("a", 5)], full=True)  # first sight: baseline only
    assert value("fleet_manager_agent_restarts_total", "n1", "a") == 0
    counter.observe("n1", [_record("a", 7)], full=True)
    assert value("fleet_manager_agent_restarts_total", "n1", "a") == 2
    counter.observe("n1", [_record("a", 1)], full=True)  # the Daemon counted from 0 again
    assert value("fleet_manager_agent_restarts_total", "n1", "a") == 3
    counter.observe("n1", [_record("a", 1, "FATAL")], full=False)
    counter.observe("n1", [_record("a", 1, "FATAL")], full=False)  # still FATAL: once
    assert value("fleet_manager_agent_fatal_total", "n1", "a") == 1
    # A full sync without the agent forgets it: its return is a new baseline.
    counter.observe("n1", [], full=True)
    counter.observe("n1", [_record("a", 9)], full=True)
    assert value("fleet_manager_agent_restarts_total", "n1", "a") == 3
    # Beyond max_series, new pairs count under _other.
    for node in ("n2", "n3", "n4"):
        counter.observe(node, [_record("b", 0)], full=True)
        counter.observe(node, [_record("b", 1)], full=True)
    assert value("fleet_manager_agent_restarts_total", "n2", "b") == 1
    assert value("fleet_manager_agent_restarts_total", "n3", "b") == 0
    assert value("fleet_manager_agent_restarts_total", "_other", "_other") == 2
