"""Many lightweight but real Daemons in one process, for benchmarks the machine cannot
hold as real ``fleet-daemon`` processes (a thousand of them do not fit on 2 cores).

Each simulated Daemon is a real grpclib DaemonService server on its own 127.0.0.1 port
with its own node certificate (the Manager checks it is *that* node's), registered with
a real Manager (RegisterNode with its address, SyncAgentStates with its agents). What it
answers is up to the service object the caller's factory makes. The fleet runs on an
event loop in a thread, so the benchmark can run ``fleetctl`` meanwhile.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from grpclib.client import Channel
from grpclib.server import Server

from common.rpc import GuardedService
from common.tls import TLSFiles, client_context, server_context
from schema import manager_pb

D = TypeVar("D")


def node_files(cert_dir: Path, name: str) -> TLSFiles:
    return TLSFiles(cert_dir / f"{name}.crt", cert_dir / f"{name}.key", cert_dir / "ca.crt")


def manager_channel(address: str, files: TLSFiles) -> Channel:
    host, _, port = address.rpartition(":")
    return Channel(host, int(port), ssl=client_context(files, expect_role="manager"))


@dataclass
class FakeFleet(Generic[D]):
    """The running fleet: its thread, the service objects, and how to stop it."""

    thread: threading.Thread
    daemons: list[D]
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event

    def call(self, coro: Any, timeout: float = 600.0) -> Any:
        """Run a coroutine on the fleet's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)


async def _start_fleet(
    *,
    address: str,
    cert_dir: Path,
    names: Sequence[str],
    make: Callable[[str], D],
    policy: Mapping[str, Collection[str]],
    labels: Callable[[str], dict[str, str]],
    states: Callable[[D], list[manager_pb.AgentState]],
) -> tuple[list[Server], list[D]]:
    servers: list[Server] = []
    daemons: list[D] = []
    sem = asyncio.Semaphore(50)

    async def one(name: str) -> None:
        files = node_files(cert_dir, name)
        daemon = make(name)
        server = Server([GuardedService(daemon, policy=policy)])
        await server.start("127.0.0.1", 0, ssl=server_context(files))
        listen_port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        servers.append(server)
        daemons.append(daemon)
        async with sem:
            channel = manager_channel(address, files)
            try:
                stub = manager_pb.ManagerServiceStub(channel, timeout=60)
                await stub.register_node(
                    manager_pb.RegisterNodeRequest(
                        node_id=name, hostname=name, ip="127.0.0.1", os="linux", arch="x86_64",
                        labels=labels(name), daemon_version="0.1.0",
                        daemon_address=f"127.0.0.1:{listen_port}",
                        heartbeat_interval_seconds=3600, instance_id=f"bench-{name}",
                    )
                )  # fmt: skip
                await stub.sync_agent_states(
                    manager_pb.SyncAgentStatesRequest(
                        node_id=name, full=True, states=states(daemon)
                    )
                )
            finally:
                channel.close()

    await asyncio.gather(*(one(n) for n in names))
    return servers, daemons


def serve_in_thread(
    *,
    address: str,
    cert_dir: Path,
    names: Sequence[str],
    make: Callable[[str], D],
    policy: Mapping[str, Collection[str]],
    labels: Callable[[str], dict[str, str]],
    states: Callable[[D], list[manager_pb.AgentState]],
    on_stop: Callable[[list[D]], Any] | None = None,
) -> FakeFleet[D]:
    """Start one DaemonService per name, registered with the Manager at ``address``."""
    ready = threading.Event()
    state: dict[str, Any] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        state["loop"] = loop
        stop = asyncio.Event()
        state["stop"] = stop

        async def run() -> None:
            try:
                servers, daemons = await _start_fleet(
                    address=address, cert_dir=cert_dir, names=names, make=make,
                    policy=policy, labels=labels, states=states,
                )  # fmt: skip
                state["daemons"] = daemons
            except Exception as exc:
                state["error"] = exc
                ready.set()
                return
            ready.set()
            try:
                await asyncio.wait_for(stop.wait(), 3600)
            finally:
                if on_stop is not None:
                    await on_stop(daemons)
                for s in servers:
                    s.close()
                await asyncio.gather(*(s.wait_closed() for s in servers))

        loop.run_until_complete(run())
        loop.close()

    thread = threading.Thread(target=main, name="fake-daemons", daemon=True)
    thread.start()
    if not ready.wait(600):
        raise RuntimeError("simulated daemons did not start within 600 s")
    if "error" in state:
        raise state["error"]
    return FakeFleet(
        thread=thread, daemons=state["daemons"], loop=state["loop"], stop=state["stop"]
    )
