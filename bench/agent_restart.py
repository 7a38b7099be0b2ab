"""Agent crash -> RUNNING again: a real ``fleet-daemon`` beside ``supervisord``.

Both supervise the same program (``/bin/sleep``, so nothing but the supervisor is
measured). Each trial SIGKILLs the running agent and polls the supervisor's own API
every 2 ms (the Daemon's ListAgents over mTLS; supervisord's getProcessInfo over its
Unix-socket XML-RPC) until it reports RUNNING with a new pid. Every crash is a *first*
restart: the agent has run past its backoff reset before it is killed.

Two settings are measured for each: the defaults (the Daemon's ``start_seconds = 1`` and
``backoff_initial = 1 s``; supervisord's ``startsecs = 1``, which restarts a crashed
RUNNING program at once) and "immediate" (``start_seconds = 0`` / ``startsecs = 0``, so
RUNNING means spawned).

    python -m bench.agent_restart --trials 15
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpclib.client import Channel

from bench._common import DEFAULT_CACHE, dev_certs, emit_json, latency_summary, print_table
from bench._supervisors import daemon_agent, fleet_daemon, supervisord
from common.tls import TLSFiles, client_context
from schema import daemon_pb

TARGET_P50_MS = 100.0
POLL = 0.002
SETTLE = 1.2  # > backoff_reset below: every crash is a first restart


async def _daemon_trials(handle: Any, agent_id: str, trials: int, timeout: float) -> list[float]:
    d = handle.cert_dir
    ctx = client_context(TLSFiles(d / "admin.crt", d / "admin.key", d / "ca.crt"),
                         expect_role="node", expect_name=handle.node_id)  # fmt: skip
    channel = Channel("127.0.0.1", handle.grpc_port, ssl=ctx)
    stub = daemon_pb.DaemonServiceStub(channel, timeout=10)

    async def state() -> tuple[str, int]:
        reply = await stub.list_agents(daemon_pb.ListAgentsRequest())
        for a in reply.agents:
            if a.id == agent_id:
                return a.status, a.pid
        return "", 0

    async def wait_running(not_pid: int) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, pid = await state()
            if status == "RUNNING" and pid and pid != not_pid:
                return time.perf_counter()
            await asyncio.sleep(POLL)
        raise TimeoutError(f"{agent_id} not RUNNING again within {timeout}s")

    samples = []
    try:
        await wait_running(0)
        for _ in range(trials):
            await asyncio.sleep(SETTLE)
            _, pid = await state()
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            samples.append(await wait_running(pid) - t0)
    finally:
        channel.close()
    return samples


def _supervisord_trials(handle: Any, name: str, trials: int, timeout: float) -> list[float]:
    def wait_running(not_pid: int) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = handle.proxy.supervisor.getProcessInfo(name)
            if info["statename"] == "RUNNING" and info["pid"] and info["pid"] != not_pid:
                return time.perf_counter()
            time.sleep(POLL)
        raise TimeoutError(f"{name} not RUNNING again within {timeout}s")

    samples = []
    wait_running(0)
    for _ in range(trials):
        time.sleep(SETTLE)
        pid = handle.proxy.supervisor.getProcessInfo(name)["pid"]
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        samples.append(wait_running(pid) - t0)
    return samples


SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (Daemon agent settings, supervisord program settings)
    "defaults": ({}, {"autorestart": "true"}),
    "immediate": ({"start_seconds": 0}, {"autorestart": "true", "startsecs": 0}),
    # What the Daemon's supervision costs without its fixed first-restart delay.
    "no-delay": (
        {"start_seconds": 0, "backoff_initial": 0.001, "backoff_max": 0.001},
        {"autorestart": "true", "startsecs": 0},
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agent_restart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--settings", default="defaults,immediate,no-delay")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    ca_dir = dev_certs(args.cache_dir / "ca")
    rows, results = [], {}
    for setting in [s for s in args.settings.split(",") if s]:
        daemon_settings, sd_settings = SETTINGS[setting]
        with tempfile.TemporaryDirectory(prefix="fleet-bench-restart-") as tmp:
            work = Path(tmp)
            (work / "d").mkdir()
            (work / "s").mkdir()
            agent = daemon_agent(
                "crashy", backoff_reset=1.0, max_restarts=10_000, restart_window=1.0,
                **daemon_settings,
            )  # fmt: skip
            with fleet_daemon(work / "d", ca_dir=ca_dir, cache_dir=args.cache_dir,
                              node_id="bench-restart", agents=[agent]) as handle:  # fmt: skip
                daemon_s = asyncio.run(_daemon_trials(handle, "crashy", args.trials, 30.0))
            with supervisord(work / "s", {"crashy": sd_settings}) as sd:
                sd_s = _supervisord_trials(sd, "crashy", args.trials, 30.0)
        for who, samples in (("fleet-daemon", daemon_s), ("supervisord", sd_s)):
            summary = latency_summary(samples)
            results[f"{who}/{setting}"] = {**summary, "samples_ms": [s * 1000 for s in samples]}
            rows.append([who, setting, len(samples), summary["p50_ms"], summary["p99_ms"],
                         summary["max_ms"], TARGET_P50_MS])  # fmt: skip
    out = sys.stderr if args.json else sys.stdout
    print(f"agent crash (SIGKILL) -> RUNNING again, first restart, {args.trials} trials; "
          f"polled every {POLL * 1000:g} ms", file=out)  # fmt: skip
    print_table(["supervisor", "settings", "trials", "p50 ms", "p99 ms", "max ms",
                 "target p50 ms"], rows, file=out)  # fmt: skip
    print("settings: defaults = Daemon start_seconds 1 s + backoff_initial 1 s, supervisord "
          "startsecs 1; immediate = start_seconds 0 / startsecs 0; no-delay = immediate with "
          "the Daemon's backoff_initial 1 ms", file=out)  # fmt: skip
    if args.json:
        emit_json(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
