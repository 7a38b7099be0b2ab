"""Fault battery, items 10 and 11: agent faults, and a Daemon killed with SIGKILL.

Item 10 extends the Daemon's own supervision tests (referenced in docs/security.md) to
what an operator sees: the crash loop's ``FATAL`` and a missing binary's reason arrive
at the *Manager*, a SIGTERM-ignoring group is SIGKILLed when stopped *through the
Manager*, and the process table holds no zombie and no stray member of any agent group.

Item 11: ``kill -9`` of the Daemon in the middle of an operation and with a disk queue
full of unsent reports; a second Daemon started with the same node identity.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from pathlib import Path

import psutil
from harness import free_port, wait_until
from harness.daemon import agent, call_daemon, list_agents, start_daemon
from harness.manager import manager_rpc, start_manager, stored_nodes, write_manager_config

from schema import admin_pb, daemon_pb


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _zombies_under(pid: int) -> list[int]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for k in kids:
        try:
            if k.status() == psutil.STATUS_ZOMBIE:
                out.append(k.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _group_members(pgid: int) -> list[int]:
    members = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid != pgid and os.getpgid(p.pid) == pgid:
                members.append(p.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


def _manager_agents(certs: Path, port: int) -> dict[str, admin_pb.Agent]:
    reply = manager_rpc(certs, port, "admin", "list_agents", admin_pb.ListAgentsRequest())
    return {a.id: a for a in reply.agents}


def test_agent_faults_reach_the_manager_and_leave_no_zombies(tmp_path: Path, certs: Path) -> None:
    pids_file = tmp_path / "stubborn.pids"
    mgr = start_manager(tmp_path, certs)
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=mgr.grpc_port,
        agents=[
            agent(
                "crashy",
                "crasher",
                "3",
                "0",
                start_seconds=0.5,
                start_retries=2,
                backoff_initial=0.2,
            ),
            {
                "id": "typo",
                "command": ["/nonexistent/bin/app", "--serve"],
                "start_retries": 1,
                "backoff_initial": 0.1,
            },
            agent("stubborn", "stubborn", str(pids_file), stop_timeout=1.0, start_seconds=0.2),
        ],
    )
    try:
        port = mgr.grpc_port
        # Crash loop -> backoff -> FATAL, as the Manager sees it.
        crashy = wait_until(
            lambda: (a := _manager_agents(certs, port).get("crashy")) and a.status == "FATAL" and a,
            timeout=30,
            what="crash loop FATAL at the Manager",
        )
        assert crashy.restart_count == 2
        assert "exit code 3" in crashy.status_reason
        # A missing binary: FATAL with a reason that names it.
        typo = wait_until(
            lambda: (a := _manager_agents(certs, port).get("typo")) and a.status == "FATAL" and a,
            timeout=30,
            what="missing binary FATAL at the Manager",
        )
        assert "/nonexistent/bin/app" in typo.status_reason
        assert "no such" in typo.status_reason.lower()
        # SIGTERM ignored: stopping it through the Manager SIGKILLs the whole group.
        wait_until(pids_file.exists, what="stubborn running")
        leader, child = (int(x) for x in pids_file.read_text().split())
        started = time.monotonic()
        reply = manager_rpc(
            certs,
            port,
            "admin",
            "operate_agent",
            admin_pb.OperateAgentRequest(node_id="node-a", agent_id="stubborn", operation="stop"),
        )
        assert reply.success, reply.error_message
        assert time.monotonic() - started >= 1.0
        assert not _alive(leader) and not _alive(child)
        # Orphaned members are reaped by init a moment later: none may linger.
        wait_until(lambda: _group_members(leader) == [], timeout=5, what="group gone")
        assert reply.agent.status == "STOPPED"
        wait_until(
            lambda: _manager_agents(certs, port)["stubborn"].status == "STOPPED",
            what="STOPPED synced",
        )
        # No zombies under the Daemon after crash loops, spawn failures and SIGKILLs.
        assert _zombies_under(daemon.pid) == []
    finally:
        daemon.stop()
        mgr.stop()


def test_kill_9_mid_operation_readopts_without_duplicates(tmp_path: Path, certs: Path) -> None:
    """The Daemon dies while stopping a SIGTERM-ignoring agent (inside stop_timeout): the
    agent outlives it, and the restarted Daemon adopts that same process — never a second
    copy. (Plain re-adoption and reused pids: ``test_daemon_adoption.py``.)"""
    pids_file = tmp_path / "stubborn.pids"
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[agent("stubborn", "stubborn", str(pids_file), stop_timeout=8, start_seconds=0.2)],
    )
    try:
        wait_until(pids_file.exists, what="stubborn running")
        leader, child = (int(x) for x in pids_file.read_text().split())
        wait_until(lambda: list_agents(certs, daemon)["stubborn"].status == "RUNNING")

        def stop() -> None:
            with contextlib.suppress(Exception):  # the Daemon dies under it
                call_daemon(
                    certs,
                    daemon,
                    "operate_agent",
                    daemon_pb.AgentOperationRequest(agent_id="stubborn", operation="stop"),
                    timeout=5,
                )

        threading.Thread(target=stop, daemon=True).start()
        wait_until(lambda: "STOPPING" in daemon.output(), what="stop in progress")
        daemon.signal(signal.SIGKILL)
        daemon.kill()
        assert _alive(leader) and _alive(child)
        daemon = daemon.restart()
        info = list_agents(certs, daemon)["stubborn"]
        assert info.pid == leader, (info.pid, leader)
        assert pids_file.read_text().split() == [str(leader), str(child)]  # no second start
        assert sorted(_group_members(leader)) == [child]
    finally:
        daemon.stop()
    assert not _alive(leader) and not _alive(child)


def test_kill_9_with_queued_reports_replays_oldest_first_and_registers_once(
    tmp_path: Path, certs: Path
) -> None:
    cfg = write_manager_config(tmp_path / "m.toml", {"heartbeats": {"flush_interval": 0.2}})
    port = free_port()
    args = ["--config", str(cfg)]
    mgr = start_manager(tmp_path, certs, grpc_port=port, extra_args=args)
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=port,
        metrics_interval=0.3,
        config={"log": {"level": "debug"}},
    )
    try:
        wait_until(lambda: "node-a" in stored_nodes(mgr.db_url), timeout=20, what="registered")
        registered_at = stored_nodes(mgr.db_url)["node-a"]["registered_at"]
        mgr.stop()
        outbox = daemon.state_dir / "outbox"
        wait_until(lambda: len(list(outbox.glob("*.pb"))) >= 6, timeout=20, what="queued")
        daemon.signal(signal.SIGKILL)
        daemon.kill()
        queued = sorted(int(p.stem) for p in outbox.glob("*.pb"))
        killed_at = time.time()
        log_offset = len(daemon.output())
        daemon = daemon.restart()
        mgr = start_manager(tmp_path, certs, grpc_port=port, extra_args=args, log_name="m2.log")
        sent = wait_until(
            lambda: (
                (
                    s := [
                        int(x)
                        for x in re.findall(
                            r"sent metrics report (\d+)", daemon.output()[log_offset:]
                        )
                    ]
                )
                and len(s) >= len(queued) + 2
                and s
            ),
            timeout=30,
            what="queue replayed and new reports sent",
        )
        # Replayed oldest first, every queued report before any new one, none skipped.
        assert sent[: len(queued)] == queued, (sent[:20], queued)
        assert sent == sorted(sent)
        assert all(s > queued[-1] for s in sent[len(queued) :])
        metrics = manager_rpc(
            certs,
            port,
            "admin",
            "query_node_metrics",
            admin_pb.QueryNodeMetricsRequest(
                node_id="node-a", type="cpu", since_seconds=3600, limit=1000
            ),
        ).metrics
        assert min(m.timestamp for m in metrics) <= killed_at  # the outage's samples arrived
        # Registered idempotently: one node, its original registration, no duplicate flagged.
        rows = stored_nodes(mgr.db_url)
        assert list(rows) == ["node-a"]
        assert rows["node-a"]["registered_at"] == registered_at
        events = manager_rpc(
            certs, port, "admin", "get_node", admin_pb.GetNodeRequest(node_id="node-a")
        ).events
        reasons = [e.reason for e in events]
        assert reasons.count("registered") == 1, reasons
        assert not any("duplicate" in r for r in reasons), reasons
    finally:
        daemon.stop()
        mgr.stop()


def test_second_daemon_with_the_same_identity_is_flagged(tmp_path: Path, certs: Path) -> None:
    mgr = start_manager(tmp_path, certs)
    first = start_daemon(tmp_path / "one", certs, node_id="node-a", manager_port=mgr.grpc_port)
    second = None
    try:
        port = mgr.grpc_port
        wait_until(lambda: "node-a" in stored_nodes(mgr.db_url), timeout=20, what="first up")
        first_instance = stored_nodes(mgr.db_url)["node-a"]["instance_id"]
        second = start_daemon(tmp_path / "two", certs, node_id="node-a", manager_port=port)
        events = wait_until(
            lambda: [
                e.reason
                for e in manager_rpc(
                    certs, port, "admin", "get_node", admin_pb.GetNodeRequest(node_id="node-a")
                ).events
                if "duplicate" in e.reason
            ],
            timeout=20,
            what="the duplicate Daemon flagged as a node event",
        )
        assert events
        rows = stored_nodes(mgr.db_url)
        assert list(rows) == ["node-a"]  # one node, not two merged or a second row
        # Exactly one of the two instances is the registered one; the other is refused.
        current = rows["node-a"]["instance_id"]
        assert current
        refused = first if current != first_instance else second
        wait_until(
            lambda: "ALREADY_EXISTS" in refused.output(),
            timeout=20,
            what="the superseded Daemon told so",
        )
        assert first_instance in " ".join(events) or current in " ".join(events)
    finally:
        if second is not None:
            second.stop()
        first.stop()
        mgr.stop()
