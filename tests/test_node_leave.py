"""A clean stop says goodbye (issue 13, item 3): a Daemon stopped cleanly shows
``stopped`` at once; a crash still goes through the liveness grace."""

from __future__ import annotations

import time
from pathlib import Path

from harness import wait_until
from harness.daemon import start_daemon
from harness.manager import manager_rpc, start_manager

from schema import admin_pb, manager_pb


def _node(certs: Path, port: int, node_id: str) -> admin_pb.GetNodeResponse:
    reply: admin_pb.GetNodeResponse = manager_rpc(
        certs, port, "admin", "get_node", admin_pb.GetNodeRequest(node_id=node_id)
    )
    return reply


def test_leave_stops_the_node_at_once_and_a_heartbeat_brings_it_back(
    tmp_path: Path, certs: Path
) -> None:
    mgr = start_manager(tmp_path, certs)
    try:
        port = mgr.grpc_port

        def call(method: str, request: object) -> object:
            return manager_rpc(certs, port, "node-a", method, request)

        call(
            "register_node",
            manager_pb.RegisterNodeRequest(
                node_id="node-a",
                daemon_address="127.0.0.1:1",
                heartbeat_interval_seconds=60,
                instance_id="i-1",
            ),
        )

        def heartbeat() -> None:
            call(
                "heartbeat",
                manager_pb.HeartbeatRequest(
                    node_id="node-a", timestamp=int(time.time()), instance_id="i-1"
                ),
            )

        heartbeat()
        wait_until(
            lambda: _node(certs, port, "node-a").node.status == "online", what="node-a online"
        )
        # A late goodbye of an older Daemon instance changes nothing.
        stale = call(
            "leave", manager_pb.LeaveRequest(node_id="node-a", instance_id="i-0", reason="old")
        )
        assert isinstance(stale, manager_pb.LeaveResponse) and stale.message == "nothing to do"
        assert _node(certs, port, "node-a").node.status == "online"

        heartbeat()  # pending in the buffer: must not bring the node back after it left
        reply = call(
            "leave",
            manager_pb.LeaveRequest(
                node_id="node-a", instance_id="i-1", reason="daemon shut down (SIGTERM)"
            ),
        )
        assert isinstance(reply, manager_pb.LeaveResponse) and reply.success
        got = _node(certs, port, "node-a")
        assert got.node.status == "stopped"  # at once, not after the grace
        assert got.events[0].new_status == "stopped"
        assert got.events[0].reason == "daemon shut down (SIGTERM)"
        time.sleep(2.5)  # more than a heartbeat flush: the dropped heartbeat stays dropped
        assert _node(certs, port, "node-a").node.status == "stopped"
        listed = manager_rpc(
            certs, port, "admin", "list_nodes", admin_pb.ListNodesRequest(status="stopped")
        )
        assert [n.node_id for n in listed.nodes] == ["node-a"]

        heartbeat()  # the Daemon is back
        wait_until(lambda: _node(certs, port, "node-a").node.status == "online", what="back online")
        assert _node(certs, port, "node-a").events[0].reason == "heartbeat resumed"
    finally:
        mgr.stop()


def test_a_clean_daemon_stop_shows_stopped_at_once_and_a_crash_waits_for_the_grace(
    tmp_path: Path, certs: Path
) -> None:
    mgr = start_manager(tmp_path, certs)
    clean = start_daemon(tmp_path, certs, node_id="node-a", manager_port=mgr.grpc_port)
    crashed = start_daemon(tmp_path, certs, node_id="node-b", manager_port=mgr.grpc_port)
    try:
        port = mgr.grpc_port

        def all_online() -> bool:
            return all(_node(certs, port, n).node.status == "online" for n in ("node-a", "node-b"))

        wait_until(all_online, timeout=60, what="both nodes online")
        assert clean.stop() == 0
        # Said before the process exited: no waiting for a grace period.
        got = _node(certs, port, "node-a")
        assert got.node.status == "stopped", got.node.status
        assert got.events[0].reason == "daemon shut down (SIGTERM)"
        assert "told the Manager at" in clean.log_path.read_text()

        crashed.kill()
        killed_at = time.monotonic()
        assert _node(certs, port, "node-b").node.status == "online"  # no goodbye: grace
        wait_until(
            lambda: _node(certs, port, "node-b").node.status == "offline",
            timeout=60,
            what="node-b offline after its grace",
        )
        # Heartbeats every second, grace three of them: not before ~3 s.
        assert time.monotonic() - killed_at > 2.0
        assert _node(certs, port, "node-a").node.status == "stopped"
    finally:
        clean.stop()
        crashed.stop()
        mgr.stop()
