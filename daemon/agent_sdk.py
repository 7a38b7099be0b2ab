"""A tiny SDK for agent processes: talk to the local Daemon in a few lines.

The Daemon starts every agent with three environment variables: ``FLEET_AGENT_ID``,
``FLEET_AGENT_TOKEN`` (a per-agent secret, new at every spawn) and
``FLEET_AGENT_SOCKET`` (the Daemon's agent-API Unix socket). ::

    from daemon.agent_sdk import AgentClient

    async def main() -> None:
        async with AgentClient.from_env(version="1.2.0") as agent:
            print("my config:", agent.config)
            async with agent.heartbeats(on_config=lambda cfg: print("new config", cfg)):
                while True:
                    await agent.report({"jobs_done": 3})
                    await asyncio.sleep(5)

``heartbeats()`` runs a background heartbeat loop (at the interval the Daemon asked for)
that fetches the config again whenever its hash changes. See ``docs/agent-api.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from grpclib.client import Channel

from schema import daemon_pb

log = logging.getLogger(__name__)

ConfigCallback = Callable[[dict[str, Any]], Awaitable[None] | None]


class NotSupervised(RuntimeError):
    """The process was not started by a Fleet Daemon (FLEET_AGENT_* are missing)."""


class AgentClient:
    """One agent's connection to its Daemon (async context manager)."""

    def __init__(
        self,
        *,
        agent_id: str,
        token: str,
        socket_path: str,
        version: str = "",
        info: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.agent_id = agent_id
        self._token = token
        # Checked by the Daemon before it reads a request; the body carries them too, for
        # Daemons that only read them there.
        self._metadata = {"fleet-agent-id": agent_id, "fleet-agent-token": token}
        self._socket = socket_path
        self.version = version
        self.info = dict(info or {})
        self.timeout = timeout
        self.config: dict[str, Any] = {}
        self.config_hash = ""
        self.heartbeat_interval = 10.0
        self._channel: Channel | None = None
        self._stub: daemon_pb.DaemonServiceStub | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        version: str = "",
        info: Mapping[str, str] | None = None,
    ) -> AgentClient:
        """Build from ``FLEET_AGENT_ID`` / ``FLEET_AGENT_TOKEN`` / ``FLEET_AGENT_SOCKET``."""
        env = os.environ if environ is None else environ
        missing = [
            k
            for k in ("FLEET_AGENT_ID", "FLEET_AGENT_TOKEN", "FLEET_AGENT_SOCKET")
            if not env.get(k)
        ]
        if missing:
            raise NotSupervised(f"not started by a Fleet Daemon: {', '.join(missing)} unset")
        return cls(
            agent_id=env["FLEET_AGENT_ID"],
            token=env["FLEET_AGENT_TOKEN"],
            socket_path=env["FLEET_AGENT_SOCKET"],
            version=version,
            info=info,
        )

    async def __aenter__(self) -> AgentClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def connect(self) -> None:
        """Open the socket, register, and fetch the config."""
        self._channel = Channel(path=self._socket)
        self._stub = daemon_pb.DaemonServiceStub(self._channel)
        await self.register()
        await self.fetch_config()

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    @property
    def stub(self) -> daemon_pb.DaemonServiceStub:
        if self._stub is None:
            raise RuntimeError("AgentClient is not connected")
        return self._stub

    async def register(self) -> daemon_pb.RegisterResponse:
        reply = await self.stub.register(
            daemon_pb.RegisterRequest(
                agent_id=self.agent_id,
                token=self._token,
                pid=os.getpid(),
                version=self.version,
                info=self.info,
            ),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        if reply.heartbeat_interval_seconds > 0:
            self.heartbeat_interval = float(reply.heartbeat_interval_seconds)
        return reply

    async def fetch_config(self) -> dict[str, Any]:
        """Fetch the effective config (also stored in ``.config`` / ``.config_hash``)."""
        reply = await self.stub.get_config(
            daemon_pb.ConfigRequest(agent_id=self.agent_id, token=self._token),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        self.config = json.loads(reply.config_json) if reply.config_json else {}
        self.config_hash = reply.config_hash
        return self.config

    async def heartbeat(self, health: str = "ok") -> bool:
        """One heartbeat; True when the Daemon holds a config we have not fetched yet."""
        reply = await self.stub.heartbeat(
            daemon_pb.HeartbeatRequest(
                agent_id=self.agent_id,
                token=self._token,
                timestamp=int(time.time()),
                health=health,
            ),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return bool(reply.config_hash) and reply.config_hash != self.config_hash

    async def report(
        self, metrics: Mapping[str, float], labels: Mapping[str, str] | None = None
    ) -> int:
        """Report named values (exposed on the Daemon's /metrics); returns how many it took."""
        now = int(time.time())
        reply = await self.stub.report_metrics(
            daemon_pb.MetricsRequest(
                agent_id=self.agent_id,
                token=self._token,
                metrics=[
                    daemon_pb.AgentMetric(
                        name=name, value=float(value), timestamp=now, labels=dict(labels or {})
                    )
                    for name, value in metrics.items()
                ],
            ),
            timeout=self.timeout,
            metadata=self._metadata,
        )
        return reply.accepted

    @contextlib.asynccontextmanager
    async def heartbeats(
        self,
        *,
        on_config: ConfigCallback | None = None,
        health: Callable[[], str] = lambda: "ok",
    ) -> AsyncIterator[None]:
        """Heartbeat in the background while the block runs; refetch config on change."""
        task = asyncio.create_task(self._heartbeat_loop(on_config, health))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _heartbeat_loop(
        self, on_config: ConfigCallback | None, health: Callable[[], str]
    ) -> None:
        while True:
            try:
                if await self.heartbeat(health()):
                    config = await self.fetch_config()
                    log.info("config changed (hash %s)", self.config_hash[:12])
                    if on_config is not None:
                        result = on_config(config)
                        if asyncio.iscoroutine(result):
                            await result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The Daemon may be restarting: keep trying, it re-adopts us.
                log.warning("heartbeat to the Daemon failed: %s", exc)
            await asyncio.sleep(self.heartbeat_interval)
