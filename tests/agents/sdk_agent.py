"""Test agent using the SDK: registers, heartbeats, follows its config.

It writes its current config as JSON to ``config["out"]`` or argv[1] (each time it gets
one), exits 1 at start when the config says ``{"fail": true}``, and reports a metric.
"""

import asyncio
import json
import os
import signal
import sys

from daemon.agent_sdk import AgentClient


def write(path: str, config: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "config": config}, f)
    os.replace(tmp, path)


async def main() -> int:
    out = sys.argv[1]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with AgentClient.from_env(version="test-1", info={"role": "test"}) as agent:
        if agent.config.get("fail"):
            print("config says fail: exiting 1", flush=True)
            return 1
        write(out, agent.config)
        async with agent.heartbeats(on_config=lambda cfg: write(out, cfg)):
            await agent.report({"ticks": 1.0})
            await stop.wait()
    return 0


sys.exit(asyncio.run(main()))
