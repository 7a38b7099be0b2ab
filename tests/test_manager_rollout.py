"""The Manager's spec controller and rollouts, end to end through a real fleet-manager.

The Daemons here are in-test: :class:`SpecDaemon` serves DaemonService.ApplySpecs on a
real grpclib server over mutual TLS with its node's certificate from tools/certgen.py,
registers, heartbeats and reports (SyncAgentStates with spec states) through the real
ManagerService with that certificate, and does what docs/specs.md asks of a Daemon:
verifies each signed spec against the fleet CA, refuses an older revision than one it
has seen, an expired one, or one whose target does not name it, removes specs absent
from the set, and reports a SpecState per spec. What it does not do is run processes:
its agents become RUNNING after a short start delay (or when the test releases them),
or fail as a test tells them to. The Manager cannot tell it from a real Daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from grpclib.server import Server
from harness import async_wait_until, free_port
from harness.manager import (
    ManagerProc,
    admin_channel,
    node_channel,
    sign_spec,
    spec_document,
    start_manager,
    write_manager_config,
)

from common.specdoc import SpecDoc, SpecError, load_ca_certs, verify
from common.tls import TLSFiles, server_context
from schema import admin_pb, daemon_pb, manager_pb

NODES = ("n1", "n2", "n3", "n4", "n5")
WEB = {"id": "web", "command": ["/usr/sbin/nginx"], "start_seconds": "1s"}
WEB2 = dict(WEB, command=["/usr/sbin/nginx", "-g", "daemon off;"])
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def fleet_certs(tmp_path_factory: pytest.TempPathFactory, certgen: ModuleType) -> Path:
    directory = tmp_path_factory.mktemp("rollout-certs")
    certgen.dev(directory, list(NODES), echo=lambda _line: None)
    return directory


def manager_args(tmp_path: Path) -> list[str]:
    """Quick rollout steps and drift sweeps; unreachable Daemons fail fast."""
    cfg = write_manager_config(
        tmp_path / "manager.toml",
        {
            "specs": {"rollout_interval": "0.2s", "sweep_interval": "2s"},
            "daemons": {"connect_attempts": 2, "backoff_initial": 0.1, "connect_timeout": 1},
        },
    )
    return ["--config", str(cfg)]


@dataclass
class Watch:
    """What the Daemons saw, fleet-wide: nodes moving from one revision to another
    (took a new revision while running an older one, not RUNNING on it yet)."""

    changing: set[str] = field(default_factory=set)
    max_changing: int = 0

    def started(self, node_id: str) -> None:
        self.changing.add(node_id)
        self.max_changing = max(self.max_changing, len(self.changing))

    def settled(self, node_id: str) -> None:
        self.changing.discard(node_id)


class SpecDaemon(daemon_pb.DaemonServiceBase):
    """An honest in-test Daemon for specs (module doc)."""

    def __init__(
        self, node_id: str, labels: dict[str, str], *, certs: Path, manager_port: int, watch: Watch
    ) -> None:
        self.node_id = node_id
        self.labels = labels
        self.certs = certs
        self.manager_port = manager_port
        self.watch = watch
        self.port = free_port()
        self.ca = load_ca_certs(certs / "ca.crt")
        self.start_delay = 0.3
        # Agents wait for this before they are RUNNING (None: only the start delay).
        self.hold: asyncio.Event | None = None
        # (spec, revision) → reason: accepted, but an agent does not start (FAILED).
        self.fail: dict[tuple[str, int], str] = {}
        # (spec, revision) whose agents crash-loop (BACKOFF) without the spec failing.
        self.hang: set[tuple[str, int]] = set()
        self.offers: list[dict[str, int]] = []  # each ApplySpecs call's set
        self.taken: list[tuple[str, int]] = []  # revisions it started running
        self.reloads = 0
        self._seen: dict[str, tuple[int, bytes]] = {}
        self._specs: dict[str, manager_pb.SpecState] = {}
        self._agents: dict[str, manager_pb.AgentState] = {}
        self._server: Server | None = None
        self._channel: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._beating: asyncio.Task[None] | None = None
        self._sync_lock = asyncio.Lock()

    # ---- lifecycle ----

    async def start(self) -> None:
        """Serve DaemonService, register, heartbeat."""
        files = TLSFiles(
            self.certs / f"{self.node_id}.crt",
            self.certs / f"{self.node_id}.key",
            self.certs / "ca.crt",
        )
        self._server = Server([self])
        await self._server.start("127.0.0.1", self.port, ssl=server_context(files))
        self._channel = node_channel(self.certs, self.manager_port, self.node_id)
        await self.register_node()
        self._beating = asyncio.create_task(self._heartbeats())

    async def register_node(self, labels: dict[str, str] | None = None) -> None:
        if labels is not None:
            self.labels = labels
        await manager_pb.ManagerServiceStub(self._channel, timeout=10).register_node(
            manager_pb.RegisterNodeRequest(
                node_id=self.node_id,
                hostname=self.node_id,
                labels=self.labels,
                daemon_address=f"127.0.0.1:{self.port}",
                heartbeat_interval_seconds=1,
                instance_id=f"{self.node_id}-test",
            )
        )

    async def stop(self) -> None:
        """Go away like a stopped Daemon: no heartbeats, nothing listening."""
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
            self._beating = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    async def _heartbeats(self) -> None:
        stub = manager_pb.ManagerServiceStub(self._channel, timeout=5)
        while True:
            with contextlib.suppress(Exception):  # the Manager may be restarting
                await stub.heartbeat(
                    manager_pb.HeartbeatRequest(
                        node_id=self.node_id,
                        timestamp=int(time.time()),
                        instance_id=f"{self.node_id}-test",
                    )
                )
            await asyncio.sleep(0.3)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- what it holds ----

    def holds(self, name: str) -> tuple[int, str, int] | None:
        """(newest revision offered, status, running revision) of a spec, or None."""
        state = self._specs.get(name)
        return (state.revision, state.status, state.running_revision) if state else None

    def offered(self, name: str, revision: int) -> bool:
        return any(offer.get(name) == revision for offer in self.offers)

    # ---- DaemonService ----

    async def apply_specs(
        self, request: daemon_pb.ApplySpecsRequest
    ) -> daemon_pb.ApplySpecsResponse:
        offered: dict[str, int] = {}
        changes: list[daemon_pb.AgentChange] = []
        for signed in request.specs:
            try:
                doc, _signer = verify(signed, ca_certs=self.ca)
            except SpecError:
                continue
            offered[doc.name] = doc.revision
            held = self._specs.get(doc.name)
            running = held.running_revision if held is not None else 0
            why = self._refusal(doc, bytes(signed.payload))
            if why:
                self._specs[doc.name] = manager_pb.SpecState(
                    name=doc.name,
                    revision=doc.revision,
                    status="REFUSED",
                    reason=why,
                    running_revision=running,
                )
                continue
            self._seen[doc.name] = (doc.revision, bytes(signed.payload))
            if running == doc.revision:
                continue
            changes += self._take(doc, running)
        for name in [n for n in self._specs if n not in offered]:
            del self._specs[name]
            for agent_id in [a for a, s in self._agents.items() if s.spec == name]:
                del self._agents[agent_id]
                changes.append(daemon_pb.AgentChange(agent_id=agent_id, action="removed"))
        self.offers.append(offered)
        self._spawn(self.sync())
        return daemon_pb.ApplySpecsResponse(specs=list(self._specs.values()), changes=changes)

    def _refusal(self, doc: SpecDoc, payload: bytes) -> str:
        seen = self._seen.get(doc.name)
        if seen is not None and doc.revision < seen[0]:
            return f"revision {doc.revision} is older than revision {seen[0]} already seen"
        if seen is not None and doc.revision == seen[0] and payload != seen[1]:
            return f"revision {doc.revision} differs from the one seen before"
        if doc.expired():
            return f"revision {doc.revision} expired"
        if not doc.target.matches(self.node_id, self.labels):
            return f"target ({doc.target.describe()}) does not name node {self.node_id}"
        return ""

    def _take(self, doc: SpecDoc, running: int) -> list[daemon_pb.AgentChange]:
        name, revision = doc.name, doc.revision
        self.taken.append((name, revision))
        if running:
            self.watch.started(self.node_id)
        for agent_id in [a for a, s in self._agents.items() if s.spec == name]:
            del self._agents[agent_id]
        for agent in doc.agents:
            self._agents[agent.id] = manager_pb.AgentState(
                agent_id=agent.id, status="STARTING", spec=name, spec_revision=revision
            )
        failure = self.fail.get((name, revision))
        self._specs[name] = manager_pb.SpecState(
            name=name,
            revision=revision,
            status="FAILED" if failure else "APPLIED",
            reason=failure or "",
            running_revision=revision,
        )
        self._spawn(self._start_agents(doc))
        return [
            daemon_pb.AgentChange(agent_id=a.id, action="added", source=f"spec:{name}@{revision}")
            for a in doc.agents
        ]

    async def _start_agents(self, doc: SpecDoc) -> None:
        name, revision = doc.name, doc.revision
        await asyncio.sleep(self.start_delay)
        if self.hold is not None:
            await self.hold.wait()
        mine = [a for a in self._agents.values() if a.spec == name and a.spec_revision == revision]
        if not mine:
            return  # replaced or removed meanwhile
        if (name, revision) in self.fail:
            status = "FATAL"
        elif (name, revision) in self.hang:
            status = "BACKOFF"
        else:
            status = "RUNNING"
        for agent in mine:
            agent.status = status
            agent.pid = 1000 if status == "RUNNING" else 0
        if status == "RUNNING":
            self.watch.settled(self.node_id)  # before the Manager can hear of it
        await self.sync()

    async def sync(self) -> None:
        """A full SyncAgentStates with the spec states, as a Daemon sends on changes."""
        async with self._sync_lock:
            with contextlib.suppress(Exception):
                await manager_pb.ManagerServiceStub(self._channel, timeout=10).sync_agent_states(
                    manager_pb.SyncAgentStatesRequest(
                        node_id=self.node_id,
                        states=list(self._agents.values()),
                        full=True,
                        specs=list(self._specs.values()),
                    )
                )

    async def reload_config(
        self, request: daemon_pb.ReloadConfigRequest
    ) -> daemon_pb.ReloadConfigResponse:
        self.reloads += 1
        return daemon_pb.ReloadConfigResponse(
            success=True,
            changes=[daemon_pb.AgentChange(agent_id="local", action="changed", source="local")],
            unchanged=["other"],
            config_file="/etc/fleet/daemon.toml",
        )


class Fleet:
    """In-test Daemons against one Manager, and an admin stub for it."""

    def __init__(self, certs: Path, mgr: ManagerProc) -> None:
        self.certs = certs
        self.mgr = mgr
        self.watch = Watch()
        self.daemons: dict[str, SpecDaemon] = {}
        self._channel = admin_channel(certs, mgr.grpc_port)
        self.admin = admin_pb.AdminServiceStub(self._channel, timeout=15)

    async def add(self, node_id: str, labels: dict[str, str]) -> SpecDaemon:
        daemon = SpecDaemon(
            node_id, labels, certs=self.certs, manager_port=self.mgr.grpc_port, watch=self.watch
        )
        await daemon.start()
        self.daemons[node_id] = daemon
        return daemon

    async def close(self) -> None:
        for daemon in self.daemons.values():
            await daemon.stop()
        self._channel.close()

    async def apply(self, document: dict[str, Any], **kw: Any) -> admin_pb.ApplySpecResponse:
        rollback = kw.pop("rollback", None)
        request = admin_pb.ApplySpecRequest(spec=sign_spec(self.certs, document), **kw)
        if rollback is not None:
            request.rollback = sign_spec(self.certs, rollback)
        return await self.admin.apply_spec(request)

    async def rollout(self, spec: str) -> admin_pb.Rollout:
        return (await self.admin.get_rollout(admin_pb.GetRolloutRequest(spec=spec))).rollout

    async def wait_rollout(self, spec: str, *states: str) -> admin_pb.Rollout:
        async def ended() -> admin_pb.Rollout | None:
            rollout = await self.rollout(spec)
            return rollout if rollout.state in states else None

        return await async_wait_until(
            ended, timeout=TIMEOUT, interval=0.1, what=f"rollout of {spec} {'/'.join(states)}"
        )

    async def node_states(self, spec: str) -> dict[str, tuple[str, int, int]]:
        """node → (state, target revision, running revision) from GetSpec."""
        reply = await self.admin.get_spec(admin_pb.GetSpecRequest(name=spec))
        return {n.node_id: (n.state, n.target_revision, n.running_revision) for n in reply.nodes}

    async def wait_states(self, spec: str, expected: dict[str, tuple[str, int, int]]) -> None:
        async def reached() -> bool:
            return await self.node_states(spec) == expected

        try:
            await async_wait_until(reached, timeout=TIMEOUT, interval=0.1, what=f"{spec} states")
        except AssertionError:
            raise AssertionError(
                f"{spec}: {await self.node_states(spec)} != {expected}\n"
                + self.mgr.output()[-3000:]
            ) from None


@contextlib.asynccontextmanager
async def fleet_of(certs: Path, mgr: ManagerProc) -> AsyncIterator[Fleet]:
    fleet = Fleet(certs, mgr)
    try:
        yield fleet
    finally:
        await fleet.close()


def run_with_manager(
    tmp_path: Path,
    certs: Path,
    scenario: Callable[[ManagerProc], Coroutine[Any, Any, None]],
    **kw: Any,
) -> ManagerProc:
    mgr = start_manager(tmp_path, certs, extra_args=manager_args(tmp_path), **kw)
    try:
        asyncio.run(scenario(mgr))
    finally:
        assert mgr.stop() == 0, mgr.output()[-3000:]
    return mgr


async def until(predicate: Callable[[], object], what: str) -> None:
    """Wait for a condition on the in-test Daemons (they run on this event loop)."""

    async def check() -> object:
        return predicate()

    await async_wait_until(check, timeout=TIMEOUT, interval=0.05, what=what)


def converged(revision: int, *nodes: str) -> dict[str, tuple[str, int, int]]:
    return {n: ("converged", revision, revision) for n in nodes}


# ---- the tests ----


def test_label_selector_targets_only_matching_nodes(tmp_path: Path, fleet_certs: Path) -> None:
    async def scenario(mgr: ManagerProc) -> None:
        async with fleet_of(fleet_certs, mgr) as fleet:
            n1 = await fleet.add("n1", {"role": "web", "zone": "a"})
            n2 = await fleet.add("n2", {"role": "web", "zone": "b"})
            n3 = await fleet.add("n3", {"role": "db", "zone": "a"})
            doc = spec_document("web", 1, [WEB], labels={"role": "web"}, nodes=["n5"])
            reply = await fleet.apply(doc)
            assert reply.changed and [p.node_id for p in reply.plan] == ["n1", "n2"]
            await fleet.wait_states("web", converged(1, "n1", "n2"))
            rollout = await fleet.wait_rollout("web", "succeeded")
            assert (rollout.total, rollout.done, rollout.failed) == (2, 2, 0)
            assert n1.holds("web") == n2.holds("web") == (1, "APPLIED", 1)
            assert n3.offers == [] and n3.holds("web") is None  # never asked
            agents = await fleet.admin.list_agents(admin_pb.ListAgentsRequest())
            assert sorted(
                (a.node_id, a.id, a.status, a.spec, a.spec_revision) for a in agents.agents
            ) == [
                ("n1", "web", "RUNNING", "web", 1),
                ("n2", "web", "RUNNING", "web", 1),
            ]
            spec = (await fleet.admin.list_specs(admin_pb.ListSpecsRequest())).specs[0]
            assert (spec.node_count, spec.converged_count) == (2, 2)
            # ReloadDaemon is relayed to the node's Daemon.
            reload = await fleet.admin.reload_daemon(
                admin_pb.ReloadDaemonRequest(node_id="n3", dry_run=True)
            )
            assert reload.node_id == "n3" and reload.result.success
            assert reload.result.config_file == "/etc/fleet/daemon.toml"
            assert [(c.agent_id, c.action) for c in reload.result.changes] == [("local", "changed")]
            assert n3.reloads == 1

    run_with_manager(tmp_path, fleet_certs, scenario, grace=10)


def test_waves_never_exceed_max_unavailable(tmp_path: Path, fleet_certs: Path) -> None:
    async def scenario(mgr: ManagerProc) -> None:
        async with fleet_of(fleet_certs, mgr) as fleet:
            for node_id in NODES:
                await fleet.add(node_id, {"role": "web"})
            await fleet.apply(spec_document("web", 1, [WEB], labels={"role": "web"}))
            await fleet.wait_states("web", converged(1, *NODES))
            await fleet.wait_rollout("web", "succeeded")
            assert fleet.watch.max_changing == 0  # a new spec goes everywhere at once

            # The first wave's agents wait until two nodes are changing at once.
            release = asyncio.Event()
            for daemon in fleet.daemons.values():
                daemon.hold = release
            reply = await fleet.apply(
                spec_document("web", 2, [WEB2], labels={"role": "web"}),
                policy=admin_pb.RolloutPolicy(max_unavailable="2"),
            )
            assert reply.rollout.from_revision == 1
            await until(lambda: len(fleet.watch.changing) == 2, "two nodes changing")
            assert fleet.watch.changing == {"n1", "n2"}  # in node-id order
            release.set()
            await fleet.wait_states("web", converged(2, *NODES))
            rollout = await fleet.wait_rollout("web", "succeeded")
            assert (rollout.total, rollout.done, rollout.failed, rollout.pending) == (5, 5, 0, 0)
            assert fleet.watch.max_changing == 2
            for daemon in fleet.daemons.values():
                assert daemon.taken == [("web", 1), ("web", 2)]
                # A node still on 1 was offered 1 until its wave, never anything older.
                assert all(o.get("web") in (1, 2) for o in daemon.offers)
                assert daemon.holds("web") == (2, "APPLIED", 2)

    run_with_manager(tmp_path, fleet_certs, scenario, grace=10)


def test_failures_stop_the_rollout_and_auto_rollback_reverts(
    tmp_path: Path, fleet_certs: Path, db_url: str
) -> None:
    async def scenario(mgr: ManagerProc) -> None:
        async with fleet_of(fleet_certs, mgr) as fleet:
            nodes = ("n1", "n2", "n3")
            for node_id in nodes:
                await fleet.add(node_id, {"role": "web"})
            n1 = fleet.daemons["n1"]

            # Without auto_rollback: the first failure stops the waves.
            await fleet.apply(spec_document("web", 1, [WEB], labels={"role": "web"}))
            await fleet.wait_states("web", converged(1, *nodes))
            n1.fail[("web", 2)] = "agent web did not start: exec format error"
            await fleet.apply(
                spec_document("web", 2, [WEB2], labels={"role": "web"}),
                policy=admin_pb.RolloutPolicy(max_unavailable="1"),
            )
            rollout = await fleet.wait_rollout("web", "failed")
            assert rollout.failed_nodes == ["n1"] and rollout.failed == 1
            assert "n1: FAILED: agent web did not start" in rollout.reason
            assert "max_failures 0" in rollout.reason
            states = await fleet.node_states("web")
            assert states["n1"][0] == "failed"
            assert states["n2"] == states["n3"] == ("pending", 1, 1)  # kept where they were
            for node_id in ("n2", "n3"):
                assert not fleet.daemons[node_id].offered("web", 2)

            # With auto_rollback and a pre-signed rollback: a node that never gets healthy
            # (its agents crash-loop) fails at the deadline and revision 3 (= 1) goes out.
            await fleet.apply(spec_document("api", 1, [WEB], labels={"role": "web"}))
            await fleet.wait_states("api", converged(1, *nodes))
            n1.hang.add(("api", 2))
            await fleet.apply(
                spec_document("api", 2, [WEB2], labels={"role": "web"}),
                policy=admin_pb.RolloutPolicy(
                    max_unavailable="1", auto_rollback=True, healthy_deadline_seconds=2
                ),
                rollback=spec_document(
                    "api",
                    3,
                    [WEB],
                    labels={"role": "web"},
                    rollback_of=2,
                    expires_at=int(time.time()) + 86400,
                ),
            )
            rollout = await fleet.wait_rollout("api", "rolled_back")
            assert rollout.failed_nodes == ["n1"]
            assert "n1: not healthy within 2 s: agent web is BACKOFF" in rollout.reason
            assert "rolled back to revision 3 (the content of revision 1)" in rollout.reason
            await fleet.wait_states("api", converged(3, *nodes))
            spec = await fleet.admin.get_spec(admin_pb.GetSpecRequest(name="api"))
            assert (spec.spec.revision, spec.spec.next_revision) == (3, 4)
            assert (spec.current.revision, spec.current.kind) == (3, "rollback")
            assert [(h.revision, h.kind, h.signed_by, h.applied_by) for h in spec.history] == [
                (3, "rollback", "admin/admin", "auto-rollback"),
                (2, "apply", "admin/admin", "admin/admin"),
                (1, "apply", "admin/admin", "admin/admin"),
            ]
            assert n1.taken[-2:] == [("api", 2), ("api", 3)]
            for node_id in ("n2", "n3"):
                daemon = fleet.daemons[node_id]
                assert not daemon.offered("api", 2)
                assert daemon.holds("api") == (3, "APPLIED", 3)

    run_with_manager(tmp_path, fleet_certs, scenario, grace=10, db_url=db_url)


def test_pause_stops_new_waves_and_resume_continues(tmp_path: Path, fleet_certs: Path) -> None:
    async def scenario(mgr: ManagerProc) -> None:
        async with fleet_of(fleet_certs, mgr) as fleet:
            nodes = ("n1", "n2", "n3", "n4")
            for node_id in nodes:
                await fleet.add(node_id, {"role": "web"})
            await fleet.apply(spec_document("web", 1, [WEB], labels={"role": "web"}))
            await fleet.wait_states("web", converged(1, *nodes))
            await fleet.wait_rollout("web", "succeeded")
            release = asyncio.Event()
            for daemon in fleet.daemons.values():
                daemon.hold = release
            await fleet.apply(
                spec_document("web", 2, [WEB2], labels={"role": "web"}),
                policy=admin_pb.RolloutPolicy(max_unavailable="1"),
            )
            n1 = fleet.daemons["n1"]
            await until(lambda: n1.offered("web", 2), "n1 offered web@2")
            paused = await fleet.admin.set_rollout_state(
                admin_pb.SetRolloutStateRequest(spec="web", action="pause")
            )
            assert paused.rollout.state == "paused"
            assert paused.rollout.reason == "paused by admin/admin"
            release.set()

            async def n1_done() -> admin_pb.Rollout | None:
                rollout = await fleet.rollout("web")
                return rollout if rollout.done == 1 and rollout.in_progress == 0 else None

            rollout = await async_wait_until(n1_done, timeout=TIMEOUT, what="n1 done")
            # The step that saw n1 done would have started the next wave: it did not.
            assert rollout.state == "paused" and rollout.pending == 3
            for node_id in ("n2", "n3", "n4"):
                assert not fleet.daemons[node_id].offered("web", 2)
            states = await fleet.node_states("web")
            assert states["n2"] == ("pending", 1, 1)
            # Pausing again is a no-op; resuming continues.
            again = await fleet.admin.set_rollout_state(
                admin_pb.SetRolloutStateRequest(spec="web", action="pause")
            )
            assert again.rollout.state == "paused"
            resumed = await fleet.admin.set_rollout_state(
                admin_pb.SetRolloutStateRequest(spec="web", action="resume")
            )
            assert resumed.rollout.state == "running"
            await fleet.wait_rollout("web", "succeeded")
            await fleet.wait_states("web", converged(2, *nodes))
            assert fleet.watch.max_changing == 1

    run_with_manager(tmp_path, fleet_certs, scenario, grace=10)


def test_rollout_resumes_after_manager_restart(
    tmp_path: Path, fleet_certs: Path, db_url: str
) -> None:
    port = free_port()
    args = manager_args(tmp_path)
    kw: dict[str, Any] = {"grpc_port": port, "grace": 10, "extra_args": args, "db_url": db_url}
    mgr = start_manager(tmp_path, fleet_certs, **kw)
    restarted: list[ManagerProc] = []

    async def scenario() -> None:
        nonlocal mgr
        async with fleet_of(fleet_certs, mgr) as fleet:
            nodes = ("n1", "n2", "n3")
            for node_id in nodes:
                await fleet.add(node_id, {"role": "web"})
            await fleet.apply(spec_document("web", 1, [WEB], labels={"role": "web"}))
            await fleet.wait_states("web", converged(1, *nodes))
            holds = {n: asyncio.Event() for n in nodes}
            for node_id, daemon in fleet.daemons.items():
                daemon.hold = holds[node_id]
            started = await fleet.apply(
                spec_document("web", 2, [WEB2], labels={"role": "web"}),
                policy=admin_pb.RolloutPolicy(max_unavailable="1"),
            )
            n1, n2, n3 = (fleet.daemons[n] for n in nodes)
            await until(lambda: n1.offered("web", 2), "n1 offered web@2")
            holds["n1"].set()
            await until(lambda: n2.offered("web", 2), "n2 offered web@2")

            # n2 is in progress: restart the Manager on the same database and port.
            assert await asyncio.to_thread(mgr.stop) == 0
            mgr = await asyncio.to_thread(
                start_manager, tmp_path, fleet_certs, log_name="manager2.log", **kw
            )
            restarted.append(mgr)
            fleet.mgr = mgr
            holds["n2"].set()
            holds["n3"].set()
            rollout = await fleet.wait_rollout("web", "succeeded")
            assert rollout.started_at == started.rollout.started_at  # the same rollout
            assert (rollout.total, rollout.done) == (3, 3)
            await fleet.wait_states("web", converged(2, *nodes))
            assert fleet.watch.max_changing == 1
            for daemon in (n1, n2, n3):
                assert daemon.taken == [("web", 1), ("web", 2)]

    try:
        asyncio.run(scenario())
    finally:
        assert mgr.stop() == 0, mgr.output()[-3000:]
    # The second Manager started the last wave.
    assert (
        restarted and "rollout of web revision 2: wave" in (tmp_path / "manager2.log").read_text()
    )


def test_offline_node_converges_when_it_registers_again(tmp_path: Path, fleet_certs: Path) -> None:
    async def scenario(mgr: ManagerProc) -> None:
        async with fleet_of(fleet_certs, mgr) as fleet:
            await fleet.add("n1", {"role": "web"})
            n2 = await fleet.add("n2", {"role": "web"})
            await n2.stop()

            async def n2_offline() -> bool:
                nodes = await fleet.admin.list_nodes(admin_pb.ListNodesRequest(status="offline"))
                return [n.node_id for n in nodes.nodes] == ["n2"]

            await async_wait_until(n2_offline, timeout=TIMEOUT, what="n2 offline")
            await fleet.apply(spec_document("web", 1, [WEB], labels={"role": "web"}))
            rollout = await fleet.wait_rollout("web", "succeeded")
            assert (rollout.total, rollout.done) == (1, 1)  # an offline node is not waited for
            await fleet.wait_states("web", {**converged(1, "n1"), "n2": ("offline", 1, 0)})
            assert n2.offers == []
            await n2.start()  # back: registers again
            await fleet.wait_states("web", converged(1, "n1", "n2"))
            assert n2.holds("web") == (1, "APPLIED", 1)

    run_with_manager(tmp_path, fleet_certs, scenario, grace=3)


def test_new_and_relabelled_nodes_converge_on_registration(
    tmp_path: Path, fleet_certs: Path
) -> None:
    async def scenario(mgr: ManagerProc) -> None:
        async with fleet_of(fleet_certs, mgr) as fleet:
            await fleet.add("n1", {"role": "web"})
            n3 = await fleet.add("n3", {"role": "db"})
            await fleet.apply(spec_document("web", 1, [WEB], labels={"role": "web"}))
            await fleet.wait_states("web", converged(1, "n1"))
            await fleet.wait_rollout("web", "succeeded")

            n4 = await fleet.add("n4", {"role": "web"})  # a new node
            await fleet.wait_states("web", converged(1, "n1", "n4"))
            assert n4.holds("web") == (1, "APPLIED", 1)

            await n3.register_node({"role": "web"})  # its labels now match
            await fleet.wait_states("web", converged(1, "n1", "n3", "n4"))
            await n3.register_node({"role": "db"})  # and no longer: its agents go
            await until(lambda: n3.holds("web") is None and n3.offers[-1] == {}, "web off n3")
            # n3 holds nothing of it any more, and is not targeted: it is not listed.
            await fleet.wait_states("web", converged(1, "n1", "n4"))
            agents = await fleet.admin.list_agents(admin_pb.ListAgentsRequest(node_id="n3"))
            assert agents.agents == []

    run_with_manager(tmp_path, fleet_certs, scenario, grace=10)


def test_a_new_apply_supersedes_a_running_rollout(tmp_path: Path, fleet_certs: Path) -> None:
    async def scenario(mgr: ManagerProc) -> None:
        async with fleet_of(fleet_certs, mgr) as fleet:
            nodes = ("n1", "n2", "n3")
            for node_id in nodes:
                await fleet.add(node_id, {"role": "web"})
            await fleet.apply(spec_document("web", 1, [WEB], labels={"role": "web"}))
            await fleet.wait_states("web", converged(1, *nodes))
            release = asyncio.Event()
            for daemon in fleet.daemons.values():
                daemon.hold = release
            await fleet.apply(
                spec_document("web", 2, [WEB2], labels={"role": "web"}),
                policy=admin_pb.RolloutPolicy(max_unavailable="1"),
            )
            n1 = fleet.daemons["n1"]
            await until(lambda: n1.offered("web", 2), "n1 offered web@2")
            # Revision 3 while n1 is moving to 2 and n2, n3 still run 1.
            web3 = dict(WEB2, start_seconds="2s")
            reply = await fleet.apply(
                spec_document("web", 3, [web3], labels={"role": "web"}),
                policy=admin_pb.RolloutPolicy(max_unavailable="1"),
            )
            assert (reply.rollout.revision, reply.rollout.from_revision) == (3, 2)
            assert "rollout of web revision 2 interrupted: superseded by revision 3" in (
                mgr.output()
            )
            release.set()
            rollout = await fleet.wait_rollout("web", "succeeded")
            assert rollout.revision == 3 and (rollout.total, rollout.done) == (3, 3)
            await fleet.wait_states("web", converged(3, *nodes))
            for daemon in fleet.daemons.values():
                offered = [offer["web"] for offer in daemon.offers if "web" in offer]
                assert offered == sorted(offered), (daemon.node_id, offered)  # never back
                assert daemon.holds("web") == (3, "APPLIED", 3)
            assert fleet.watch.max_changing == 1

    run_with_manager(tmp_path, fleet_certs, scenario, grace=10)
