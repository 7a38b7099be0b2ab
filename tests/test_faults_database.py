"""Fault battery, item 12: the Manager's database fails under load, then comes back.

* SQLite: the database file and its WAL/SHM files become immutable (``chattr +i``, which
  even root cannot write through — a read-only remount looks the same to SQLite);
* PostgreSQL: a restart, seen from the Manager — every connection reset at once and new
  ones refused for a while — through :class:`harness.faults.TcpProxy` in front of the
  shared server (the real server is not restarted: other suites use it).

Throughout, two nodes heartbeat and report metric batches as fast as they are answered.
Every answer must be ``OK`` or ``UNAVAILABLE`` (never ``INTERNAL``), the Manager must
recover by itself once the database is back, and every heartbeat and metric batch that
was acknowledged must be in the database afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from grpclib.exceptions import GRPCError, StreamTerminatedError
from harness import wait_until
from harness.faults import TcpProxy
from harness.manager import (
    manager_rpc,
    node_channel,
    start_manager,
    stored_nodes,
    write_manager_config,
)

from schema import admin_pb, manager_pb

NODES = ("node-a", "node-b")


class Load:
    """Heartbeats and metric batches from two nodes, with what was acknowledged."""

    def __init__(self) -> None:
        self.codes: collections.Counter[str] = collections.Counter()
        self.fault_codes: collections.Counter[str] = collections.Counter()
        self.acked_heartbeat = dict.fromkeys(NODES, 0)
        self.acked_batches: dict[str, list[int]] = {n: [] for n in NODES}
        self.in_fault = False
        self.last_ok = 0.0

    def record(self, code: str) -> None:
        self.codes[code] += 1
        if self.in_fault:
            self.fault_codes[code] += 1
        if code == "OK":
            self.last_ok = time.monotonic()

    async def node(self, certs: Path, port: int, node_id: str, stop: asyncio.Event) -> None:
        channel = node_channel(certs, port, node_id)
        stub = manager_pb.ManagerServiceStub(channel, timeout=15)
        ts = int(time.time()) - 20_000
        metric_base = int(time.time()) - 1800  # inside QueryNodeMetrics' window below
        seq = 0
        try:
            while not stop.is_set():
                ts += 1
                seq += 1
                for call in ("heartbeat", "metrics"):
                    try:
                        if call == "heartbeat":
                            await stub.heartbeat(
                                manager_pb.HeartbeatRequest(node_id=node_id, timestamp=ts)
                            )
                            self.acked_heartbeat[node_id] = ts
                        else:
                            await stub.report_metrics(
                                manager_pb.ReportMetricsRequest(
                                    node_id=node_id,
                                    metrics=[
                                        manager_pb.MetricData(
                                            type="load",
                                            # One sample per second of "time": the
                                            # Manager keeps one per (type, timestamp).
                                            timestamp=metric_base + seq,
                                            values={"seq": float(seq)},
                                        )
                                    ],
                                )
                            )
                            self.acked_batches[node_id].append(seq)
                        self.record("OK")
                    except GRPCError as exc:
                        self.record(exc.status.name)
                        await asyncio.sleep(0.05)
                    except (StreamTerminatedError, ConnectionError, OSError) as exc:
                        self.record(type(exc).__name__)
                        await asyncio.sleep(0.05)
                await asyncio.sleep(0.02)
        finally:
            channel.close()


def _stored_seqs(certs: Path, port: int, node_id: str) -> set[int]:
    reply = manager_rpc(
        certs,
        port,
        "admin",
        "query_node_metrics",
        admin_pb.QueryNodeMetricsRequest(
            node_id=node_id, type="load", since_seconds=3600, limit=10_000
        ),
    )
    return {int(m.values["seq"]) for m in reply.metrics}


def _run_fault(
    tmp_path: Path,
    certs: Path,
    db_url: str,
    fault: Callable[[], None],
    repair: Callable[[], None],
    *,
    fault_seconds: float = 4.0,
) -> Load:
    cfg = write_manager_config(
        tmp_path / "m.toml",
        {"heartbeats": {"flush_interval": 0.2}, "liveness": {"sweep_interval": 0.5}},
    )
    mgr = start_manager(tmp_path, certs, db_url=db_url, extra_args=["--config", str(cfg)])
    load = Load()
    try:
        port = mgr.grpc_port
        for node_id in NODES:
            manager_rpc(
                certs,
                port,
                node_id,
                "register_node",
                manager_pb.RegisterNodeRequest(
                    node_id=node_id, daemon_address="127.0.0.1:1", heartbeat_interval_seconds=60
                ),
            )

        async def scenario() -> None:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(load.node(certs, port, n, stop)) for n in NODES]
            await asyncio.sleep(1.5)  # healthy load first
            assert load.codes["OK"] > 10, load.codes
            load.in_fault = True
            await asyncio.to_thread(fault)
            await asyncio.sleep(fault_seconds)
            await asyncio.to_thread(repair)
            load.in_fault = False
            repaired = time.monotonic()
            # Recovers by itself: answers are OK again within a bound, with no restart.
            deadline = repaired + 30
            while time.monotonic() < deadline and load.last_ok < repaired + 0.5:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # some healthy load after the recovery
            stop.set()
            await asyncio.gather(*tasks)
            assert load.last_ok > repaired, f"no successful call after repair: {load.codes}"

        asyncio.run(scenario())
        assert mgr.alive(), mgr.output()[-3000:]
        # During the fault: refusals were UNAVAILABLE, never INTERNAL or a dropped stream.
        assert load.fault_codes["UNAVAILABLE"] > 0, load.fault_codes
        assert set(load.codes) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, load.codes
        assert "INTERNAL" not in load.codes

        # Nothing acknowledged is lost: heartbeats acknowledged from the buffer are
        # written by the next flush (one flush interval), metric batches before the ack.
        def heartbeats_durable() -> bool:
            rows = stored_nodes(db_url)
            return all(rows[n]["last_heartbeat_reported"] >= load.acked_heartbeat[n] for n in NODES)

        wait_until(heartbeats_durable, timeout=5, what="acknowledged heartbeats stored")
        for node_id in NODES:
            stored = _stored_seqs(certs, port, node_id)
            missing = set(load.acked_batches[node_id]) - stored
            assert not missing, (node_id, sorted(missing)[:20])
        # And /readyz agrees the database is back.
        import urllib.request

        with urllib.request.urlopen(f"{mgr.http_url}/readyz", timeout=5) as resp:
            assert resp.status == 200
        return load
    finally:
        mgr.stop()


def _chattr(flag: str, paths: list[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    subprocess.run(["chattr", flag, *existing], check=True, capture_output=True)


@contextmanager
def _immutable_capable(tmp_path: Path) -> Iterator[None]:
    probe = tmp_path / "probe"
    probe.write_text("x")
    if not shutil.which("chattr"):
        pytest.skip("chattr not available")
    result = subprocess.run(["chattr", "+i", str(probe)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot make files immutable here: {result.stderr.decode().strip()}")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    yield


@pytest.mark.slow
def test_sqlite_file_becomes_read_only_under_load(tmp_path: Path, certs: Path) -> None:
    with _immutable_capable(tmp_path):
        db = tmp_path / "manager-data" / "manager.sqlite3"
        # Not the -shm index: SQLite maps it shared, and a store into a mapped page of an
        # immutable file is SIGBUS — a kernel artefact of this injection, not a fault a
        # read-only database produces (the index is rebuilt from the WAL anyway).
        files = [db, Path(f"{db}-wal")]
        try:
            load = _run_fault(
                tmp_path,
                certs,
                f"sqlite://{db}",
                lambda: _chattr("+i", files),
                lambda: _chattr("-i", files),
            )
        finally:
            if any(p.exists() for p in files):
                subprocess.run(["chattr", "-i", *map(str, files)], capture_output=True)
    print(f"sqlite read-only: {dict(load.codes)}")


@pytest.mark.slow
def test_postgres_restart_under_load(tmp_path: Path, certs: Path) -> None:
    base = os.environ.get("FLEET_TEST_POSTGRES")
    if not base:
        pytest.skip("PostgreSQL not configured: set FLEET_TEST_POSTGRES")
    from urllib.parse import urlsplit, urlunsplit

    from harness.pg import throwaway_database

    with throwaway_database(base) as url:
        parts = urlsplit(url)
        with TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432)) as proxy:
            netloc = (
                f"{parts.username}@127.0.0.1:{proxy.port}"
                if parts.username
                else (f"127.0.0.1:{proxy.port}")
            )
            proxied = urlunsplit(parts._replace(netloc=netloc))
            load = _run_fault(tmp_path, certs, proxied, proxy.sever, proxy.heal)
    print(f"postgres restart: {dict(load.codes)}")
