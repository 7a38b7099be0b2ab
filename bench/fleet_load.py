"""The fleet rows of docs/performance.md: N simulated Daemons on one Manager per backend.

Starts a real ``fleet-manager`` on SQLite, then on a fresh PostgreSQL database, runs the
fleet simulator against each (10 s heartbeats, 30 s metrics of 4 types x 8 values, agent
syncs every 60 s) and prints target against measured: errors, achieved heartbeat rate,
heartbeat p99, and the CPU of both the Manager and the simulator.

    python -m bench.fleet_load                              # 10,000 nodes, 5 min, both backends
    python -m bench.fleet_load --nodes 2000 --duration 120 --backends sqlite
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import DEFAULT_CACHE, emit_json, print_table
from bench.fleetsim import add_arguments, print_report, simulate_from_args, steady

TARGET_P99_MS = 100.0
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/postgres"


def summarize(backend: str, report: dict[str, Any]) -> dict[str, Any]:
    """One row: the figures the targets are about (steady phase)."""
    hb = steady(report, "Heartbeat")
    metrics = steady(report, "ReportMetrics")
    expected = report["expected_heartbeat_rate_per_s"]
    return {
        "backend": backend,
        "nodes": report["config"]["nodes"],
        "steady_s": report["steady_seconds"],
        "registered": report["registered"],
        "errors": report["errors_total"],
        "hb_rate": hb["rate_per_s"],
        "hb_ok_rate": hb["ok"] / report["steady_seconds"],
        "hb_expected": expected,
        "hb_p50_ms": hb["p50_ms"],
        "hb_p99_ms": hb["p99_ms"],
        "hb_max_ms": hb["max_ms"],
        "metrics_p99_ms": metrics["p99_ms"],
        "manager_cpu_pct": report["manager"]["steady_cpu_percent_of_core"],
        "manager_rss_mb": report["manager"]["rss_mb"],
        "sim_cpu_pct": report["simulator"]["steady_cpu_percent_of_core"],
        "sim_loop_lag_p99_ms": report["simulator"]["p99_loop_lag_ms"],
        "met": (
            report["errors_total"] == 0
            and report["registered"] == report["config"]["nodes"]
            and hb["ok"] / report["steady_seconds"] >= 0.95 * expected
            and hb["p99_ms"] < TARGET_P99_MS
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet_load", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("FLEET_TEST_POSTGRES", DEFAULT_PG),
        help="PostgreSQL server; a fresh database is created next to this one",
    )
    # The lean client keeps the simulator to ~0.4 ms of CPU per RPC, so the Manager is
    # what these rows measure (``--client grpclib`` for the grpclib Channel per node).
    parser.set_defaults(nodes=10_000, duration=420.0, ramp=120.0, spawn_manager=True, client="raw")
    args = parser.parse_args(argv)
    args.cache_dir = args.cache_dir or DEFAULT_CACHE
    rows, reports = [], {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {backend!r}")
        args.db = args.pg_url if backend == "postgres" else None
        args.fresh_db = True
        print(f"== {backend}", file=sys.stderr)
        report = simulate_from_args(args)
        print_report(report, file=sys.stderr)
        reports[backend] = report
        rows.append(summarize(backend, report))
    out = sys.stderr if args.json else sys.stdout
    print(f"\ntarget: 0 errors, heartbeat p99 < {TARGET_P99_MS:g} ms, full heartbeat rate",
          file=out)  # fmt: skip
    print_table(
        ["backend", "nodes", "errors", "hb ok/s", "expected/s", "hb p50 ms", "hb p99 ms",
         "mgr cpu %", "mgr MB", "sim cpu %", "met"],
        [[r["backend"], r["nodes"], r["errors"], r["hb_ok_rate"], r["hb_expected"],
          r["hb_p50_ms"], r["hb_p99_ms"], r["manager_cpu_pct"], r["manager_rss_mb"],
          r["sim_cpu_pct"], "yes" if r["met"] else "NO"] for r in rows],
        file=out,
    )  # fmt: skip
    if args.json:
        emit_json({"rows": rows, "reports": reports})
    return 0 if all(r["met"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
