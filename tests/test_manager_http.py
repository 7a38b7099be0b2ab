"""The Manager's HTTP side (/healthz, /readyz, /metrics) and standard gRPC services."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest
from harness import wait_until
from harness.manager import admin_channel, manager_rpc, start_manager

from schema import manager_pb


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


def test_health_ready_and_metrics(tmp_path: Path, certs: Path, db_url: str) -> None:
    mgr = start_manager(tmp_path, certs, db_url=db_url)
    try:
        base = mgr.http_url
        assert get(f"{base}/healthz")[0] == 200
        status, _, body = get(f"{base}/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        manager_rpc(
            certs,
            mgr.grpc_port,
            "node-a",
            "register_node",
            manager_pb.RegisterNodeRequest(node_id="node-a", daemon_address="127.0.0.1:1"),
        )
        manager_rpc(
            certs,
            mgr.grpc_port,
            "node-a",
            "report_metrics",
            manager_pb.ReportMetricsRequest(
                node_id="node-a",
                metrics=[
                    manager_pb.MetricData(type="cpu", timestamp=int(time.time()), values={"u": 1})
                ]
                * 3,
            ),
        )
        manager_rpc(
            certs,
            mgr.grpc_port,
            "node-a",
            "heartbeat",
            manager_pb.HeartbeatRequest(node_id="node-a", timestamp=int(time.time())),
        )
        manager_rpc(
            certs,
            mgr.grpc_port,
            "node-a",
            "sync_agent_states",
            manager_pb.SyncAgentStatesRequest(
                node_id="node-a", states=[manager_pb.AgentState(agent_id="w", status="RUNNING")]
            ),
        )
        # The heartbeat was acknowledged from the buffer: wait for its flush.
        wait_until(
            lambda: (
                sample(get(f"{base}/metrics")[2], "fleet_manager_heartbeat_flush_size_count") == 1
            ),
            timeout=5,
            what="heartbeat flush",
        )
        status, ctype, text = get(f"{base}/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert sample(text, "fleet_manager_nodes", status="online") == 1
        assert sample(text, "fleet_manager_nodes", status="offline") == 0
        assert sample(text, "fleet_manager_agents", status="RUNNING") == 1
        assert sample(text, "fleet_manager_rpc_total", method="RegisterNode", code="OK") == 1
        assert sample(text, "fleet_manager_rpc_duration_seconds_count", method="Heartbeat") == 1
        # Three copies of one sample (same node, type, timestamp) are stored once.
        assert sample(text, "fleet_manager_metric_rows_written_total") == 1
        assert sample(text, "fleet_manager_heartbeat_flush_size_count") == 1
        assert sample(text, "fleet_manager_daemon_connections", state="ready") == 0
    finally:
        assert mgr.stop() == 0


def test_grpc_health_and_reflection(tmp_path: Path, certs: Path) -> None:
    mgr = start_manager(tmp_path, certs, http_port=None)
    try:
        assert mgr.http_port is None  # the HTTP side can be disabled

        async def run() -> tuple[int, list[str]]:
            channel = admin_channel(certs, mgr.grpc_port)
            try:
                health = await HealthStub(channel).Check(HealthCheckRequest(), timeout=5)
                async with ServerReflectionStub(channel).ServerReflectionInfo.open() as stream:
                    await stream.send_message(ServerReflectionRequest(list_services=""))
                    reply = await stream.recv_message()
                    await stream.send_message(
                        ServerReflectionRequest(
                            file_containing_symbol="fleet.manager.v1.ManagerService"
                        ),
                        end=True,
                    )
                    described = await stream.recv_message()
                    assert described is not None
                    assert described.file_descriptor_response.file_descriptor_proto
                assert reply is not None
                names = [s.name for s in reply.list_services_response.service]
                return health.status, names
            finally:
                channel.close()

        status, names = asyncio.run(run())
        assert status == HealthCheckResponse.SERVING
        assert "fleet.manager.v1.ManagerService" in names
        assert "fleet.admin.v1.AdminService" in names
        assert "grpc.health.v1.Health" in names
    finally:
        assert mgr.stop() == 0
