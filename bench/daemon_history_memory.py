"""How much memory does the Daemon's resource history take at full retention?

Fills the real ``daemon.history.History`` with 50 agents × 24 h of 10 s samples
(432,000 points), and measures:

* the RSS growth of this process caused by the history (everything else imported first,
  as in a Daemon);
* the RSS of a real idle ``fleet-daemon`` (no agents, Manager absent), and of one
  supervising 50 ``/bin/sleep`` agents sampled every second (with its CPU use);
* the sum: what a Daemon supervising 50 agents for a day would use.

    python bench/daemon_history_memory.py [--agents 50] [--hours 24] [--interval 10]

The issue's bound is ~60 MB RSS for the whole Daemon.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import daemon.app  # noqa: E402,F401 - everything a Daemon imports, before the baseline
from daemon.history import History, Point  # noqa: E402

MB = 1024 * 1024


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def fill(agents: int, hours: float, interval: float) -> tuple[History, int]:
    history = History(retention=hours * 3600, interval=interval)
    rng = random.Random(1)
    per_agent = int(hours * 3600 / interval)
    start = int(time.time()) - per_agent * int(interval)
    for i in range(per_agent):
        ts = start + i * int(interval)
        for a in range(agents):
            history.add(
                f"agent-{a:03d}",
                Point(
                    ts,
                    rng.uniform(0, 200),
                    rng.randint(10, 900) * MB,
                    rng.randint(100, 2000) * MB,
                    rng.randint(0, 10**12),
                    rng.randint(0, 10**12),
                    rng.randint(3, 500),
                ),
            )
    return history, per_agent * agents


def daemon_rss(agents: int = 0, run_seconds: float = 2.0) -> tuple[int, float]:
    """RSS of a real fleet-daemon (Manager absent) supervising ``agents`` ``/bin/sleep``
    agents sampled every second, after ``run_seconds``; and its CPU % over that time."""
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        config = Path(tmp) / "daemon.toml"
        lines = ["[history]", "interval = 1"]
        for i in range(agents):
            lines += [
                "[[agents]]",
                f'id = "sleep-{i:02d}"',
                'command = ["/bin/sleep", "3600"]',
                "start_seconds = 0",
            ]
        config.write_text("\n".join(lines) + "\n")
        log = Path(tmp) / "daemon.log"
        argv = [
            str(Path(sys.executable).with_name("fleet-daemon")),
            "--config",
            str(config),
            "--insecure",
            "--node-id",
            "bench",
            "--manager",
            "127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(Path(tmp) / "state"),
            "--log-level",
            "warning",
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            sock = Path(tmp) / "state" / "run" / "agent.sock"
            deadline = time.monotonic() + 30
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1)  # let start-up settle
            p = psutil.Process(proc.pid)
            cpu_before = sum(p.cpu_times()[:2])
            time.sleep(run_seconds)
            cpu = (sum(p.cpu_times()[:2]) - cpu_before) / run_seconds * 100
            return p.memory_info().rss, cpu
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--hours", type=float, default=24)
    p.add_argument("--interval", type=float, default=10)
    args = p.parse_args()

    before = rss()
    started = time.perf_counter()
    history, points = fill(args.agents, args.hours, args.interval)
    fill_s = time.perf_counter() - started
    after = rss()
    started = time.perf_counter()
    window = history.window("agent-000", 3600, time.time())
    query_ms = (time.perf_counter() - started) * 1000
    idle, _ = daemon_rss()
    busy, busy_cpu = daemon_rss(args.agents, run_seconds=20)
    growth = after - before
    print(
        f"history: {args.agents} agents x {args.hours:g} h at {args.interval:g} s "
        f"= {points:,} points"
    )
    print(
        f"  arrays hold {history.nbytes / MB:.1f} MB ({history.nbytes / points:.0f} B/point); "
        f"RSS growth {growth / MB:.1f} MB; filled in {fill_s:.1f} s"
    )
    print(f"  GetAgentMetrics 1 h window ({len(window)} points) scan: {query_ms:.1f} ms")
    print(f"idle fleet-daemon RSS: {idle / MB:.1f} MB")
    print(
        f"fleet-daemon supervising {args.agents} agents, sampled every 1 s, after 20 s: "
        f"RSS {busy / MB:.1f} MB, CPU {busy_cpu:.1f} % of one core"
    )
    print(
        f"projected RSS of that Daemon with a full {args.hours:g} h history: "
        f"{(busy + growth) / MB:.1f} MB (bound ~60 MB)"
    )
    os._exit(0)


if __name__ == "__main__":
    main()
