"""Liveness: online/offline transitions with events, and the restart guard (both backends)."""

from __future__ import annotations

import time
from pathlib import Path

from harness import wait_until
from harness.manager import manager_rpc, start_manager, write_manager_config

from schema import admin_pb, manager_pb

FAST_SWEEP = {"liveness": {"sweep_interval": 0.2}, "heartbeats": {"flush_interval": 0.2}}


def register(certs: Path, port: int, node_id: str, interval: int = 1) -> None:
    manager_rpc(
        certs,
        port,
        node_id,
        "register_node",
        manager_pb.RegisterNodeRequest(
            node_id=node_id,
            hostname=node_id,
            daemon_address="127.0.0.1:1",
            heartbeat_interval_seconds=interval,
            instance_id=f"{node_id}-1",
        ),
    )


def heartbeat(certs: Path, port: int, node_id: str) -> None:
    manager_rpc(
        certs,
        port,
        node_id,
        "heartbeat",
        manager_pb.HeartbeatRequest(
            node_id=node_id, timestamp=int(time.time()), instance_id=f"{node_id}-1"
        ),
    )


def node(certs: Path, port: int, node_id: str) -> admin_pb.GetNodeResponse:
    return manager_rpc(certs, port, "admin", "get_node", admin_pb.GetNodeRequest(node_id=node_id))


def statuses(certs: Path, port: int) -> dict[str, str]:
    nodes = manager_rpc(certs, port, "admin", "list_nodes", admin_pb.ListNodesRequest()).nodes
    return {n.node_id: n.status for n in nodes}


def test_online_offline_resumed_with_events(tmp_path: Path, certs: Path, db_url: str) -> None:
    cfg = write_manager_config(tmp_path / "m.toml", FAST_SWEEP)
    mgr = start_manager(
        tmp_path, certs, db_url=db_url, grace=1.5, extra_args=["--config", str(cfg)]
    )
    try:
        port = mgr.grpc_port
        register(certs, port, "node-a")
        assert statuses(certs, port) == {"node-a": "online"}
        # Heartbeats keep it online past the grace period.
        deadline = time.time() + 2.5
        while time.time() < deadline:
            heartbeat(certs, port, "node-a")
            assert statuses(certs, port) == {"node-a": "online"}
        # Silence: offline once the grace has passed, with the reason recorded.
        silent_from = time.time()
        wait_until(lambda: statuses(certs, port)["node-a"] == "offline", timeout=10, what="offline")
        assert time.time() - silent_from >= 1.0
        heartbeat(certs, port, "node-a")  # visible once flushed (one flush interval)
        wait_until(
            lambda: node(certs, port, "node-a").node.status == "online", timeout=5, what="online"
        )
        got = node(certs, port, "node-a")
        reasons = [e.reason for e in got.events]
        assert reasons[0] == "heartbeat resumed"
        assert reasons[1].startswith("no heartbeat for ")
        assert reasons[-1] == "registered"
        assert [(e.old_status, e.new_status) for e in got.events] == [
            ("offline", "online"),
            ("online", "offline"),
            ("", "online"),
        ]
        offline_filter = admin_pb.ListNodesRequest(status="offline")
        assert manager_rpc(certs, port, "admin", "list_nodes", offline_filter).nodes == []
    finally:
        assert mgr.stop() == 0


def test_no_mass_offline_after_restart(tmp_path: Path, certs: Path, db_url: str) -> None:
    grace = 3.0
    cfg = write_manager_config(tmp_path / "m.toml", FAST_SWEEP)
    args = ["--config", str(cfg)]
    mgr = start_manager(tmp_path, certs, db_url=db_url, grace=grace, extra_args=args)
    try:
        for node_id in ("node-a", "node-b"):
            register(certs, mgr.grpc_port, node_id)
    finally:
        assert mgr.stop() == 0
    # While the Manager is down, every node's grace period runs out.
    down_since = time.time()
    wait_until(lambda: time.time() > down_since + grace + 0.5, timeout=grace + 5, what="time")

    mgr = start_manager(
        tmp_path, certs, db_url=db_url, grace=grace, extra_args=args, log_name="manager2.log"
    )
    ready_at = time.time()
    try:
        port = mgr.grpc_port
        # Right after start-up nothing is declared offline (the sweeper runs every 0.2 s).
        wait_until(lambda: "restart guard" in mgr.output(), timeout=5, what="guard log")
        assert statuses(certs, port) == {"node-a": "online", "node-b": "online"}

        # A node that heartbeats during the guard stays online; the silent one goes
        # offline only once a full grace period has passed since the Manager started.
        def b_offline_while_a_beats() -> bool:
            heartbeat(certs, port, "node-a")
            return statuses(certs, port)["node-b"] == "offline"

        wait_until(b_offline_while_a_beats, timeout=15, what="node-b offline")
        assert time.time() - ready_at >= grace - 0.5
        assert statuses(certs, port)["node-a"] == "online"
        assert node(certs, port, "node-b").events[0].reason.startswith("no heartbeat for ")
    finally:
        assert mgr.stop() == 0
