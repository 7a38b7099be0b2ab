"""Issue 11 item 4: a Manager that stalls, or loses its network, must not blame the nodes.

* The real Manager process is stopped (SIGSTOP) for longer than the grace and continued,
  while real Daemons and in-test heartbeat clients keep sending: no honest node changes
  status, a node that stopped just before the stall still goes offline (its event says
  how much of its silence was the Manager's), and one that died long before went offline
  on time. The mass-silence hold is off in that test: the stall clock alone protects.
* Most nodes go silent at once while the Manager runs (its network, not the nodes): the
  transitions are held, visible in /metrics and the log, then released after the hold;
  a lone dead node before that goes offline on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from grpclib.exceptions import GRPCError, StreamTerminatedError
from harness import async_wait_until
from harness.daemon import start_daemon
from harness.manager import (
    ManagerProc,
    admin_channel,
    fleet_certs,
    http_get,
    metric_value,
    node_channel,
    start_manager,
    write_manager_config,
)

from schema import admin_pb, manager_pb

pytestmark = pytest.mark.slow

GRACE = 3.0
HONEST = [f"hn{i}" for i in range(6)]
DAEMONS = ["dn0", "dn1"]
OTHERS = ["gone", "late", *[f"pn{i}" for i in range(8)]]


@pytest.fixture(scope="module")
def lcerts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fleet_certs(tmp_path_factory.mktemp("liveness-certs"), [*HONEST, *DAEMONS, *OTHERS])


class Beater:
    """One node heartbeating every 0.5 s over its own mTLS channel until stopped. Like a
    Daemon, it gives a call up after a timeout (1 s) and then waits a while (1 s) before
    trying again — so after a long stall some nodes have no heartbeat in flight when the
    Manager resumes, and are silent for a moment more."""

    def __init__(self, certs: Path, port: int, node_id: str) -> None:
        self.node_id = node_id
        self._certs, self._port = certs, port
        self._stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def register(self) -> None:
        channel = node_channel(self._certs, self._port, self.node_id)
        try:
            await manager_pb.ManagerServiceStub(channel, timeout=10).register_node(
                manager_pb.RegisterNodeRequest(
                    node_id=self.node_id,
                    daemon_address="127.0.0.1:1",
                    heartbeat_interval_seconds=1,
                    instance_id=f"{self.node_id}-1",
                )
            )
        finally:
            channel.close()

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self.task is not None:
            await self.task

    async def _run(self) -> None:
        channel = node_channel(self._certs, self._port, self.node_id)
        stub = manager_pb.ManagerServiceStub(channel, timeout=1.0)
        try:
            while not self._stop.is_set():
                pause = 0.5
                try:
                    await stub.heartbeat(
                        manager_pb.HeartbeatRequest(
                            node_id=self.node_id,
                            timestamp=int(time.time()),
                            instance_id=f"{self.node_id}-1",
                        )
                    )
                except (TimeoutError, GRPCError, OSError, StreamTerminatedError):
                    pause = 1.0  # back off, as a Daemon that lost its Manager does
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), pause)
        finally:
            channel.close()


async def node_view(certs: Path, port: int, node_id: str) -> admin_pb.GetNodeResponse:
    channel = admin_channel(certs, port)
    try:
        return await admin_pb.AdminServiceStub(channel, timeout=10).get_node(
            admin_pb.GetNodeRequest(node_id=node_id)
        )
    finally:
        channel.close()


async def statuses(certs: Path, port: int) -> dict[str, str]:
    channel = admin_channel(certs, port)
    try:
        reply = await admin_pb.AdminServiceStub(channel, timeout=10).list_nodes(
            admin_pb.ListNodesRequest()
        )
        return {n.node_id: n.status for n in reply.nodes}
    finally:
        channel.close()


def metrics(mgr: ManagerProc) -> str:
    return http_get(f"{mgr.http_url}/metrics")[1]


@contextlib.contextmanager
def manager(tmp_path: Path, certs: Path, liveness: Mapping[str, object]) -> Iterator[ManagerProc]:
    cfg = write_manager_config(
        tmp_path / "m.toml",
        {"liveness": {"sweep_interval": 0.2, **liveness}, "heartbeats": {"flush_interval": 0.2}},
    )
    mgr = start_manager(tmp_path, certs, grace=GRACE, extra_args=["--config", str(cfg)])
    try:
        yield mgr
    finally:
        if mgr.alive():
            mgr.signal(signal.SIGCONT)
        mgr.stop()


async def assert_never_left_online(certs: Path, port: int, nodes: list[str]) -> None:
    """Each node is online and has only its registration in its history: it never
    changed status."""
    for node_id in nodes:
        view = await node_view(certs, port, node_id)
        assert view.node.status == "online", (node_id, view.node.status)
        assert [e.reason for e in view.events] == ["registered"], (node_id, view.events)


def test_manager_stall_longer_than_grace_blames_no_honest_node(
    tmp_path: Path, lcerts: Path
) -> None:
    # The mass-silence hold is off: only the stall clock stands between a stall and a
    # fleet marked offline.
    with manager(tmp_path, lcerts, {"mass_offline_hold": 0}) as mgr:
        port = mgr.grpc_port
        daemons = [
            start_daemon(tmp_path, lcerts, node_id=d, manager_port=port, heartbeat_interval=1.0)
            for d in DAEMONS
        ]
        try:

            async def scenario() -> tuple[float, float]:
                beaters = [Beater(lcerts, port, n) for n in [*HONEST, "gone", "late"]]
                for b in beaters:
                    await b.register()
                    b.start()
                by_id = {b.node_id: b for b in beaters}

                async def registered() -> bool:
                    got = await statuses(lcerts, port)
                    return all(got.get(n) == "online" for n in [*HONEST, *DAEMONS])

                await async_wait_until(registered, timeout=30, what="every node online")
                # A node that dies now is offline on time: within its grace (+ a flush
                # and a sweep), and not before.
                await by_id["gone"].stop()
                died = time.monotonic()

                async def gone_offline() -> bool:
                    return (await statuses(lcerts, port))["gone"] == "offline"

                await async_wait_until(gone_offline, timeout=GRACE + 10, what="gone offline")
                took = time.monotonic() - died
                assert GRACE - 1.0 <= took <= GRACE + 5.0, took

                # "late" stops just before the Manager does: it really is gone.
                await by_id["late"].stop()
                os.kill(mgr.pid, signal.SIGSTOP)
                stopped = time.monotonic()
                await asyncio.sleep(8.0)  # the stall itself: > 2.5 x the grace
                os.kill(mgr.pid, signal.SIGCONT)
                resumed = time.monotonic()

                async def late_offline() -> bool:
                    return (await statuses(lcerts, port))["late"] == "offline"

                await async_wait_until(late_offline, timeout=GRACE + 20, what="late offline")
                late_after = time.monotonic() - resumed
                # A few more sweeps with everyone else still beating.
                await asyncio.sleep(2 * GRACE)
                await assert_never_left_online(lcerts, port, [*HONEST, *DAEMONS])
                for b in beaters:
                    await b.stop()
                late = await node_view(lcerts, port, "late")
                reason = late.events[0].reason
                assert "not counting" in reason and "the Manager was stalled" in reason, reason
                return resumed - stopped, late_after

            stall, late_after = asyncio.run(scenario())
        finally:
            for d in daemons:
                d.stop()
        text = metrics(mgr)
        assert (metric_value(text, "fleet_manager_event_loop_stalls_total") or 0) >= 1
        stalled = metric_value(text, "fleet_manager_event_loop_stall_seconds_total") or 0
        assert stalled >= stall - 1.5, (stalled, stall)
        assert "event loop stalled" in mgr.output()
        print(f"\nstall {stall:.1f} s measured {stalled:.1f} s; 'late' offline {late_after:.1f} s")


def test_mass_silence_is_held_then_released_and_a_lone_death_is_not(
    tmp_path: Path, lcerts: Path
) -> None:
    hold = 8.0
    cfg = {"mass_offline_min_nodes": 4, "mass_offline_share": 0.5, "mass_offline_hold": hold}
    with manager(tmp_path, lcerts, cfg) as mgr:
        port = mgr.grpc_port
        pn = [f"pn{i}" for i in range(8)]

        async def scenario() -> float:
            beaters = {n: Beater(lcerts, port, n) for n in [*pn, "gone"]}
            for b in beaters.values():
                await b.register()
                b.start()

            async def online() -> bool:
                got = await statuses(lcerts, port)
                return all(got.get(n) == "online" for n in beaters)

            await async_wait_until(online, timeout=30, what="every node online")
            # One death among nine: not a mass silence, offline on time.
            await beaters["gone"].stop()
            died = time.monotonic()

            async def gone_offline() -> bool:
                return (await statuses(lcerts, port))["gone"] == "offline"

            await async_wait_until(gone_offline, timeout=GRACE + 10, what="gone offline")
            assert time.monotonic() - died <= GRACE + 5.0
            # Six of the eight left go silent at once (the Manager's network, say).
            silent, talking = pn[:6], pn[6:]
            for n in silent:
                await beaters[n].stop()
            cut = time.monotonic()

            async def held() -> bool:
                text = metrics(mgr)
                return (metric_value(text, "fleet_manager_liveness_mass_silence") == 1) and (
                    (metric_value(text, "fleet_manager_liveness_held_nodes", reason="mass_silence")
                    or 0) >= 1
                )  # fmt: skip

            await async_wait_until(held, timeout=GRACE + 10, what="mass silence held")
            got = await statuses(lcerts, port)
            assert all(got[n] == "online" for n in pn), got  # held past their grace

            async def released() -> bool:
                got = await statuses(lcerts, port)
                return all(got[n] == "offline" for n in silent)

            await async_wait_until(released, timeout=hold + 20, what="released offline")
            released_after = time.monotonic() - cut
            assert released_after >= hold, released_after  # not before the hold ran out
            for n in silent:
                reason = (await node_view(lcerts, port, n)).events[0].reason
                assert "suspected Manager or network fault" in reason, reason
            await assert_never_left_online(lcerts, port, talking)
            # They come back: online again, and the episode is over.
            for n in silent:
                beaters[n] = Beater(lcerts, port, n)
                beaters[n].start()

            async def back() -> bool:
                got = await statuses(lcerts, port)
                gauge = metric_value(metrics(mgr), "fleet_manager_liveness_mass_silence")
                return all(got[n] == "online" for n in silent) and gauge == 0

            await async_wait_until(back, timeout=20, what="back online, episode over")
            for b in beaters.values():
                await b.stop()
            return released_after

        released_after = asyncio.run(scenario())
        log = mgr.output()
    assert "went silent at once" in log and "marking them offline" in log
    print(f"\nmass silence: 6 of 8 held, released offline {released_after:.1f} s after the cut")
