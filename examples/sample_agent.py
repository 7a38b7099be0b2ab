"""A sample Fleet agent: registers with its Daemon, heartbeats, follows its config.

Run it under a Daemon (see ``examples/daemon.toml``); it reads from its config:

* ``greeting`` (string, default "hello") — logged with every unit of work;
* ``work_interval`` (seconds, default 5) — how often it does a unit of work.

A config pushed with ``fleetctl config push`` reaches it on its next heartbeat and takes
effect without a restart. It reports a ``jobs_done`` counter and the duration of the
last job to the Daemon (visible on the Daemon's ``/metrics``), and exits cleanly on
SIGTERM. Its stdout/stderr end up in ``<state_dir>/logs/<agent id>.std{out,err}.log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import sys
import time
from typing import Any

from daemon.agent_sdk import AgentClient, NotSupervised

log = logging.getLogger("sample_agent")

VERSION = "1.0.0"


class Worker:
    """The agent's "business logic": hash some bytes every ``work_interval`` seconds."""

    def __init__(self) -> None:
        self.greeting = "hello"
        self.interval = 5.0
        self.jobs_done = 0

    def configure(self, config: dict[str, Any]) -> None:
        self.greeting = str(config.get("greeting", "hello"))
        try:
            self.interval = max(0.1, float(config.get("work_interval", 5)))
        except (TypeError, ValueError):
            log.warning("ignoring bad work_interval %r", config.get("work_interval"))
        log.info("configured: greeting=%r work_interval=%.1fs", self.greeting, self.interval)

    def work(self) -> float:
        started = time.perf_counter()
        digest = hashlib.sha256(os.urandom(256 * 1024)).hexdigest()
        self.jobs_done += 1
        took = time.perf_counter() - started
        log.info(
            "%s! job %d done (%s…) in %.1f ms",
            self.greeting,
            self.jobs_done,
            digest[:8],
            took * 1000,
        )
        return took


async def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        client = AgentClient.from_env(version=VERSION, info={"language": "python"})
    except NotSupervised as exc:
        print(f"sample_agent: {exc}", file=sys.stderr)
        return 2
    worker = Worker()
    async with client as agent:
        log.info("registered as %s (config hash %s)", agent.agent_id, agent.config_hash[:12])
        worker.configure(agent.config)
        async with agent.heartbeats(on_config=worker.configure):
            while not stop.is_set():
                took = await asyncio.to_thread(worker.work)
                try:
                    await agent.report({"jobs_done": worker.jobs_done, "job_seconds": took})
                except Exception as exc:  # the Daemon may be restarting: keep working
                    log.warning("could not report metrics: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), worker.interval)
    log.info("stopping after %d jobs", worker.jobs_done)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
