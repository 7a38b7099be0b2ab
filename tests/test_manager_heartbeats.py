"""Heartbeat coalescing and durability against a real Manager (both backends)."""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import time
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest
from grpclib.exceptions import GRPCError, StreamTerminatedError
from harness import async_wait_until, wait_until
from harness.manager import (
    manager_rpc,
    node_channel,
    start_manager,
    stored_nodes,
    write_manager_config,
)

from schema import manager_pb

NODES = [f"hb-{i:02d}" for i in range(10)]


@pytest.fixture(scope="module")
def fleet_certs(certs: Path, certgen: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session certificates plus ten more node certificates from the same CA."""
    directory = tmp_path_factory.mktemp("fleet-certs")
    for f in certs.iterdir():
        shutil.copy(f, directory / f.name)
    for node_id in NODES:
        certgen.issue(directory, "node", node_id)
    return directory


def register_all(certs: Path, port: int) -> None:
    for node_id in NODES:
        manager_rpc(
            certs,
            port,
            node_id,
            "register_node",
            manager_pb.RegisterNodeRequest(
                node_id=node_id, daemon_address="127.0.0.1:1", heartbeat_interval_seconds=10
            ),
        )


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            out[match.group(1)] = float(match.group(2))
    return out


def test_1000_concurrent_heartbeats_coalesce(
    tmp_path: Path, fleet_certs: Path, db_url: str
) -> None:
    cfg = write_manager_config(tmp_path / "m.toml", {"heartbeats": {"flush_interval": 0.5}})
    mgr = start_manager(tmp_path, fleet_certs, db_url=db_url, extra_args=["--config", str(cfg)])
    try:
        register_all(fleet_certs, mgr.grpc_port)
        base = int(time.time()) - 500
        # 100 distinct timestamps per node, sent in random order, all at once.
        plan = [(n, base + i) for n in NODES for i in range(100)]
        random.Random(7).shuffle(plan)

        async def run() -> list[bool]:
            channels = {n: node_channel(fleet_certs, mgr.grpc_port, n) for n in NODES}
            stubs = {n: manager_pb.ManagerServiceStub(c, timeout=30) for n, c in channels.items()}
            try:
                replies = await asyncio.gather(
                    *(
                        stubs[n].heartbeat(manager_pb.HeartbeatRequest(node_id=n, timestamp=ts))
                        for n, ts in plan
                    )
                )
                return [r.success for r in replies]
            finally:
                for c in channels.values():
                    c.close()

        assert mgr.http_port is not None
        before = scrape(mgr.http_port)
        assert all(asyncio.run(run()))

        # Every node holds exactly the newest timestamp it sent (once the buffered
        # acknowledgements are flushed: within one flush interval).
        def newest_stored() -> bool:
            rows = stored_nodes(db_url)
            return {n: rows[n]["last_heartbeat_reported"] for n in NODES} == dict.fromkeys(
                NODES, base + 99
            )

        wait_until(newest_stored, timeout=5, what="newest heartbeats flushed")
        rows = stored_nodes(db_url)
        assert all(rows[n]["status"] == "online" for n in NODES)
        after = scrape(mgr.http_port)
        assert (
            after["fleet_manager_heartbeats_total"]
            - before.get("fleet_manager_heartbeats_total", 0)
            == 1000
        )
        flushes = after["fleet_manager_heartbeat_flush_size_count"] - before.get(
            "fleet_manager_heartbeat_flush_size_count", 0
        )
        rows_written = after["fleet_manager_heartbeat_flush_size_sum"] - before.get(
            "fleet_manager_heartbeat_flush_size_sum", 0
        )
        # Coalesced: at most one row per node per flush, and far fewer writes than calls.
        assert rows_written <= len(NODES) * flushes
        assert rows_written < 200, (rows_written, flushes)
    finally:
        assert mgr.stop() == 0


@pytest.mark.parametrize("ack", ["flushed", "buffered"])
def test_sigkill_durability_bound(tmp_path: Path, fleet_certs: Path, db_url: str, ack: str) -> None:
    """flushed: nothing acknowledged is lost. buffered: at most one flush interval is."""
    flush = 0.5
    cfg = write_manager_config(
        tmp_path / "m.toml", {"heartbeats": {"flush_interval": flush, "ack": ack}}
    )
    mgr = start_manager(tmp_path, fleet_certs, db_url=db_url, extra_args=["--config", str(cfg)])
    register_all(fleet_certs, mgr.grpc_port)
    base = int(time.time()) - 10_000
    acked: dict[str, int] = dict.fromkeys(NODES, 0)
    sent: dict[str, int] = dict.fromkeys(NODES, 0)
    ack_log: dict[str, list[tuple[float, int]]] = {n: [] for n in NODES}
    killed_at = 0.0

    async def beat(node_id: str, stub: manager_pb.ManagerServiceStub) -> None:
        ts = base
        while True:
            ts += 1
            sent[node_id] = ts
            try:
                await stub.heartbeat(manager_pb.HeartbeatRequest(node_id=node_id, timestamp=ts))
            except (GRPCError, StreamTerminatedError, ConnectionError, OSError):
                return
            acked[node_id] = ts
            ack_log[node_id].append((time.monotonic(), ts))
            if ack == "buffered":
                await asyncio.sleep(0.01)  # a beat stream, not a busy loop

    async def run() -> None:
        nonlocal killed_at
        channels = {n: node_channel(fleet_certs, mgr.grpc_port, n) for n in NODES}
        tasks = [
            asyncio.create_task(beat(n, manager_pb.ManagerServiceStub(c, timeout=10)))
            for n, c in channels.items()
        ]
        # Let several flushes happen, then kill the Manager mid-stream.
        await async_wait_until(
            lambda: asyncio.sleep(0, min(acked.values()) >= base + 3), what="acks"
        )
        await asyncio.sleep(3 * flush)
        killed_at = time.monotonic()
        mgr.kill()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        for c in channels.values():
            c.close()

    asyncio.run(run())
    rows = stored_nodes(db_url)
    for node_id in NODES:
        stored = rows[node_id]["last_heartbeat_reported"]
        assert stored <= sent[node_id]
        if ack == "flushed":
            # Nothing acknowledged is lost; what is lost was never acknowledged.
            assert stored >= acked[node_id], (node_id, stored, acked[node_id])
            # Each node had at most one heartbeat in flight: that is all a kill can lose.
            assert sent[node_id] - stored <= 1
        else:
            # Acknowledged more than one flush interval (plus the flush in progress)
            # before the kill: durable.
            safe_before = killed_at - flush - 1.0
            safe = max((ts for t, ts in ack_log[node_id] if t <= safe_before), default=base)
            assert stored >= safe, (node_id, stored, safe)
    # Restarting on the same database works and keeps the nodes.
    mgr2 = start_manager(tmp_path, fleet_certs, db_url=db_url, log_name="manager2.log")
    try:
        wait_until(lambda: len(stored_nodes(db_url)) == len(NODES), timeout=10)
    finally:
        assert mgr2.stop() == 0
