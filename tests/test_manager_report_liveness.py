"""Liveness by report (issue 14 item 4): an accepted ReportMetrics or SyncAgentStates keeps
a node online like a heartbeat, but only from the connection its current Daemon instance
heartbeated or registered on; a replaced instance, a refused report and a seed-style
client (no instance id) get the old behaviour. Real Manager, both backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness.manager import (
    ManagerProc,
    admin_channel,
    http_get,
    metric_value,
    node_channel,
    start_manager,
    write_manager_config,
)

from schema import admin_pb, manager_pb

GRACE = 2.0
FAST = {"liveness": {"sweep_interval": 0.2}, "heartbeats": {"flush_interval": 0.2}}


def _start(tmp_path: Path, certs: Path, db_url: str) -> ManagerProc:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = write_manager_config(tmp_path / "m.toml", FAST)
    return start_manager(
        tmp_path, certs, db_url=db_url, grace=GRACE, extra_args=["--config", str(cfg)]
    )


def _stub(channel: Channel) -> manager_pb.ManagerServiceStub:
    return manager_pb.ManagerServiceStub(channel, timeout=15)


async def _register(stub: manager_pb.ManagerServiceStub, node_id: str, instance: str) -> None:
    await stub.register_node(
        manager_pb.RegisterNodeRequest(
            node_id=node_id,
            hostname=node_id,
            daemon_address="127.0.0.1:1",
            heartbeat_interval_seconds=1,
            instance_id=instance,
        )
    )


def _report(node_id: str, kind: str = "cpu") -> manager_pb.ReportMetricsRequest:
    # A new timestamp each time, so every report stores a row.
    return manager_pb.ReportMetricsRequest(
        node_id=node_id,
        metrics=[manager_pb.MetricData(type=kind, timestamp=int(time.time()), values={"u": 1.0})],
    )


async def _status(admin: admin_pb.AdminServiceStub, node_id: str) -> str:
    reply = await admin.get_node(admin_pb.GetNodeRequest(node_id=node_id))
    return reply.node.status


async def _keep_calling(
    call: Callable[[], Awaitable[None]],
    admin: admin_pb.AdminServiceStub,
    node_id: str,
    seconds: float,
) -> list[str]:
    """Call ``call`` every 0.25 s for ``seconds``; the node's status after each."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await call()
        seen.append(await _status(admin, node_id))
        await asyncio.sleep(0.25)
    return seen


async def _offline_while(
    call: Callable[[], Awaitable[None]], admin: admin_pb.AdminServiceStub, node_id: str
) -> None:
    """``call`` every 0.25 s until the node is offline (a generous deadline)."""
    deadline = time.monotonic() + GRACE + 20
    while await _status(admin, node_id) != "offline":
        assert time.monotonic() < deadline, f"{node_id} still online"
        await call()
        await asyncio.sleep(0.25)


def test_reports_keep_the_node_online_past_the_grace(
    tmp_path: Path, certs: Path, db_url: str
) -> None:
    mgr = _start(tmp_path, certs, db_url)
    port = mgr.grpc_port

    async def scenario() -> None:
        node, adm = node_channel(certs, port, "node-a"), admin_channel(certs, port)
        try:
            stub, admin = _stub(node), admin_pb.AdminServiceStub(adm, timeout=15)
            await _register(stub, "node-a", "a-1")
            replies: list[bool] = []

            async def report() -> None:
                reply = await stub.report_metrics(_report("node-a"))
                replies.append(reply.liveness)

            async def sync() -> None:
                reply = await stub.sync_agent_states(
                    manager_pb.SyncAgentStatesRequest(node_id="node-a", full=True)
                )
                replies.append(reply.liveness)

            # No heartbeat after RegisterNode: reports alone, then syncs alone, each
            # for longer than the grace.
            assert set(await _keep_calling(report, admin, "node-a", GRACE + 1)) == {"online"}
            assert set(await _keep_calling(sync, admin, "node-a", GRACE + 1)) == {"online"}
            assert replies and all(replies)
            # Refused reports (an invalid metric type) count for nothing.

            async def refused() -> None:
                with pytest.raises(GRPCError) as err:
                    await stub.report_metrics(_report("node-a", kind="no such type!"))
                assert err.value.status is Status.INVALID_ARGUMENT

            await _offline_while(refused, admin, "node-a")
            # An accepted one brings it back, as a heartbeat would.
            await report()
            for _ in range(200):
                if await _status(admin, "node-a") == "online":
                    break
                await asyncio.sleep(0.1)
            assert await _status(admin, "node-a") == "online"
        finally:
            node.close()
            adm.close()

    try:
        asyncio.run(scenario())
        text = http_get(f"{mgr.http_url}/metrics")[1]
        assert metric_value(text, "fleet_manager_heartbeats_total") == 0
        assert metric_value(text, "fleet_manager_rpc_total", method="Heartbeat") is None
        for method in ("ReportMetrics", "SyncAgentStates"):
            counted = metric_value(text, "fleet_manager_liveness_by_report_total", method=method)
            assert counted and counted >= 5
    finally:
        assert mgr.stop() == 0


def test_a_replaced_instance_does_not_keep_the_node_alive(tmp_path: Path, certs: Path) -> None:
    mgr = _start(tmp_path, certs, f"sqlite://{tmp_path / 'fleet.db'}")
    port = mgr.grpc_port

    async def scenario() -> None:
        old = node_channel(certs, port, "node-b")  # one connection per Daemon instance
        new = node_channel(certs, port, "node-b")
        adm = admin_channel(certs, port)
        try:
            admin = admin_pb.AdminServiceStub(adm, timeout=15)
            await _register(_stub(old), "node-b", "b-1")
            await _stub(old).heartbeat(
                manager_pb.HeartbeatRequest(node_id="node-b", instance_id="b-1")
            )
            assert (await _stub(old).report_metrics(_report("node-b"))).liveness
            # A new Daemon instance registers, then dies at once; the old one keeps
            # reporting on the connection it heartbeated on.
            await _register(_stub(new), "node-b", "b-2")
            new.close()
            counted: list[bool] = []

            async def stale_report() -> None:
                reply = await _stub(old).report_metrics(_report("node-b"))
                assert reply.success  # stored, as before
                counted.append(reply.liveness)

            await _offline_while(stale_report, admin, "node-b")
            assert counted and not any(counted)
            with pytest.raises(GRPCError) as err:
                await _stub(old).heartbeat(
                    manager_pb.HeartbeatRequest(node_id="node-b", instance_id="b-1")
                )
            assert err.value.status is Status.ALREADY_EXISTS
        finally:
            old.close()
            adm.close()

    try:
        asyncio.run(scenario())
    finally:
        assert mgr.stop() == 0


def test_a_seed_style_client_is_unchanged(tmp_path: Path, certs: Path) -> None:
    """No instance id anywhere (the seed's messages): heartbeats keep the node online,
    reports never count, and without heartbeats it goes offline after the grace."""
    mgr = _start(tmp_path, certs, f"sqlite://{tmp_path / 'fleet.db'}")
    port = mgr.grpc_port

    async def scenario() -> None:
        node, adm = node_channel(certs, port, "node-c"), admin_channel(certs, port)
        try:
            stub, admin = _stub(node), admin_pb.AdminServiceStub(adm, timeout=15)
            await stub.register_node(
                manager_pb.RegisterNodeRequest(node_id="node-c", hostname="c", os="linux")
            )

            async def beat_and_report() -> None:
                beat = await stub.heartbeat(
                    manager_pb.HeartbeatRequest(node_id="node-c", timestamp=int(time.time()))
                )
                assert beat.success
                assert not (await stub.report_metrics(_report("node-c"))).liveness

            seen = await _keep_calling(beat_and_report, admin, "node-c", GRACE + 1)
            assert set(seen) == {"online"}

            async def report_only() -> None:
                reply = await stub.report_metrics(_report("node-c"))
                assert reply.success and not reply.liveness

            await _offline_while(report_only, admin, "node-c")
        finally:
            node.close()
            adm.close()

    try:
        asyncio.run(scenario())
        text = http_get(f"{mgr.http_url}/metrics")[1]
        assert metric_value(text, "fleet_manager_liveness_by_report_total") is None
    finally:
        assert mgr.stop() == 0


@pytest.mark.postgres
def test_reports_to_another_manager_on_postgres(tmp_path: Path, certs: Path, pg_url: str) -> None:
    """Two Managers on one PostgreSQL: a Daemon that moved to the other Manager and
    heartbeated there once stays online on its reports alone, whichever Manager runs the
    sweep; once a new instance registered through the first, its reports stop counting."""
    one = _start(tmp_path / "one", certs, pg_url)
    two = _start(tmp_path / "two", certs, pg_url)

    async def scenario() -> None:
        first = node_channel(certs, one.grpc_port, "node-a")
        moved = node_channel(certs, two.grpc_port, "node-a")
        replaced = node_channel(certs, one.grpc_port, "node-a")
        adm = admin_channel(certs, one.grpc_port)
        try:
            admin = admin_pb.AdminServiceStub(adm, timeout=15)
            await _register(_stub(first), "node-a", "a-1")
            first.close()
            await _stub(moved).heartbeat(
                manager_pb.HeartbeatRequest(node_id="node-a", instance_id="a-1")
            )

            async def report() -> None:
                assert (await _stub(moved).report_metrics(_report("node-a"))).liveness

            assert set(await _keep_calling(report, admin, "node-a", GRACE + 1)) == {"online"}
            await _register(_stub(replaced), "node-a", "a-2")
            replaced.close()
            counted: list[bool] = []

            async def stale_report() -> None:
                counted.append((await _stub(moved).report_metrics(_report("node-a"))).liveness)

            await _offline_while(stale_report, admin, "node-a")
            assert counted and not counted[-1]
        finally:
            first.close()
            moved.close()
            replaced.close()
            adm.close()

    try:
        asyncio.run(scenario())
    finally:
        assert one.stop() == 0
        assert two.stop() == 0
