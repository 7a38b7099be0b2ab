"""Manager workers, 1 against 2: RPC/s served and RPC/s per core (docs/performance.md).

Runs the fleet simulator (lean client) against a real ``fleet-manager`` on a fresh
PostgreSQL database, once per worker count, with an offered load above what one worker
serves (by default 3,000 nodes at 2 s heartbeats, 6 s metrics, 12 s agent syncs: about
2,000 RPC/s offered), and prints for each: RPCs answered OK per second in the steady
phase, the Manager's CPU (every worker summed, in % of one core), RPC/s per core of the
Manager, heartbeat p99, errors, and what the simulator itself used — on a 2-core machine
it shares the cores with the workers, so its share is part of the result.

    python -m bench.workers_scaling
    python -m bench.workers_scaling --workers 1,2 --nodes 3000 --duration 120
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

DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/postgres"
RPCS = ("Heartbeat", "ReportMetrics", "SyncAgentStates")


def summarize(workers: int, report: dict[str, Any]) -> dict[str, Any]:
    seconds = report["steady_seconds"]
    offered = sum(steady(report, rpc)["calls"] for rpc in RPCS) / seconds
    ok = sum(steady(report, rpc)["ok"] for rpc in RPCS) / seconds
    errors = sum(sum(steady(report, rpc)["errors"].values()) for rpc in RPCS)
    cpu = report["manager"]["steady_cpu_percent_of_core"]
    return {
        "workers": workers,
        "nodes": report["config"]["nodes"],
        "registered": report["registered"],
        "offered_rpc_s": offered,
        "ok_rpc_s": ok,
        "steady_errors": errors,
        "hb_p99_ms": steady(report, "Heartbeat")["p99_ms"],
        "manager_cpu_pct": cpu,
        "rpc_s_per_core": ok / (cpu / 100.0) if cpu else float("nan"),
        "manager_rss_mb": report["manager"]["rss_mb"],
        "sim_cpu_pct": report["simulator"]["steady_cpu_percent_of_core"],
        "sim_loop_lag_p99_ms": report["simulator"]["p99_loop_lag_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workers_scaling", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("FLEET_TEST_POSTGRES", DEFAULT_PG),
        help="PostgreSQL server; a fresh database is created next to this one",
    )
    parser.set_defaults(
        nodes=3000,
        duration=120.0,
        ramp=40.0,
        heartbeat_interval=2.0,
        metrics_interval=6.0,
        agents_interval=12.0,
        spawn_manager=True,
        client="raw",
    )
    args = parser.parse_args(argv)
    args.cache_dir = args.cache_dir or DEFAULT_CACHE
    args.db = args.pg_url
    args.fresh_db = True
    base_args = list(args.manager_arg or [])
    rows, reports = [], {}
    for count in [int(w) for w in args.workers.split(",") if w.strip()]:
        args.manager_arg = [*base_args, "--workers", str(count)]
        print(f"== {count} worker(s)", file=sys.stderr)
        report = simulate_from_args(args)
        print_report(report, file=sys.stderr)
        reports[count] = report
        rows.append(summarize(count, report))
    out = sys.stderr if args.json else sys.stdout
    print_table(
        ["workers", "nodes", "registered", "offered RPC/s", "ok RPC/s", "errors", "hb p99 ms",
         "mgr cpu %", "RPC/s per core", "mgr MB", "sim cpu %", "sim lag p99 ms"],
        [[r["workers"], r["nodes"], r["registered"], r["offered_rpc_s"], r["ok_rpc_s"],
          r["steady_errors"], r["hb_p99_ms"], r["manager_cpu_pct"], r["rpc_s_per_core"],
          r["manager_rss_mb"], r["sim_cpu_pct"], r["sim_loop_lag_p99_ms"]] for r in rows],
        file=out,
    )  # fmt: skip
    if len(rows) > 1 and rows[0]["ok_rpc_s"]:
        print(
            f"served {rows[-1]['ok_rpc_s'] / rows[0]['ok_rpc_s']:.2f}x the RPC/s with "
            f"{rows[-1]['workers']} workers as with {rows[0]['workers']}",
            file=out,
        )
    if args.json:
        emit_json({"rows": rows, "reports": reports})
    return 0


if __name__ == "__main__":
    sys.exit(main())
