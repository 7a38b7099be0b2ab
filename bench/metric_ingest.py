"""Metric ingest: ReportMetrics batches of 100 samples x 10 values into a real Manager.

A few registered nodes keep several ReportMetrics calls in flight for ``--duration``
seconds; the figure is metric values the Manager acknowledged as stored per second
(decode + validate + write, end to end over mTLS). Beside it, the raw rate of SQLite
``executemany`` into the Manager's own metric table (its DDL read from the database the
Manager created), 100 rows per transaction: the ceiling the Manager's write path can
approach on this disk.

The client builds and encodes its batches with protobuf's upb runtime (``manager_pb2``,
the same bytes a Daemon's betterproto sends): 0.25 ms a batch instead of 2.4 ms, so on
a small shared machine the load generator leaves the CPU to the Manager it measures
(``--client betterproto`` for the Daemon's own encoder).

    python -m bench.metric_ingest
    python -m bench.metric_ingest --db postgres://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from bench._common import (
    DEFAULT_CACHE,
    emit_json,
    ensure_node_certs,
    fresh_postgres,
    latency_summary,
    machine_info,
    print_profile,
    print_table,
    process_cpu_seconds,
    profile_summary,
    py_spy,
    spawn_manager,
)
from common.tls import TLSFiles, client_context
from schema import manager_grpc, manager_pb, manager_pb2

TARGET_VALUES_PER_S = 100_000
METRIC_TABLE = "fleet_metric_sample"


TYPES = ("cpu", "memory", "disk", "network")


def make_batch(
    node_id: str, block: int, samples: int, pool: list[dict[str, float]], base: int
) -> manager_pb.ReportMetricsRequest:
    """Batch number ``block`` of a node: ``samples`` samples whose (type, timestamp) pairs
    no other batch uses (the Manager stores a resent sample only once), going back in
    time from ``base`` one second per ``len(TYPES)`` samples."""
    per_block = -(-samples // len(TYPES))
    return manager_pb.ReportMetricsRequest(
        node_id=node_id,
        metrics=[
            manager_pb.MetricData(
                type=TYPES[i % len(TYPES)],
                timestamp=base - block * per_block - i // len(TYPES),
                values=pool[i],
            )
            for i in range(samples)
        ],
    )


def make_batch_upb(
    node_id: str, block: int, samples: int, pool: list[dict[str, float]], base: int
) -> manager_pb2.ReportMetricsRequest:
    """``make_batch`` as a protobuf (upb) message: the same bytes, a tenth of the CPU."""
    per_block = -(-samples // len(TYPES))
    request = manager_pb2.ReportMetricsRequest(node_id=node_id)
    add = request.metrics.add
    for i in range(samples):
        add(type=TYPES[i % len(TYPES)], timestamp=base - block * per_block - i // len(TYPES),
            values=pool[i])  # fmt: skip
    return request


async def _ingest(
    address: str,
    cert_dir: Path,
    nodes: list[str],
    *,
    samples: int,
    values: int,
    concurrency: int,
    duration: float,
    client: str = "upb",
) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    rng = random.Random(7)
    channels: list[Channel] = []
    stubs = []
    for node in nodes:
        ctx = client_context(
            TLSFiles(cert_dir / f"{node}.crt", cert_dir / f"{node}.key", cert_dir / "ca.crt"),
            expect_role="manager",
        )
        ch = Channel(host, int(port), ssl=ctx)
        channels.append(ch)
        stub = manager_pb.ManagerServiceStub(ch, timeout=30)
        await stub.register_node(
            manager_pb.RegisterNodeRequest(
                node_id=node, hostname=node, os="linux", arch="x86_64",
                daemon_address="127.0.0.1:9", heartbeat_interval_seconds=10,
                instance_id=f"ingest-{node}",
            )
        )  # fmt: skip
        stubs.append((stub, node))
    upb_stubs = [manager_grpc.ManagerServiceStub(ch) for ch in channels]
    pool = [{f"v{k}": rng.random() * 100 for k in range(values)} for _ in range(samples)]
    blocks = {node: itertools.count() for node in nodes}
    base = int(time.time())
    stored = 0
    short = 0
    errors: dict[str, int] = {}
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + duration

    async def pump(k: int) -> None:
        nonlocal stored, short
        stub, node = stubs[k]
        upb_stub = upb_stubs[k]
        response: Any
        while loop.time() < end:
            block = next(blocks[node])
            call: Awaitable[object]
            if client == "upb":
                call = upb_stub.ReportMetrics(
                    make_batch_upb(node, block, samples, pool, base), timeout=30
                )
            else:
                call = stub.report_metrics(make_batch(node, block, samples, pool, base))
            t = time.perf_counter()
            try:
                response = await call
            except GRPCError as exc:
                errors[exc.status.name] = errors.get(exc.status.name, 0) + 1
                continue
            latencies.append(time.perf_counter() - t)
            stored += response.accepted
            short += response.accepted < samples

    t0 = time.perf_counter()
    cpu0 = process_cpu_seconds()
    try:
        await asyncio.gather(*(pump(k) for k in range(len(stubs)) for _ in range(concurrency)))
    finally:
        for ch in channels:
            ch.close()
    elapsed = time.perf_counter() - t0
    return {
        "batches": len(latencies),
        "samples_stored": stored,
        "values_stored": stored * values,
        "elapsed_s": elapsed,
        "values_per_s": stored * values / elapsed,
        "samples_per_s": stored / elapsed,
        "errors": errors,
        "batches_not_fully_stored": short,
        "client_cpu_percent_of_core": 100 * (process_cpu_seconds() - cpu0) / elapsed,
        **latency_summary(latencies),
    }


def metric_table_ddl(db_path: Path) -> list[str]:
    """CREATE TABLE/INDEX statements of the Manager's metric table in its SQLite file."""
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name=? AND sql IS NOT NULL "
            "ORDER BY type DESC",  # table before its indexes
            (METRIC_TABLE,),
        ).fetchall()
    return [r[0] for r in rows]


FALLBACK_DDL = [
    f'CREATE TABLE "{METRIC_TABLE}" ("id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, '
    '"node_id" VARCHAR(128) NOT NULL, "type" VARCHAR(32) NOT NULL, '
    '"timestamp" BIGINT NOT NULL, "values" JSON NOT NULL)',
    f'CREATE INDEX "idx_metric_ts" ON "{METRIC_TABLE}" ("timestamp")',
    f'CREATE INDEX "idx_metric_node_ts" ON "{METRIC_TABLE}" ("node_id", "timestamp")',
]


def raw_sqlite_rate(
    ddl: list[str], *, samples: int, values: int, duration: float
) -> dict[str, Any]:
    """executemany of ``samples`` rows per transaction (WAL, synchronous=NORMAL, as the
    Manager) for ``duration`` seconds; values include building the JSON text."""
    rng = random.Random(3)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-sqlite-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        for statement in ddl:
            conn.execute(statement)
        now = int(time.time())
        payloads = [{f"v{k}": rng.random() * 100 for k in range(values)} for _ in range(samples)]
        sql = (
            f'INSERT INTO "{METRIC_TABLE}" ("node_id", "type", "timestamp", "values") '
            "VALUES (?, ?, ?, ?)"
        )
        rows = 0
        t0 = time.perf_counter()
        end = t0 + duration
        while time.perf_counter() < end:
            batch = [("node-x", "cpu", now + rows + i, json.dumps(p)) for i, p in
                     enumerate(payloads)]  # fmt: skip
            conn.execute("BEGIN")
            conn.executemany(sql, batch)
            conn.execute("COMMIT")
            rows += len(batch)
        elapsed = time.perf_counter() - t0
        conn.close()
    return {"rows": rows, "values_per_s": rows * values / elapsed, "rows_per_s": rows / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metric_ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", help="database URL for the Manager (default: SQLite)")
    parser.add_argument("--nodes", type=int, default=4, help="reporting nodes (connections)")
    parser.add_argument("--concurrency", type=int, default=4, help="calls in flight per node")
    parser.add_argument("--samples", type=int, default=100, help="samples per batch")
    parser.add_argument("--values", type=int, default=10, help="values per sample")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--client", choices=("upb", "betterproto"), default="upb",
        help="how the client builds and encodes its batches (the Manager is the same)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", type=Path, help="py-spy the Manager into this file")
    args = parser.parse_args(argv)
    import contextlib

    load_before = os.getloadavg()

    with contextlib.ExitStack() as stack:
        db = args.db
        if db and db.startswith("postgres"):
            db = stack.enter_context(fresh_postgres(db))
        cert_dir = args.cache_dir / "ca"
        # A few simulated nodes send thousands of samples a second each, far over the
        # Manager's per-node quota for real fleets (metrics.node_quota): measure the store.
        os.environ.setdefault("FLEET_MANAGER_METRICS_NODE_QUOTA", "0")
        manager = stack.enter_context(spawn_manager(cert_dir=cert_dir, db_url=db))
        names = [f"ingest-{i:02d}" for i in range(args.nodes)]
        node_dir = ensure_node_certs(cert_dir, names, cache_dir=args.cache_dir)
        mgr_cpu0 = process_cpu_seconds(manager.pid)
        recording = py_spy(manager.pid, args.profile, delay=3.0, duration=args.duration - 5)
        with recording:
            result = asyncio.run(
                _ingest(manager.address, node_dir, names, samples=args.samples,
                        values=args.values, concurrency=args.concurrency,
                        duration=args.duration, client=args.client)
            )  # fmt: skip
        mgr_cpu = process_cpu_seconds(manager.pid) - mgr_cpu0
        result["manager_cpu_percent_of_core"] = 100 * mgr_cpu / result["elapsed_s"]
        # Contention barely distorts this one: the Manager's cost per value stored.
        result["values_per_manager_cpu_second"] = result["values_stored"] / max(mgr_cpu, 1e-9)
        result["load_average"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
        ddl: list[str] = []
        if manager.db_url.startswith("sqlite"):
            ddl = metric_table_ddl(Path(manager.db_url.removeprefix("sqlite://")))
    raw = raw_sqlite_rate(ddl or FALLBACK_DDL, samples=args.samples, values=args.values,
                          duration=min(args.duration, 10.0))  # fmt: skip
    out = sys.stderr if args.json else sys.stdout
    backend = "postgres" if (args.db or "").startswith("postgres") else "sqlite"
    print(
        f"metric ingest: {args.nodes} nodes x {args.concurrency} in flight, batches of "
        f"{args.samples} samples x {args.values} values, {args.duration:g}s, {backend}, "
        f"{args.client} client",
        file=out,
    )
    print_table(
        ["path", "values/s", "target", "p50 ms", "p99 ms", "errors", "mgr cpu %",
         "values/mgr cpu-s"],
        [
            ["Manager ReportMetrics (decode + write)", result["values_per_s"],
             TARGET_VALUES_PER_S, result["p50_ms"], result["p99_ms"],
             sum(result["errors"].values()), result["manager_cpu_percent_of_core"],
             result["values_per_manager_cpu_second"]],
            ["raw SQLite executemany (same table)", raw["values_per_s"], "-", "-", "-", "-",
             "-", "-"],
        ],
        file=out,
    )  # fmt: skip
    load = result["load_average"]
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} before, "
          f"{load[3]:.2f} {load[4]:.2f} {load[5]:.2f} after; client CPU "
          f"{result['client_cpu_percent_of_core']:.0f} % of a core", file=out)  # fmt: skip
    if result["batches_not_fully_stored"]:
        print(f"note: {result['batches_not_fully_stored']} batches were not fully stored "
              "(the Manager reported fewer new samples than sent)", file=out)  # fmt: skip
    if args.profile and args.profile.exists():
        result["profile"] = profile_summary(args.profile)
        print_profile(result["profile"], file=out, title="manager profile")
    if args.json:
        emit_json({"manager": result, "raw_sqlite": raw, "schema": ddl or FALLBACK_DDL,
                   "backend": backend, "machine": machine_info()})  # fmt: skip
    return 0 if not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
