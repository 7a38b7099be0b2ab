"""ListNodes and ListAgents against GetNode, on both backends, and freshness.

The list views are built from raw rows into protobuf (upb) replies, GetNode from the
store's models into betterproto ones: every field of every listed node and agent must
equal what GetNode says about it, filters and order included. And whatever changes a
node — registration, an agent sync, going offline, removal — shows in the very next list.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from grpclib.const import Status
from harness import wait_until
from harness.manager import manager_rpc, manager_rpc_error, start_manager, write_manager_config

from schema import admin_pb, manager_pb

FAST = {"liveness": {"sweep_interval": 0.2}, "heartbeats": {"flush_interval": 0.2}}


def _register(certs: Path, port: int, node_id: str, labels: dict[str, str], interval: int) -> None:
    manager_rpc(
        certs,
        port,
        node_id,
        "register_node",
        manager_pb.RegisterNodeRequest(
            node_id=node_id,
            hostname=f"{node_id}.example.net",
            ip="10.0.0.7",
            os="linux",
            arch="arm64",
            labels=labels,
            daemon_version="1.2.3",
            agent_version="0.9",
            daemon_address="127.0.0.1:1",
            heartbeat_interval_seconds=interval,
            instance_id=f"{node_id}-1",
        ),
    )


def _sync(certs: Path, port: int, node_id: str, agents: dict[str, str]) -> None:
    manager_rpc(
        certs,
        port,
        node_id,
        "sync_agent_states",
        manager_pb.SyncAgentStatesRequest(
            node_id=node_id,
            full=True,
            states=[
                manager_pb.AgentState(
                    agent_id=agent_id,
                    status=status,
                    pid=4000 + i,
                    last_heartbeat=int(time.time()) - i,
                    type="worker",
                    version=f"v{i}",
                    start_time=int(time.time()) - 60,
                    restart_count=i,
                    status_reason="exit 3" if status == "FATAL" else "",
                    config_hash=f"h{i}",
                )
                for i, (agent_id, status) in enumerate(agents.items())
            ],
        ),
    )


def _admin(certs: Path, port: int, method: str, request: Any) -> Any:
    return manager_rpc(certs, port, "admin", method, request)


def _nodes(certs: Path, port: int, **kw: Any) -> list[Any]:
    return list(_admin(certs, port, "list_nodes", admin_pb.ListNodesRequest(**kw)).nodes)


def _agents(certs: Path, port: int, **kw: Any) -> list[Any]:
    return list(_admin(certs, port, "list_agents", admin_pb.ListAgentsRequest(**kw)).agents)


def test_list_views_match_get_node_and_show_every_change(
    tmp_path: Path, certs: Path, db_url: str
) -> None:
    cfg = write_manager_config(tmp_path / "m.toml", FAST)
    mgr = start_manager(tmp_path, certs, db_url=db_url, extra_args=["--config", str(cfg)])
    try:
        port = mgr.grpc_port
        _register(certs, port, "node-b", {"env": "prod", "role": "db"}, 30)
        _register(certs, port, "node-a", {"env": "prod", "role": "web"}, 30)
        _sync(certs, port, "node-a", {"web-2": "RUNNING", "web-1": "FATAL", "Web-0": "RUNNING"})
        _sync(certs, port, "node-b", {"pg": "RUNNING"})

        def check_against_get_node() -> None:
            listed = _nodes(certs, port)
            agents = _agents(certs, port)
            assert [n.node_id for n in listed] == sorted(n.node_id for n in listed)
            expected_agents = []
            for n in listed:
                got = _admin(certs, port, "get_node", admin_pb.GetNodeRequest(node_id=n.node_id))
                assert n == got.node, n.node_id  # every field, agent_count included
                assert n.agent_count == len(got.agents)
                expected_agents += got.agents
            assert agents == expected_agents  # same fields, (node, agent) order

        check_against_get_node()
        listed = _nodes(certs, port)
        assert [(n.node_id, n.agent_count, n.labels) for n in listed] == [
            ("node-a", 3, {"env": "prod", "role": "web"}),
            ("node-b", 1, {"env": "prod", "role": "db"}),
        ]
        a = listed[0]
        assert (a.hostname, a.ip, a.os, a.arch, a.daemon_version, a.agent_version) == (
            "node-a.example.net", "10.0.0.7", "linux", "arm64", "1.2.3", "0.9",
        )  # fmt: skip
        assert a.status == "online" and a.heartbeat_interval_seconds == 30
        assert abs(a.last_heartbeat - time.time()) < 60 and a.registered_at > 0
        assert [x.id for x in _agents(certs, port, node_id="node-a")] == ["Web-0", "web-1", "web-2"]
        assert [x.id for x in _agents(certs, port, status="fatal")] == ["web-1"]
        assert [x.node_status for x in _agents(certs, port)] == ["online"] * 4
        assert [n.node_id for n in _nodes(certs, port, labels={"role": "db"})] == ["node-b"]
        assert _nodes(certs, port, labels={"role": "db", "env": "dev"}) == []
        assert _nodes(certs, port, status="offline") == []
        status, _ = manager_rpc_error(
            certs, port, "admin", "list_agents", admin_pb.ListAgentsRequest(node_id="node-z")
        )
        assert status == Status.NOT_FOUND

        # Each change is in the next list, with no wait.
        _register(certs, port, "node-c", {}, 1)  # 1 s heartbeats: offline a few s later
        assert [(n.node_id, n.agent_count, n.labels) for n in _nodes(certs, port)][2] == (
            "node-c", 0, {},
        )  # fmt: skip
        _sync(certs, port, "node-c", {"cron": "STOPPED"})
        assert [n.agent_count for n in _nodes(certs, port)] == [3, 1, 1]
        listed_agents = [(x.node_id, x.id, x.status) for x in _agents(certs, port)]
        assert ("node-c", "cron", "STOPPED") in listed_agents
        _sync(certs, port, "node-a", {"web-1": "RUNNING"})  # a full sync drops two agents
        assert [n.agent_count for n in _nodes(certs, port)] == [1, 1, 1]
        assert [x.status for x in _agents(certs, port, node_id="node-a")] == ["RUNNING"]
        # Silent nodes go offline (the sweep records it); the list shows it at once.
        wait_until(
            lambda: (
                _admin(
                    certs, port, "get_node", admin_pb.GetNodeRequest(node_id="node-c")
                ).node.status
                == "offline"
            ),
            timeout=15,
            what="node-c offline",
        )
        assert "node-c" in [n.node_id for n in _nodes(certs, port, status="offline")]
        assert {x.node_status for x in _agents(certs, port, node_id="node-c")} == {"offline"}
        check_against_get_node()
        _admin(certs, port, "remove_node", admin_pb.RemoveNodeRequest(node_id="node-c", force=True))
        assert "node-c" not in [n.node_id for n in _nodes(certs, port)]
        assert "node-c" not in {x.node_id for x in _agents(certs, port)}
    finally:
        assert mgr.stop() == 0
