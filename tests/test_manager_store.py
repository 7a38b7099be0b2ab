"""The Manager's store on both backends: migrations (incl. upgrade), retention, outages."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from harness import wait_until
from harness.manager import (
    admin_channel,
    manager_rpc,
    manager_rpc_error,
    start_manager,
    stored_nodes,
    write_manager_config,
)

from schema import admin_pb, manager_pb


async def _skeleton_database(url: str) -> None:
    """A database as the walking skeleton left it: migration 0001 only, with data."""
    from tortoise.context import TortoiseContext
    from tortoise.migrations.api import migrate

    from manager.store.database import connection_name, tortoise_config

    ctx = TortoiseContext()
    ctx.__enter__()
    try:
        await migrate(config=tortoise_config(url), target="manager.0001_initial")
        conn = ctx.db(connection_name(url))
        pg = url.startswith("postgres")
        marks = ", ".join(f"${i}" if pg else "?" for i in range(1, 16))
        await conn.execute_query(
            "INSERT INTO fleet_node (node_id, hostname, ip, os, arch, labels, daemon_version, "
            "agent_version, daemon_address, heartbeat_interval, instance_id, status, "
            f"registered_at, updated_at, last_heartbeat) VALUES ({marks})",
            [
                "old-node",
                "old-host",
                "10.1.1.1",
                "linux",
                "arm64",
                json.dumps({"env": "legacy"}),
                "0.0.1",
                "",
                "127.0.0.1:1",
                60.0,
                "",
                "online",
                time.time() - 100,
                time.time() - 100,
                time.time() - 100,
            ],
        )
        marks = ", ".join(f"${i}" if pg else "?" for i in range(1, 5))
        stamp = int(time.time()) - 50
        for usage in (12.5, 99.0):  # a resent report stored twice by the skeleton
            await conn.execute_query(
                'INSERT INTO fleet_metric_sample (node_id, type, timestamp, "values") '
                f"VALUES ({marks})",
                ["old-node", "cpu", stamp, json.dumps({"usage": usage})],
            )
    finally:
        await ctx.close_connections()
        ctx.__exit__(None, None, None)


def test_upgrade_from_skeleton_schema(tmp_path: Path, certs: Path, db_url: str) -> None:
    asyncio.run(_skeleton_database(db_url))
    mgr = start_manager(tmp_path, certs, db_url=db_url)
    try:
        assert "applied 0002_liveness_agents_events, 0003_metric_sample_identity" in mgr.output()
        assert "0001_initial" not in mgr.output().split("database migrated")[1].splitlines()[0]
        nodes = manager_rpc(
            certs, mgr.grpc_port, "admin", "list_nodes", admin_pb.ListNodesRequest()
        ).nodes
        assert [(n.node_id, n.hostname, n.labels) for n in nodes] == [
            ("old-node", "old-host", {"env": "legacy"})
        ]
        samples = manager_rpc(
            certs,
            mgr.grpc_port,
            "admin",
            "query_node_metrics",
            admin_pb.QueryNodeMetricsRequest(node_id="old-node"),
        ).metrics
        assert [s.values for s in samples] == [{"usage": 12.5}]  # the duplicate is gone
    finally:
        assert mgr.stop() == 0
    # A second start applies nothing.
    mgr = start_manager(tmp_path, certs, db_url=db_url, log_name="manager2.log")
    try:
        assert "database migrated" not in mgr.output()
    finally:
        assert mgr.stop() == 0


def test_sqlite_runs_in_wal_mode(tmp_path: Path, certs: Path) -> None:
    import sqlite3

    mgr = start_manager(tmp_path, certs)
    try:
        path = mgr.db_url.removeprefix("sqlite://")
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        assert mgr.stop() == 0


def test_metric_retention_deletes_old_samples_in_batches(
    tmp_path: Path, certs: Path, db_url: str
) -> None:
    cfg = write_manager_config(
        tmp_path / "m.toml",
        {"metrics": {"retention": "1h", "retention_interval": "0.3s", "retention_batch": 7}},
    )
    mgr = start_manager(tmp_path, certs, db_url=db_url, extra_args=["--config", str(cfg)])
    try:
        port = mgr.grpc_port
        manager_rpc(
            certs,
            port,
            "node-a",
            "register_node",
            manager_pb.RegisterNodeRequest(node_id="node-a", daemon_address="127.0.0.1:1"),
        )
        now = int(time.time())
        old = [
            manager_pb.MetricData(type="cpu", timestamp=now - 7200 - i, values={"u": 1.0})
            for i in range(40)
        ]
        fresh = [
            manager_pb.MetricData(type="cpu", timestamp=now - i, values={"u": 2.0})
            for i in range(5)
        ]
        manager_rpc(
            certs,
            port,
            "node-a",
            "report_metrics",
            manager_pb.ReportMetricsRequest(node_id="node-a", metrics=old + fresh),
        )

        def remaining() -> int:
            reply = manager_rpc(
                certs,
                port,
                "admin",
                "query_node_metrics",
                admin_pb.QueryNodeMetricsRequest(node_id="node-a", since_seconds=86400),
            )
            return len(reply.metrics)

        wait_until(lambda: remaining() == 5, timeout=15, what="old samples deleted")
        assert "retention: deleted 40 metric samples" in mgr.output()
        text = urllib.request.urlopen(f"{mgr.http_url}/metrics", timeout=5).read().decode()
        assert "fleet_manager_metric_rows_deleted_total 40.0" in text
    finally:
        assert mgr.stop() == 0


def test_database_outage_is_unavailable(tmp_path: Path, certs: Path, db_url: str) -> None:
    if not db_url.startswith("postgres"):
        pytest.skip("needs a database server that can go away (PostgreSQL)")
    from harness.pg import _admin

    mgr = start_manager(tmp_path, certs, db_url=db_url)
    try:
        port = mgr.grpc_port
        manager_rpc(
            certs,
            port,
            "node-a",
            "register_node",
            manager_pb.RegisterNodeRequest(node_id="node-a", daemon_address="127.0.0.1:1"),
        )
        assert stored_nodes(db_url)["node-a"]["status"] == "online"
        name = db_url.rsplit("/", 1)[1]
        base = db_url.rsplit("/", 1)[0] + "/postgres"
        asyncio.run(_admin(base, f'DROP DATABASE "{name}" WITH (FORCE)'))
        status, message = manager_rpc_error(
            certs, port, "admin", "list_nodes", admin_pb.ListNodesRequest()
        )
        assert status == Status.UNAVAILABLE, message
        assert "database unavailable" in message

        # A buffered heartbeat may be acknowledged until the first flush fails; from
        # then on heartbeats wait for a flush and are refused while it cannot commit.
        def heartbeat_refused() -> bool:
            status, _ = manager_rpc_error(
                certs,
                port,
                "node-a",
                "heartbeat",
                manager_pb.HeartbeatRequest(node_id="node-a", timestamp=int(time.time())),
            )
            return status == Status.UNAVAILABLE

        wait_until(heartbeat_refused, timeout=10, what="heartbeat UNAVAILABLE")

        def not_ready() -> bool:
            try:
                urllib.request.urlopen(f"{mgr.http_url}/readyz", timeout=5)
            except urllib.error.HTTPError as exc:
                return exc.code == 503
            return False

        wait_until(not_ready, timeout=10, what="/readyz 503")

        async def health() -> int:
            channel = admin_channel(certs, port)
            try:
                reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=10)
                return reply.status
            finally:
                channel.close()

        assert asyncio.run(health()) == HealthCheckResponse.NOT_SERVING
        assert urllib.request.urlopen(f"{mgr.http_url}/healthz", timeout=5).status == 200
        # Put the database back (empty) so the fixture can drop it.
        asyncio.run(_admin(base, f'CREATE DATABASE "{name}"'))
    finally:
        mgr.stop()
