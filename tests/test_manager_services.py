"""ManagerService and AdminService basics against a real fleet-manager (both DB backends)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from harness.manager import ManagerProc, admin_channel, node_channel, start_manager

from common.tls import TLSFiles, client_context
from schema import admin_pb, manager_pb


def register_request(node_id: str, **kw: Any) -> manager_pb.RegisterNodeRequest:
    fields: dict[str, object] = {
        "node_id": node_id,
        "hostname": f"{node_id}.example",
        "ip": "10.0.0.1",
        "os": "linux",
        "arch": "x86_64",
        "labels": {"env": "test"},
        "daemon_version": "0.1.0",
        "daemon_address": "127.0.0.1:1",
        "heartbeat_interval_seconds": 10,
        "instance_id": f"{node_id}-i1",
    }
    fields.update(kw)
    return manager_pb.RegisterNodeRequest(**fields)  # type: ignore[arg-type]


async def as_node(certs: Path, port: int, node_id: str, method: str, request: Any) -> Any:
    channel = node_channel(certs, port, node_id)
    try:
        stub = manager_pb.ManagerServiceStub(channel, timeout=10)
        return await getattr(stub, method)(request)
    finally:
        channel.close()


async def as_admin(certs: Path, port: int, method: str, request: Any) -> Any:
    channel = admin_channel(certs, port)
    try:
        stub = admin_pb.AdminServiceStub(channel, timeout=10)
        return await getattr(stub, method)(request)
    finally:
        channel.close()


def grpc_status(coro: object) -> tuple[Status, str]:
    with pytest.raises(GRPCError) as info:
        asyncio.run(coro)  # type: ignore[arg-type]
    return info.value.status, info.value.message or ""


@pytest.fixture
def manager(tmp_path: Path, certs: Path, db_url: str) -> Iterator[ManagerProc]:
    proc = start_manager(tmp_path, certs, db_url=db_url)
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


def test_register_heartbeat_and_list_nodes(manager: ManagerProc, certs: Path) -> None:
    port = manager.grpc_port
    reply = asyncio.run(as_node(certs, port, "node-a", "register_node", register_request("node-a")))
    assert reply.success
    # Re-registering is idempotent and updates the node.
    asyncio.run(
        as_node(certs, port, "node-a", "register_node", register_request("node-a", os="freebsd"))
    )
    now = int(time.time())
    hb = asyncio.run(
        as_node(
            certs,
            port,
            "node-a",
            "heartbeat",
            manager_pb.HeartbeatRequest(node_id="node-a", timestamp=now, instance_id="node-a-i1"),
        )
    )
    assert hb.success
    nodes = asyncio.run(as_admin(certs, port, "list_nodes", admin_pb.ListNodesRequest())).nodes
    assert [n.node_id for n in nodes] == ["node-a"]
    node = nodes[0]
    assert node.status == "online"
    assert node.os == "freebsd"
    assert node.labels == {"env": "test"}
    assert node.heartbeat_interval_seconds == 10
    assert abs(node.last_heartbeat - now) <= 2


def test_report_metrics_and_query(manager: ManagerProc, certs: Path) -> None:
    port = manager.grpc_port
    asyncio.run(as_node(certs, port, "node-a", "register_node", register_request("node-a")))
    now = int(time.time())
    metrics = [
        manager_pb.MetricData(type="cpu", timestamp=now - i, values={"usage": float(i)})
        for i in range(5)
    ] + [manager_pb.MetricData(type="memory", timestamp=now, values={"used": 1.0})]
    reply = asyncio.run(
        as_node(
            certs,
            port,
            "node-a",
            "report_metrics",
            manager_pb.ReportMetricsRequest(node_id="node-a", metrics=metrics),
        )
    )
    assert reply.success and reply.accepted == 6
    # At-least-once delivery: a resent report is not stored twice.
    again = asyncio.run(
        as_node(
            certs,
            port,
            "node-a",
            "report_metrics",
            manager_pb.ReportMetricsRequest(node_id="node-a", metrics=metrics),
        )
    )
    assert again.success and again.accepted == 0 and "already stored" in again.message
    got = asyncio.run(
        as_admin(
            certs,
            port,
            "query_node_metrics",
            admin_pb.QueryNodeMetricsRequest(node_id="node-a", type="cpu", since_seconds=60),
        )
    )
    assert [m.timestamp for m in got.metrics] == [now - i for i in reversed(range(5))]
    assert got.metrics[-1].values == {"usage": 0.0}
    # Bounds: values that are not finite and oversized batches are refused by name.
    status, message = grpc_status(
        as_node(
            certs,
            port,
            "node-a",
            "report_metrics",
            manager_pb.ReportMetricsRequest(
                node_id="node-a",
                metrics=[
                    manager_pb.MetricData(type="cpu", timestamp=now, values={"x": float("nan")})
                ],
            ),
        )
    )
    assert status == Status.INVALID_ARGUMENT and "finite" in message
    status, message = grpc_status(
        as_node(
            certs,
            port,
            "node-a",
            "report_metrics",
            manager_pb.ReportMetricsRequest(
                node_id="node-a",
                metrics=[manager_pb.MetricData(type="cpu", timestamp=now)] * 1001,
            ),
        )
    )
    assert status == Status.INVALID_ARGUMENT and "1001" in message


def test_impersonation_is_refused_and_changes_nothing(manager: ManagerProc, certs: Path) -> None:
    port = manager.grpc_port
    asyncio.run(as_node(certs, port, "node-b", "register_node", register_request("node-b")))
    before = asyncio.run(
        as_admin(certs, port, "get_node", admin_pb.GetNodeRequest(node_id="node-b"))
    )
    for method, request in (
        ("register_node", register_request("node-b", hostname="evil")),
        ("heartbeat", manager_pb.HeartbeatRequest(node_id="node-b", timestamp=int(time.time()))),
        (
            "report_metrics",
            manager_pb.ReportMetricsRequest(
                node_id="node-b",
                metrics=[manager_pb.MetricData(type="cpu", timestamp=int(time.time()))],
            ),
        ),
        (
            "sync_agent_states",
            manager_pb.SyncAgentStatesRequest(
                node_id="node-b", states=[manager_pb.AgentState(agent_id="x", status="RUNNING")]
            ),
        ),
    ):
        status, message = grpc_status(as_node(certs, port, "node-a", method, request))
        assert status == Status.PERMISSION_DENIED, method
        assert "node-b" in message
    after = asyncio.run(
        as_admin(certs, port, "get_node", admin_pb.GetNodeRequest(node_id="node-b"))
    )
    assert after.node == before.node
    assert after.agents == []
    assert "tried to act as node node-b" in manager.output()
    # Empty node_id is INVALID_ARGUMENT, checked before the identity.
    status, _ = grpc_status(
        as_node(certs, port, "node-a", "heartbeat", manager_pb.HeartbeatRequest(node_id=""))
    )
    assert status == Status.INVALID_ARGUMENT


def test_heartbeat_for_unknown_node_is_not_found(manager: ManagerProc, certs: Path) -> None:
    status, message = grpc_status(
        as_node(
            certs,
            manager.grpc_port,
            "node-c",
            "heartbeat",
            manager_pb.HeartbeatRequest(node_id="node-c", timestamp=int(time.time())),
        )
    )
    assert status == Status.NOT_FOUND and "node-c" in message


def test_roles_are_enforced(manager: ManagerProc, certs: Path) -> None:
    port = manager.grpc_port
    # A node certificate cannot call any admin RPC.
    for method, request in (
        ("list_nodes", admin_pb.ListNodesRequest()),
        ("get_node", admin_pb.GetNodeRequest(node_id="node-a")),
        ("list_agents", admin_pb.ListAgentsRequest()),
        ("operate_agent", admin_pb.OperateAgentRequest(agent_id="a", operation="start")),
        ("get_agent_metrics", admin_pb.GetAgentMetricsRequest(agent_id="a")),
        ("query_node_metrics", admin_pb.QueryNodeMetricsRequest(node_id="node-a")),
        ("push_update", admin_pb.PushUpdateRequest(agent_id="a")),
        ("get_agent_config", admin_pb.GetAgentConfigRequest(agent_id="a")),
        ("remove_node", admin_pb.RemoveNodeRequest(node_id="node-a")),
    ):

        async def call(method: str = method, request: object = request) -> object:
            channel = node_channel(certs, port, "node-a")
            try:
                return await getattr(admin_pb.AdminServiceStub(channel, timeout=10), method)(
                    request
                )
            finally:
                channel.close()

        status, _ = grpc_status(call())
        assert status == Status.PERMISSION_DENIED, method

    # An admin certificate cannot call ManagerService.
    async def admin_registers() -> object:
        channel = admin_channel(certs, port)
        try:
            stub = manager_pb.ManagerServiceStub(channel, timeout=10)
            return await stub.register_node(register_request("admin"))
        finally:
            channel.close()

    status, _ = grpc_status(admin_registers())
    assert status == Status.PERMISSION_DENIED


def _refused(make_channel: Callable[[], Channel]) -> None:
    async def call() -> object:
        channel = make_channel()
        try:
            return await admin_pb.AdminServiceStub(channel, timeout=10).list_nodes(
                admin_pb.ListNodesRequest()
            )
        finally:
            channel.close()

    with pytest.raises((ssl.SSLError, ConnectionError, StreamTerminatedError, GRPCError, OSError)):
        asyncio.run(call())


def test_no_client_cert_or_foreign_ca_cannot_call(
    manager: ManagerProc, certs: Path, other_ca_certs: Path
) -> None:
    port = manager.grpc_port
    no_cert = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    no_cert.check_hostname = False
    no_cert.set_alpn_protocols(["h2"])
    _refused(lambda: Channel("127.0.0.1", port, ssl=no_cert))
    foreign = TLSFiles(other_ca_certs / "admin.crt", other_ca_certs / "admin.key", certs / "ca.crt")
    _refused(lambda: Channel("127.0.0.1", port, ssl=client_context(foreign, expect_role="manager")))
    # Still serving for a legitimate caller afterwards.
    assert asyncio.run(as_admin(certs, port, "list_nodes", admin_pb.ListNodesRequest())).nodes == []
