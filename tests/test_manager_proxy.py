"""Admin calls proxied to a real fleet-daemon through the Manager's DaemonClientPool."""

from __future__ import annotations

import json
from pathlib import Path

from grpclib.const import Status
from harness import wait_until
from harness.daemon import agent, cleanup_socket_dir, start_daemon
from harness.manager import manager_rpc, manager_rpc_error, start_manager

from schema import admin_pb


def admin(certs: Path, port: int, method: str, request: object) -> object:
    return manager_rpc(certs, port, "admin", method, request)


def synced(certs: Path, port: int) -> dict[str, str]:
    reply = admin(certs, port, "list_agents", admin_pb.ListAgentsRequest())
    return {f"{a.node_id}/{a.id}": a.status for a in reply.agents}  # type: ignore[attr-defined]


def test_proxy_to_real_daemon(tmp_path: Path, certs: Path, db_url: str) -> None:
    mgr = start_manager(tmp_path, certs, db_url=db_url)
    port = mgr.grpc_port
    daemons = []
    try:
        d = start_daemon(
            tmp_path, certs, node_id="node-a", manager_port=port, agents=[agent("web", "sleeper")]
        )
        daemons.append(d)
        wait_until(
            lambda: synced(certs, port).get("node-a/web") == "RUNNING",
            timeout=20,
            what="web synced as RUNNING",
        )
        live = admin(certs, port, "list_agents", admin_pb.ListAgentsRequest(live=True))
        assert [(a.node_id, a.id, a.status) for a in live.agents] == [  # type: ignore[attr-defined]
            ("node-a", "web", "RUNNING")
        ]
        assert live.errors == []  # type: ignore[attr-defined]

        # The agent id is unique in the fleet: no node needed.
        stopped = admin(
            certs,
            port,
            "operate_agent",
            admin_pb.OperateAgentRequest(agent_id="web", operation="stop"),
        )
        assert stopped.success and stopped.node_id == "node-a"  # type: ignore[attr-defined]
        wait_until(lambda: synced(certs, port)["node-a/web"] == "STOPPED", what="STOPPED synced")
        started = admin(
            certs,
            port,
            "operate_agent",
            admin_pb.OperateAgentRequest(node_id="node-a", agent_id="web", operation="start"),
        )
        assert started.success, started.error_message  # type: ignore[attr-defined]

        metrics = admin(
            certs,
            port,
            "get_agent_metrics",
            admin_pb.GetAgentMetricsRequest(agent_id="web", since_seconds=60),
        )
        assert metrics.node_id == "node-a" and metrics.agent_id == "web"  # type: ignore[attr-defined]
        pushed = admin(
            certs,
            port,
            "push_update",
            admin_pb.PushUpdateRequest(agent_id="web", config_json=json.dumps({"greeting": "hi"})),
        )
        assert pushed.result.success, pushed.result.error_message  # type: ignore[attr-defined]
        config = admin(
            certs, port, "get_agent_config", admin_pb.GetAgentConfigRequest(agent_id="web")
        )
        assert json.loads(config.config.config_json) == {"greeting": "hi"}  # type: ignore[attr-defined]
        # The Daemon's own errors come back with their status and the node named.
        status, message = manager_rpc_error(
            certs,
            port,
            "admin",
            "operate_agent",
            admin_pb.OperateAgentRequest(node_id="node-a", agent_id="ghost", operation="start"),
        )
        assert status == Status.NOT_FOUND and "node-a" in message

        # The Daemon restarts on the same port: the pool reconnects by itself.
        d.stop()
        daemons.remove(d)
        d = d.restart()
        daemons.append(d)
        wait_until(
            lambda: synced(certs, port).get("node-a/web") == "RUNNING", timeout=20, what="resync"
        )
        again = admin(
            certs,
            port,
            "operate_agent",
            admin_pb.OperateAgentRequest(agent_id="web", operation="restart"),
        )
        assert again.success, again.error_message  # type: ignore[attr-defined]
        assert "Ready -> Idle (connection lost)" in mgr.output() or "-> Idle" in mgr.output()

        # Another node's Daemon now answers at node-a's address: refused by identity.
        daemon_port = d.grpc_port
        d.stop()
        daemons.remove(d)
        impostor = start_daemon(
            tmp_path / "impostor",
            certs,
            node_id="node-b",
            manager_port=port,
            config={"grpc": {"listen": f"127.0.0.1:{daemon_port}"}},
        )
        daemons.append(impostor)
        status, message = manager_rpc_error(
            certs,
            port,
            "admin",
            "operate_agent",
            admin_pb.OperateAgentRequest(node_id="node-a", agent_id="web", operation="stop"),
        )
        assert status == Status.UNAVAILABLE
        assert "node-a" in message and "node/node-b" in message, message
    finally:
        for proc in daemons:
            proc.stop()
            cleanup_socket_dir(proc)
        assert mgr.stop() == 0
