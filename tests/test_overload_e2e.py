"""Issue 15, done when: a real Manager overloaded by real Daemons loses no node and no
metric sample.

A ``fleet-manager`` on SQLite with a ReportMetrics budget of one call in progress (and no
per-node quota), four ``fleet-daemon`` processes reporting every second, and bulk
ReportMetrics from two more node identities (an in-test generator) that keep that one
slot busy, so the Daemons' reports meet real overload refusals ("server busy …; retry in
N s"). While the load lasts the nodes are watched through ListNodes; after it, each
Daemon's outbox drains. Then, from the Daemons' logs (every report queued, every report a
Manager acknowledged), their outboxes and the Manager's database:

* the Manager shed ReportMetrics (``fleet_manager_rpc_shed_total``) and every Daemon was
  refused at least once, and honoured it (its report kept, not dropped);
* no node went offline (no status other than online seen, no offline event stored) and
  no Daemon registered twice;
* every report a Daemon queued was acknowledged or is still in its outbox, every one
  queued during the load was acknowledged, and every sample of every acknowledged
  report is stored: none lost.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import wait_until
from harness.daemon import DaemonProc, start_daemon
from harness.manager import (
    admin_channel,
    fleet_certs,
    http_get,
    metric_value,
    node_channel,
    start_manager,
    write_manager_config,
)

from schema import admin_pb, manager_pb

pytestmark = pytest.mark.slow

DAEMONS = ("node-a", "node-b", "node-c", "node-d")
LOADERS = ("load-1", "load-2")
HEARTBEAT = 2.0  # the Manager's grace is 3 x this
TYPES = ("cpu", "disk", "memory", "network")
REPORTS_UNDER_LOAD = 12  # each Daemon queues at least this many while the load runs
_QUEUED = re.compile(r"queued metrics report (\d+): (\d+) samples at (\d+)")
_SENT = re.compile(r"sent metrics report (\d+) to ")
_REFUSED = "refused ReportMetrics for now (RESOURCE_EXHAUSTED: server busy"


class BulkLoad:
    """ReportMetrics of 100 samples × 10 values from ``nodes``, ``workers`` calls each
    always in flight, in a thread with its own event loop, until :meth:`stop`. A refused
    call is tried again after 50 ms — sooner than the hint says: the point is to keep
    the Manager's budget full."""

    def __init__(self, certs: Path, port: int, nodes: tuple[str, ...], workers: int) -> None:
        self._certs, self._port, self._nodes, self._workers = certs, port, nodes, workers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load")
        self.stored = 0
        self.refused = 0
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop and join the thread (if started); idempotent."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(30)
            assert not self._thread.is_alive(), "the load generator did not stop"

    async def _run(self) -> None:
        channels = [node_channel(self._certs, self._port, node) for node in self._nodes]
        try:
            stubs = [manager_pb.ManagerServiceStub(ch, timeout=10) for ch in channels]
            for node, stub in zip(self._nodes, stubs, strict=True):
                await stub.register_node(
                    manager_pb.RegisterNodeRequest(
                        node_id=node,
                        hostname=node,
                        daemon_address="127.0.0.1:1",
                        heartbeat_interval_seconds=3600,  # never offline in this test
                    )
                )
            await asyncio.gather(
                *(
                    self._worker(node, stub, k)
                    for node, stub in zip(self._nodes, stubs, strict=True)
                    for k in range(self._workers)
                )
            )
        except Exception as exc:
            self.errors.append(repr(exc))
        finally:
            for channel in channels:
                channel.close()

    async def _worker(self, node: str, stub: manager_pb.ManagerServiceStub, k: int) -> None:
        # Days ago, each worker of a node in a range of its own (a sample stored twice
        # would only be cheaper for the Manager).
        ts = int(time.time()) - 3 * 86_400 + k * 30_000
        while not self._stop.is_set():
            report = manager_pb.ReportMetricsRequest(
                node_id=node,
                metrics=[
                    manager_pb.MetricData(
                        type=TYPES[i % 4],
                        timestamp=ts + i // 4,
                        values={f"v{v}": float(i * v) for v in range(10)},
                    )
                    for i in range(100)
                ],
            )
            try:
                await stub.report_metrics(report)
                self.stored += 1
                ts += 25
            except GRPCError as exc:
                if exc.status is not Status.RESOURCE_EXHAUSTED:
                    self.errors.append(f"{exc.status.name}: {exc.message}")
                    return
                self.refused += 1
                await asyncio.sleep(0.05)


def _statuses(certs: Path, port: int) -> dict[str, str]:
    async def go() -> dict[str, str]:
        channel = admin_channel(certs, port)
        try:
            reply = await admin_pb.AdminServiceStub(channel).list_nodes(
                admin_pb.ListNodesRequest(), timeout=10
            )
        finally:
            channel.close()
        return {n.node_id: n.status for n in reply.nodes}

    return asyncio.run(go())


def _queued(log: str) -> dict[int, int]:
    """Report sequence number -> its samples' timestamp (each report: one per type)."""
    found = _QUEUED.findall(log)
    assert all(int(samples) == len(TYPES) for _seq, samples, _ts in found), found
    return {int(seq): int(ts) for seq, _samples, ts in found}


def _acknowledged(log: str) -> set[int]:
    return {int(seq) for seq in _SENT.findall(log)}


def test_an_overloaded_manager_loses_no_node_and_no_metric_sample(tmp_path: Path) -> None:
    certs = fleet_certs(tmp_path / "certs", [*DAEMONS, *LOADERS])
    config = write_manager_config(
        tmp_path / "manager.toml",
        {
            "overload": {"report_metrics_in_flight": 1, "retry_after": 0.3},
            "metrics": {"node_quota": 0},
            "liveness": {"sweep_interval": 0.2},
        },
    )
    mgr = start_manager(tmp_path, certs, extra_args=["--config", str(config)])
    daemons: list[DaemonProc] = []
    load = BulkLoad(certs, mgr.grpc_port, LOADERS, workers=3)
    seen: dict[str, set[str]] = {node: set() for node in DAEMONS}
    try:
        for node in DAEMONS:
            daemons.append(
                start_daemon(
                    tmp_path,
                    certs,
                    node_id=node,
                    manager_port=mgr.grpc_port,
                    heartbeat_interval=HEARTBEAT,
                    metrics_interval=1.0,  # a report a second: one timestamp each
                    config={"log": {"level": "debug"}},
                )
            )
        wait_until(
            lambda: all(_statuses(certs, mgr.grpc_port).get(n) == "online" for n in DAEMONS),
            timeout=30,
            what="every node online",
        )
        started = {d.node_id: max(_queued(d.output()), default=0) for d in daemons}
        load.start()

        def loaded_long_enough() -> bool:
            for node, status in _statuses(certs, mgr.grpc_port).items():
                if node in seen:
                    seen[node].add(status)
            assert not load.errors, load.errors
            return all(
                _REFUSED in d.output()
                and max(_queued(d.output()), default=0) - started[d.node_id] >= REPORTS_UNDER_LOAD
                for d in daemons
            )

        wait_until(
            loaded_long_enough,
            timeout=60,
            interval=0.5,
            what="every Daemon refused under load, for a while",
        )
        load.stop()
        under_load = {d.node_id: max(_queued(d.output())) for d in daemons}
        # Whatever was queued while the load lasted drains now.
        wait_until(
            lambda: all(
                set(range(1, under_load[d.node_id] + 1)) <= _acknowledged(d.output())
                for d in daemons
            ),
            timeout=30,
            what="every report queued during the load acknowledged",
        )
        statuses = _statuses(certs, mgr.grpc_port)
        for node in DAEMONS:
            seen[node].add(statuses[node])
        shed = metric_value(
            http_get(f"{mgr.http_url}/metrics")[1],
            "fleet_manager_rpc_shed_total",
            method="ReportMetrics",
        )
        checked_at = time.time()  # a Daemon stopping may say goodbye (node 'stopped')
    finally:
        load.stop()
        codes = [d.stop() for d in daemons]
        mgr.stop()
    assert codes == [0] * len(DAEMONS), codes
    print(
        f"load: {load.stored} reports stored, {load.refused} refused; Manager shed "
        f"{shed} ReportMetrics; reports per Daemon: {under_load}"
    )
    assert shed is not None and shed > 0
    assert all(statuses == {"online"} for statuses in seen.values()), seen
    db = sqlite3.connect(mgr.db_url.removeprefix("sqlite://"))
    try:
        for daemon in daemons:
            _check_no_node_lost(db, daemon, checked_at)
            _check_no_sample_lost(db, daemon, under_load[daemon.node_id])
    finally:
        db.close()


def _check_no_node_lost(db: sqlite3.Connection, daemon: DaemonProc, until: float) -> None:
    node = daemon.node_id
    events = db.execute(
        "SELECT timestamp, new_status, reason FROM fleet_node_event WHERE node_id = ? "
        "ORDER BY timestamp",
        (node,),
    ).fetchall()
    assert [e for e in events if e[1] == "offline"] == [], (node, events)
    assert [e for e in events if e[0] <= until and e[1] != "online"] == [], (node, events)
    log = daemon.log_path.read_text()
    assert log.count(f"registered node {node} with the Manager") == 1, log[-3000:]
    assert "registering again" not in log and "switching to" not in log
    assert "metrics outbox full" not in log


def _check_no_sample_lost(db: sqlite3.Connection, daemon: DaemonProc, under_load: int) -> None:
    node, log = daemon.node_id, daemon.log_path.read_text()
    queued, acknowledged = _queued(log), _acknowledged(log)
    assert len(set(queued.values())) == len(queued), f"{node}: two reports, one timestamp"
    # Refused reports were kept, never dropped as poison...
    assert _REFUSED in log and "dropping it" not in log
    # ...so each one queued was acknowledged or is still queued (for the next start).
    left = {int(p.stem) for p in (daemon.state_dir / "outbox").glob("*.pb")}
    assert set(queued) == acknowledged | left, (node, set(queued) ^ (acknowledged | left))
    assert set(range(1, under_load + 1)) <= acknowledged
    stored = set(
        db.execute(
            "SELECT type, timestamp FROM fleet_metric_sample WHERE node_id = ?", (node,)
        ).fetchall()
    )
    delivered = {(kind, queued[seq]) for seq in acknowledged for kind in TYPES}
    assert delivered <= stored, (node, sorted(delivered - stored))
    possible = {(kind, ts) for ts in queued.values() for kind in TYPES}
    assert stored <= possible, (node, sorted(stored - possible))
