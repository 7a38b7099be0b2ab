"""The wire contract: generated code is current, the fast codecs are active, both
generations (betterproto and protobuf/upb) read each other's bytes, and the seed's messages
and fields are all there."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import REPO

import schema
from schema import (
    admin_pb,
    admin_pb2,
    daemon_pb,
    daemon_pb2,
    manager_pb,
    manager_pb2,
    rust_codec_active,
)


def test_generated_code_matches_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "genproto.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_stale_generated_code_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("genproto", REPO / "tools" / "genproto.py")
    assert spec and spec.loader
    genproto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(genproto)
    committed = tmp_path / "gen"
    genproto.generate(committed)
    assert genproto.stale_files(committed) == []
    target = committed / "fleet" / "manager" / "v1" / "__init__.py"
    target.write_text(target.read_text() + "\n# hand edit\n")
    assert genproto.stale_files(committed) == ["fleet/manager/v1/__init__.py"]
    # The protobuf generation is checked the same way, its type stubs too.
    for name in ("pb2/fleet/admin/v1/admin_pb2.py", "pb2/fleet/daemon/v1/daemon_pb2.pyi"):
        (committed / name).write_text((committed / name).read_text() + "\n# hand edit\n")
    (committed / "pb2/fleet/manager/v1/manager_grpc.py").unlink()
    assert genproto.stale_files(committed) == [
        "pb2/fleet/manager/v1/manager_grpc.py",
        "fleet/manager/v1/__init__.py",
        "pb2/fleet/admin/v1/admin_pb2.py",
        "pb2/fleet/daemon/v1/daemon_pb2.pyi",
    ]


def test_protobuf_generation_uses_upb_and_the_schema_package() -> None:
    """The _pb2 modules import each other inside ``schema`` (not a top-level ``fleet``) and
    run on the compiled upb runtime, which is what makes them worth having."""
    from google.protobuf.internal import api_implementation

    assert api_implementation.Type() == "upb"
    assert schema.admin_grpc.AdminServiceStub.__module__.startswith("schema.gen.pb2.")
    point = schema.daemon_pb2.ResourceDataPoint
    assert (
        admin_pb2.GetAgentMetricsResponse.DESCRIPTOR.fields_by_name["data_points"].message_type
        is point.DESCRIPTOR
    )
    assert "fleet" not in sys.modules


def test_betterproto_and_upb_read_each_others_bytes() -> None:
    """Both generations are one wire contract: every field survives either way."""
    bp = admin_pb.ListNodesResponse(
        nodes=[
            admin_pb.Node(
                node_id=f"node-{i}",
                hostname="héllo ☃",
                ip="10.0.0.1",
                os="linux",
                arch="x86_64",
                labels={"env": "prod", "rack": f"r{i}"} if i else {},
                daemon_version="0.1.0",
                agent_version="0.1.0",
                daemon_address="10.0.0.1:50052",
                status="online",
                last_heartbeat=1_800_000_000 + i,
                registered_at=1_700_000_000,
                updated_at=1_800_000_001,
                status_since=-5,
                heartbeat_interval_seconds=10,
                agent_count=2**31 - 1,
            )
            for i in range(3)
        ]
    )
    upb = admin_pb2.ListNodesResponse.FromString(bytes(bp))
    assert [n.node_id for n in upb.nodes] == ["node-0", "node-1", "node-2"]
    for want, got in zip(bp.nodes, upb.nodes, strict=True):
        for field in admin_pb2.Node.DESCRIPTOR.fields:
            value = getattr(got, field.name)
            assert (dict(value) if field.name == "labels" else value) == getattr(
                want, field.name
            ), field.name
    assert admin_pb.ListNodesResponse().parse(upb.SerializeToString()) == bp

    points = admin_pb2.GetAgentMetricsResponse(
        node_id="n", agent_id="a", data_points=[{"timestamp": 5, "cpu": 0.1, "open_files": 7}]
    )
    back = admin_pb.GetAgentMetricsResponse().parse(points.SerializeToString())
    assert back.data_points[0].cpu == 0.1 and back.data_points[0].open_files == 7

    # What a Daemon sends (betterproto) is what the Manager decodes (upb).
    report = manager_pb.ReportMetricsRequest(
        node_id="node-a",
        metrics=[
            manager_pb.MetricData(type="cpu", timestamp=1_800_000_000, values={"user": 0.25}),
            manager_pb.MetricData(type="disk", timestamp=1, values={"/": 1e12, "nan?": -0.0}),
        ],
    )
    decoded = manager_pb2.ReportMetricsRequest.FromString(bytes(report))
    assert decoded.node_id == "node-a"
    assert [(m.type, m.timestamp, dict(m.values)) for m in decoded.metrics] == [
        ("cpu", 1_800_000_000, {"user": 0.25}),
        ("disk", 1, {"/": 1e12, "nan?": -0.0}),
    ]
    # A Daemon's sync (betterproto), as the Manager decodes it (upb).
    sync = manager_pb.SyncAgentStatesRequest(
        node_id="node-a",
        full=True,
        states=[
            manager_pb.AgentState(
                agent_id="web-1", status="RUNNING", pid=42, last_heartbeat=1_800_000_000,
                type="web", version="1.0", start_time=1_799_999_000, restart_count=3,
                status_reason="ok", config_hash="h" * 64, spec="web", spec_revision=7,
            )
        ],
        specs=[manager_pb.SpecState(name="web", revision=7, status="applied", reason="r")],
    )  # fmt: skip
    got = manager_pb2.SyncAgentStatesRequest.FromString(bytes(sync))
    assert (got.node_id, got.full, len(got.states), len(got.specs)) == ("node-a", True, 1, 1)
    state = sync.states[0]
    for field in dataclasses.fields(manager_pb.AgentState):
        assert getattr(got.states[0], field.name) == getattr(state, field.name), field.name
    for field in dataclasses.fields(manager_pb.SpecState):
        assert getattr(got.specs[0], field.name) == getattr(sync.specs[0], field.name), field.name
    # An agent's metrics (the SDK: betterproto), as the Daemon's agent socket decodes them.
    metrics = daemon_pb.MetricsRequest(
        agent_id="a", token="t",
        metrics=[daemon_pb.AgentMetric(name="q", value=1.5, timestamp=9, labels={"k": "v"})],
    )  # fmt: skip
    read = daemon_pb2.MetricsRequest.FromString(bytes(metrics))
    assert (read.agent_id, read.token) == ("a", "t")
    assert [(m.name, m.value, m.timestamp, dict(m.labels)) for m in read.metrics] == [
        ("q", 1.5, 9, {"k": "v"})
    ]


def test_rust_codec_is_active() -> None:
    assert rust_codec_active(), "betterproto-rust-codec is not installed or not patched in"
    msg = manager_pb.ReportMetricsRequest(
        node_id="n1",
        metrics=[manager_pb.MetricData(type="cpu", timestamp=1_700_000_000, values={"a": 1.5})],
    )
    assert manager_pb.ReportMetricsRequest().parse(bytes(msg)) == msg


def _fields(message: Any) -> dict[str, int]:
    return {name: meta.number for name, meta in message._betterproto.meta_by_field_name.items()}


def test_seed_messages_keep_their_fields() -> None:
    """Every message and field of the seed contract exists with its seed field number."""
    seed = {
        manager_pb.RegisterNodeRequest: [
            "node_id",
            "hostname",
            "ip",
            "os",
            "arch",
            "labels",
            "daemon_version",
            "agent_version",
        ],
        manager_pb.RegisterNodeResponse: ["success", "message"],
        manager_pb.HeartbeatRequest: ["node_id", "timestamp"],
        manager_pb.HeartbeatResponse: ["success", "message"],
        manager_pb.ReportMetricsRequest: ["node_id", "metrics"],
        manager_pb.MetricData: ["type", "timestamp", "values"],
        manager_pb.ReportMetricsResponse: ["success", "message"],
        daemon_pb.AgentInfo: [
            "id",
            "type",
            "status",
            "pid",
            "version",
            "start_time",
            "restart_count",
            "last_heartbeat",
        ],
        daemon_pb.AgentOperationRequest: ["agent_id", "operation"],
        daemon_pb.AgentOperationResponse: ["success", "error_message"],
        daemon_pb.AgentMetricsRequest: ["agent_id", "duration_seconds"],
        daemon_pb.AgentMetricsResponse: ["agent_id", "data_points"],
        daemon_pb.ResourceDataPoint: [
            "timestamp",
            "cpu",
            "memory_rss",
            "memory_vms",
            "disk_read_bytes",
            "disk_write_bytes",
            "open_files",
        ],
        daemon_pb.SyncAgentStatesRequest: ["node_id", "states"],
        daemon_pb.AgentState: ["agent_id", "status", "pid", "last_heartbeat"],
        daemon_pb.SyncAgentStatesResponse: ["success", "message"],
        daemon_pb.ListAgentsResponse: ["agents"],
    }
    for message, names in seed.items():
        fields = _fields(message)
        assert [fields.get(n) for n in names] == list(range(1, len(names) + 1)), message.__name__


def test_seed_services_have_every_rpc() -> None:
    manager_rpcs = {p.rsplit("/", 1)[1] for p in manager_pb.ManagerServiceBase().__mapping__()}
    assert {"RegisterNode", "Heartbeat", "ReportMetrics"} <= manager_rpcs
    daemon_rpcs = {p.rsplit("/", 1)[1] for p in daemon_pb.DaemonServiceBase().__mapping__()}
    assert {
        "Register",
        "Heartbeat",
        "ReportMetrics",
        "GetConfig",
        "PushUpdate",
        "ListAgents",
        "OperateAgent",
        "GetAgentMetrics",
        "SyncAgentStates",
    } <= daemon_rpcs
