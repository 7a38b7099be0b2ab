"""AdminService views, filters and agent resolution; SyncAgentStates; duplicate Daemons."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from harness import free_port
from harness.manager import (
    ManagerProc,
    manager_rpc,
    manager_rpc_error,
    node_channel,
    start_manager,
    write_manager_config,
)

from schema import admin_pb, manager_pb


@pytest.fixture
def manager(tmp_path: Path, certs: Path, db_url: str) -> Iterator[ManagerProc]:
    # Unreachable Daemons fail fast here: two connection attempts, short backoff.
    cfg = write_manager_config(
        tmp_path / "m.toml",
        {"daemons": {"connect_attempts": 2, "backoff_initial": 0.1, "connect_timeout": 1}},
    )
    proc = start_manager(tmp_path, certs, db_url=db_url, extra_args=["--config", str(cfg)])
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


def register(
    certs: Path, port: int, node_id: str, labels: dict[str, str] | None = None, **kw: Any
) -> None:
    manager_rpc(
        certs,
        port,
        node_id,
        "register_node",
        manager_pb.RegisterNodeRequest(
            node_id=node_id,
            hostname=node_id,
            labels=labels or {},
            daemon_address=str(kw.pop("daemon_address", f"127.0.0.1:{free_port()}")),
            heartbeat_interval_seconds=10,
            instance_id=str(kw.pop("instance_id", f"{node_id}-1")),
        ),
    )


def sync(certs: Path, port: int, node_id: str, agents: dict[str, str], full: bool = True) -> None:
    manager_rpc(
        certs,
        port,
        node_id,
        "sync_agent_states",
        manager_pb.SyncAgentStatesRequest(
            node_id=node_id,
            full=full,
            states=[
                manager_pb.AgentState(agent_id=a, status=s, pid=100, type="worker")
                for a, s in agents.items()
            ],
        ),
    )


def admin(certs: Path, port: int, method: str, request: Any) -> Any:
    return manager_rpc(certs, port, "admin", method, request)


def agents_of(certs: Path, port: int, **kw: Any) -> dict[str, str]:
    reply = admin(certs, port, "list_agents", admin_pb.ListAgentsRequest(**kw))
    return {f"{a.node_id}/{a.id}": a.status for a in reply.agents}


def test_list_nodes_filters(manager: ManagerProc, certs: Path) -> None:
    port = manager.grpc_port
    register(certs, port, "node-a", {"env": "prod", "zone": "a"})
    register(certs, port, "node-b", {"env": "dev"})
    register(certs, port, "node-c", {"env": "prod", "zone": "b"})
    sync(certs, port, "node-a", {"web": "RUNNING", "db": "RUNNING"})

    def ids(**kw: Any) -> list[str]:
        reply = admin(certs, port, "list_nodes", admin_pb.ListNodesRequest(**kw))
        return [n.node_id for n in reply.nodes]

    assert ids() == ["node-a", "node-b", "node-c"]
    assert ids(labels={"env": "prod"}) == ["node-a", "node-c"]
    assert ids(labels={"env": "prod", "zone": "b"}) == ["node-c"]
    assert ids(labels={"env": "staging"}) == []
    assert ids(status="online") == ["node-a", "node-b", "node-c"]
    assert ids(status="offline") == []
    nodes = admin(certs, port, "list_nodes", admin_pb.ListNodesRequest()).nodes
    assert [n.agent_count for n in nodes] == [2, 0, 0]
    status, message = manager_rpc_error(
        certs, port, "admin", "list_nodes", admin_pb.ListNodesRequest(status="sleepy")
    )
    assert status == Status.INVALID_ARGUMENT and "sleepy" in message
    status, _ = manager_rpc_error(
        certs, port, "admin", "get_node", admin_pb.GetNodeRequest(node_id="node-z")
    )
    assert status == Status.NOT_FOUND
    got = admin(certs, port, "get_node", admin_pb.GetNodeRequest(node_id="node-a"))
    assert [a.id for a in got.agents] == ["db", "web"]
    assert got.events[0].reason == "registered"


def test_sync_agent_states_full_and_partial(manager: ManagerProc, certs: Path) -> None:
    port = manager.grpc_port
    register(certs, port, "node-a")
    sync(certs, port, "node-a", {"web": "RUNNING", "db": "STOPPED"})
    assert agents_of(certs, port) == {"node-a/db": "STOPPED", "node-a/web": "RUNNING"}
    sync(certs, port, "node-a", {"web": "FATAL"}, full=False)  # partial: db kept
    assert agents_of(certs, port) == {"node-a/db": "STOPPED", "node-a/web": "FATAL"}
    assert agents_of(certs, port, status="FATAL") == {"node-a/web": "FATAL"}
    sync(certs, port, "node-a", {"db": "RUNNING"})  # full: web removed
    assert agents_of(certs, port, node_id="node-a") == {"node-a/db": "RUNNING"}

    def refused(states: list[manager_pb.AgentState], node_id: str = "node-a") -> tuple:
        return manager_rpc_error(
            certs,
            port,
            node_id,
            "sync_agent_states",
            manager_pb.SyncAgentStatesRequest(node_id=node_id, states=states),
        )

    status, message = refused([manager_pb.AgentState(agent_id="x", status="DANCING")])
    assert status == Status.INVALID_ARGUMENT and "DANCING" in message
    status, message = refused([manager_pb.AgentState(agent_id="x", status="RUNNING")] * 2)
    assert status == Status.INVALID_ARGUMENT and "twice" in message
    status, message = refused([manager_pb.AgentState(agent_id="../x", status="RUNNING")])
    assert status == Status.INVALID_ARGUMENT and "agent_id" in message
    status, _ = refused([], node_id="node-c")  # never registered
    assert status == Status.NOT_FOUND


def test_agent_resolution(manager: ManagerProc, certs: Path) -> None:
    port = manager.grpc_port
    register(certs, port, "node-a")
    register(certs, port, "node-b")
    sync(certs, port, "node-a", {"web": "RUNNING", "db": "RUNNING"})
    sync(certs, port, "node-b", {"web": "RUNNING"})

    for method, request in (
        ("operate_agent", admin_pb.OperateAgentRequest(agent_id="web", operation="stop")),
        ("get_agent_metrics", admin_pb.GetAgentMetricsRequest(agent_id="web")),
        ("push_update", admin_pb.PushUpdateRequest(agent_id="web", version="2")),
        ("get_agent_config", admin_pb.GetAgentConfigRequest(agent_id="web")),
    ):
        status, message = manager_rpc_error(certs, port, "admin", method, request)
        assert status == Status.FAILED_PRECONDITION, method
        assert "node-a" in message and "node-b" in message
    status, message = manager_rpc_error(
        certs,
        port,
        "admin",
        "operate_agent",
        admin_pb.OperateAgentRequest(agent_id="nope", operation="stop"),
    )
    assert status == Status.NOT_FOUND and "nope" in message
    status, message = manager_rpc_error(
        certs,
        port,
        "admin",
        "operate_agent",
        admin_pb.OperateAgentRequest(agent_id="db", operation="explode"),
    )
    assert status == Status.INVALID_ARGUMENT and "explode" in message
    # Unique agent: resolved to node-a, whose Daemon is not running -> UNAVAILABLE naming it.
    started = time.monotonic()
    status, message = manager_rpc_error(
        certs,
        port,
        "admin",
        "operate_agent",
        admin_pb.OperateAgentRequest(agent_id="db", operation="stop"),
    )
    assert status == Status.UNAVAILABLE and "node-a" in message
    assert time.monotonic() - started < 10
    # Live listing reports the unreachable Daemons per node instead of failing.
    live = admin(certs, port, "list_agents", admin_pb.ListAgentsRequest(live=True))
    assert live.agents == []
    assert {(e.node_id, e.code) for e in live.errors} == {
        ("node-a", "UNAVAILABLE"),
        ("node-b", "UNAVAILABLE"),
    }


def test_duplicate_daemon_instance(manager: ManagerProc, certs: Path) -> None:
    port = manager.grpc_port
    register(certs, port, "node-a", instance_id="first")
    # A restarted Daemon (new instance id) takes over: the newest registration wins.
    register(certs, port, "node-a", instance_id="second")

    def beat(instance: str) -> Any:
        return manager_rpc(
            certs,
            port,
            "node-a",
            "heartbeat",
            manager_pb.HeartbeatRequest(
                node_id="node-a", timestamp=int(time.time()), instance_id=instance
            ),
        )

    assert beat("second").success
    with pytest.raises(GRPCError) as info:
        beat("first")  # the superseded Daemon is still alive
    assert info.value.status == Status.ALREADY_EXISTS
    assert "second" in (info.value.message or "")
    # ... and cannot take the node back while the current instance is alive.
    with pytest.raises(GRPCError) as info:
        register(certs, port, "node-a", instance_id="first")
    assert info.value.status == Status.ALREADY_EXISTS
    assert beat("second").success
    # A brand-new instance (a restart) still takes over.
    register(certs, port, "node-a", instance_id="third")
    assert beat("third").success
    reasons = [
        e.reason
        for e in admin(certs, port, "get_node", admin_pb.GetNodeRequest(node_id="node-a")).events
    ]
    assert any(r.startswith("duplicate daemon: instance first") for r in reasons), reasons
    assert any("second replaced first" in r for r in reasons), reasons


def test_cancelled_calls_do_not_wedge_the_manager(manager: ManagerProc, certs: Path) -> None:
    port = manager.grpc_port
    register(certs, port, "node-a")

    async def storm() -> None:
        channel = node_channel(certs, port, "node-a")
        stub = manager_pb.ManagerServiceStub(channel)
        calls: list[Coroutine[Any, Any, Any]] = []
        for i in range(600):
            timeout = 0.0002 * (i % 100 + 1)
            if i % 3 == 0:
                calls.append(
                    stub.heartbeat(
                        manager_pb.HeartbeatRequest(node_id="node-a", timestamp=int(time.time())),
                        timeout=timeout,
                    )
                )
            else:
                calls.append(
                    stub.sync_agent_states(
                        manager_pb.SyncAgentStatesRequest(
                            node_id="node-a",
                            full=True,
                            states=[
                                manager_pb.AgentState(agent_id=f"a{j}", status="RUNNING")
                                for j in range(i % 7)
                            ],
                        ),
                        timeout=timeout,
                    )
                )
        results = await asyncio.gather(*calls, return_exceptions=True)
        channel.close()
        for r in results:
            if isinstance(r, BaseException):
                assert isinstance(r, GRPCError | StreamTerminatedError | TimeoutError), r

    asyncio.run(storm())
    # Still fully responsive afterwards.
    started = time.monotonic()
    sync(certs, port, "node-a", {"web": "RUNNING"})
    assert agents_of(certs, port) == {"node-a/web": "RUNNING"}
    manager_rpc(
        certs,
        port,
        "node-a",
        "heartbeat",
        manager_pb.HeartbeatRequest(node_id="node-a", timestamp=int(time.time())),
    )
    assert time.monotonic() - started < 5


def test_remove_node(manager: ManagerProc, certs: Path) -> None:
    port = manager.grpc_port
    register(certs, port, "node-a")
    register(certs, port, "node-b")
    sync(certs, port, "node-a", {"web": "RUNNING"})
    status, message = manager_rpc_error(
        certs, port, "admin", "remove_node", admin_pb.RemoveNodeRequest(node_id="node-a")
    )
    assert status == Status.FAILED_PRECONDITION and "online" in message
    reply = admin(
        certs, port, "remove_node", admin_pb.RemoveNodeRequest(node_id="node-a", force=True)
    )
    assert reply.removed
    nodes = admin(certs, port, "list_nodes", admin_pb.ListNodesRequest()).nodes
    assert [n.node_id for n in nodes] == ["node-b"]
    assert agents_of(certs, port) == {}
    assert reply.certificates_revoked
    # Its Daemon, still alive, cannot come back with the removed node's certificate (it
    # would join again with a token: tests/test_manager_enroll.py).
    for method, request in (
        ("heartbeat", manager_pb.HeartbeatRequest(node_id="node-a", timestamp=int(time.time()))),
        ("register_node", manager_pb.RegisterNodeRequest(node_id="node-a")),
    ):
        status, message = manager_rpc_error(certs, port, "node-a", method, request)
        assert status == Status.UNAUTHENTICATED and "revoked" in message, (method, message)
    register(certs, port, "node-b")  # the other node is untouched
    status, _ = manager_rpc_error(
        certs, port, "admin", "remove_node", admin_pb.RemoveNodeRequest(node_id="node-z")
    )
    assert status == Status.NOT_FOUND
