"""What supervising costs: a real ``fleet-daemon`` with 50 agents beside ``supervisord``.

The Daemon runs 50 agents (``/bin/sleep``), samples their resources every 10 s into its
history, and talks to a real Manager (heartbeats, metrics, agent syncs); supervisord runs
the same 50 programs. After a warm-up, both processes are sampled every second over the
window: peak RSS, USS (memory only that process holds) and CPU as % of one core.

The history's 24 h fill is measured separately (``bench/daemon_history_memory.py``): a
window here cannot fill a day of samples.

    python -m bench.daemon_footprint --window 60
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from bench._common import (
    DEFAULT_CACHE,
    dev_certs,
    emit_json,
    machine_info,
    print_table,
    spawn_manager,
)
from bench._supervisors import daemon_agent, fleet_daemon, supervisord

TARGET_RSS_MB = 60.0
TARGET_CPU_PCT = 2.0


def _watch(pid: int, warmup: float, window: float) -> dict[str, float]:
    proc = psutil.Process(pid)
    time.sleep(warmup)
    cpu0 = proc.cpu_times()
    t0 = time.monotonic()
    rss: list[float] = []
    uss: list[float] = []
    while time.monotonic() - t0 < window:
        info = proc.memory_full_info()
        rss.append(info.rss / 2**20)
        uss.append(info.uss / 2**20)
        time.sleep(1.0)
    cpu1 = proc.cpu_times()
    elapsed = time.monotonic() - t0
    cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {
        "rss_mb_peak": max(rss),
        "rss_mb_last": rss[-1],
        "uss_mb_peak": max(uss),
        "cpu_percent_of_core": 100.0 * cpu / elapsed,
        "window_s": elapsed,
        "children": len(proc.children()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="daemon_footprint", description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before sampling")
    parser.add_argument("--window", type=float, default=60.0, help="seconds sampled")
    parser.add_argument("--history-interval", type=float, default=10.0)
    parser.add_argument("--no-manager", action="store_true", help="Daemon without a Manager")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    ca_dir = dev_certs(args.cache_dir / "ca")
    names = [f"agent-{i:02d}" for i in range(args.agents)]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fleet-bench-footprint-") as tmp:
        work = Path(tmp)
        (work / "d").mkdir()
        (work / "s").mkdir()
        with contextlib.ExitStack() as stack:
            manager = None if args.no_manager else stack.enter_context(
                spawn_manager(cert_dir=ca_dir)
            )  # fmt: skip
            daemon = stack.enter_context(fleet_daemon(
                work / "d", ca_dir=ca_dir, cache_dir=args.cache_dir, node_id="bench-footprint",
                agents=[daemon_agent(n) for n in names],
                manager_address=manager.address if manager else None,
                history_interval=args.history_interval,
            ))  # fmt: skip
            results["fleet-daemon"] = _watch(daemon.pid, args.warmup, args.window)
        programs = {n: {"autorestart": "true"} for n in names}
        with supervisord(work / "s", programs) as sd:
            results["supervisord"] = _watch(sd.pid, args.warmup, args.window)
    out = sys.stderr if args.json else sys.stdout
    print(f"{args.agents} agents (/bin/sleep), Daemon history every {args.history_interval:g}s"
          f"{'' if args.no_manager else ', talking to a real Manager'}; "
          f"{args.window:g}s window after {args.warmup:g}s warm-up", file=out)  # fmt: skip
    print_table(
        ["supervisor", "children", "RSS MB (peak)", "USS MB (peak)", "CPU % of a core",
         "target RSS MB", "target CPU %"],
        [[who, r["children"], r["rss_mb_peak"], r["uss_mb_peak"], r["cpu_percent_of_core"],
          TARGET_RSS_MB if who == "fleet-daemon" else "-",
          TARGET_CPU_PCT if who == "fleet-daemon" else "-"] for who, r in results.items()],
        file=out,
    )  # fmt: skip
    if args.json:
        emit_json({"results": results, "machine": machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
