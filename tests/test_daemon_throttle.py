"""A throttled Daemon keeps what it was sending and comes back when told.

* The hint itself (issue 11 item 10): a refusal's "retry in N s" is a wait, N plus up to
  20 %, and only a refusal without that hint drops a metrics report.
* Every call honours it (issue 15): a stand-in Manager — a real grpclib server with the
  Manager's mTLS and GuardedService, refusing with the very wording of a full budget in
  ``common/overload.py`` — against the Daemon's real Manager link. A refused heartbeat is
  retried after the hint on the same link (no RegisterNode, no switch, the node never
  disconnected); a refused sync is sent again with the latest states; a RegisterNode
  refused ``UNAVAILABLE`` "server busy" is retried no sooner than the hint.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from harness import free_port

from common.overload import Admission, MethodLimit
from common.rpc import GuardedService
from common.tls import TLSFiles, client_context, server_context
from daemon.config import ManagerSettings, TLSSettings
from daemon.hostinfo import HostFacts, HostMetrics
from daemon.manager_client import (
    ManagerClient,
    NodeIdentity,
    StatesProvider,
    busy_delay,
    throttle_delay,
)
from daemon.outbox import Outbox
from schema import manager_pb


def test_quota_refusal_is_a_wait_not_a_drop() -> None:
    # The Manager's own wording (manager/services/manager_service.py).
    quota = GRPCError(
        Status.RESOURCE_EXHAUSTED,
        "node n1 is over its metrics quota (12000 samples per 600 s): retry in 21 s, when "
        "this report of 4 samples fits",
    )
    delays = [throttle_delay(quota) for _ in range(200)]
    assert all(d is not None and 21.0 <= d <= 21.0 * 1.2 for d in delays)
    assert len({round(d or 0, 3) for d in delays}) > 1  # spread, not in lockstep


def test_other_refusals_are_not_throttling() -> None:
    too_big = GRPCError(Status.RESOURCE_EXHAUSTED, "metrics has 5000 samples (max 1000)")
    assert throttle_delay(too_big) is None
    assert throttle_delay(GRPCError(Status.INVALID_ARGUMENT, "retry in 5 s")) is None
    assert throttle_delay(GRPCError(Status.UNAVAILABLE, "retry in 5 s")) is None
    assert throttle_delay(OSError("retry in 5 s")) is None
    assert busy_delay(GRPCError(Status.UNAVAILABLE, "connection refused")) is None
    assert busy_delay(too_big) is None


def _refusal(method: str, status: Status, retry_after: float) -> GRPCError:
    """What a Manager whose ``method`` budget is full answers (common/overload.py)."""
    admission = Admission({method: MethodLimit(1, status)}, retry_after=retry_after)
    admission.admit(method, None)
    with pytest.raises(GRPCError) as refused:
        admission.admit(method, None)
    return refused.value


def _hint(refusal: GRPCError) -> float:
    found = re.search(r"retry in ([\d.]+) s$", refusal.message or "")
    assert found is not None, refusal.message
    return float(found.group(1))


def test_the_overload_refusals_carry_a_hint_the_daemon_reads() -> None:
    for status, delay in (
        (Status.RESOURCE_EXHAUSTED, throttle_delay),
        (Status.UNAVAILABLE, busy_delay),
    ):
        refusal = _refusal("Heartbeat", status, retry_after=1.0)
        hint = _hint(refusal)
        assert 1.0 <= hint <= 2.0, refusal.message
        waits = [delay(refusal) for _ in range(100)]
        assert all(w is not None and hint <= w <= hint * 1.2 for w in waits), waits


# ---- a busy stand-in Manager against the Daemon's real link ------------------------


@dataclass
class Call:
    method: str
    at: float  # monotonic
    refused_for: float = 0.0  # the hint it was answered with (0: served)
    states: list[str] = field(default_factory=list)


class BusyManager(manager_pb.ManagerServiceBase):
    """Serves like a Manager, but refuses the first ``refuse[method]`` calls of a method
    (counted from call ``after[method]`` on) as an overloaded one does."""

    def __init__(
        self,
        *,
        refuse: dict[str, int],
        statuses: dict[str, Status],
        retry_after: float,
        after: dict[str, int] | None = None,
    ) -> None:
        self.calls: list[Call] = []
        self._refuse = dict(refuse)
        self._statuses = statuses
        self._retry_after = retry_after
        self._after = dict(after or {})

    def _arrive(self, method: str, states: Sequence[str] = ()) -> None:
        call = Call(method, time.monotonic(), states=list(states))
        self.calls.append(call)
        seen = sum(1 for c in self.calls if c.method == method)
        if seen > self._after.get(method, 0) and self._refuse.get(method, 0) > 0:
            self._refuse[method] -= 1
            status = self._statuses.get(method, Status.RESOURCE_EXHAUSTED)
            refusal = _refusal(method, status, self._retry_after)
            call.refused_for = _hint(refusal)
            raise refusal

    def of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def register_node(
        self, request: manager_pb.RegisterNodeRequest
    ) -> manager_pb.RegisterNodeResponse:
        self._arrive("RegisterNode")
        return manager_pb.RegisterNodeResponse(success=True)

    async def heartbeat(self, request: manager_pb.HeartbeatRequest) -> manager_pb.HeartbeatResponse:
        self._arrive("Heartbeat")
        return manager_pb.HeartbeatResponse(success=True)

    async def sync_agent_states(
        self, request: manager_pb.SyncAgentStatesRequest
    ) -> manager_pb.SyncAgentStatesResponse:
        self._arrive("SyncAgentStates", [f"{s.agent_id}={s.status}" for s in request.states])
        return manager_pb.SyncAgentStatesResponse(success=True)


_POLICY = {
    name: {"node"} for name in ("RegisterNode", "Heartbeat", "SyncAgentStates", "ReportMetrics")
}


@asynccontextmanager
async def _serving(certs: Path, manager: BusyManager) -> AsyncIterator[int]:
    server = Server([GuardedService(manager, policy=_POLICY)])
    files = TLSFiles(certs / "manager.crt", certs / "manager.key", certs / "ca.crt")
    port = free_port()
    await server.start("127.0.0.1", port, ssl=server_context(files))
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


def _client(
    tmp_path: Path, certs: Path, port: int, states: StatesProvider, **timing: float
) -> ManagerClient:
    """The Daemon's real Manager link to ``port`` (metrics off: a report never competes)."""
    files = TLSFiles(certs / "node-a.crt", certs / "node-a.key", certs / "ca.crt")
    settings = ManagerSettings(
        address=f"127.0.0.1:{port}",
        timeout=5.0,
        heartbeat_interval=timing.get("heartbeat_interval", 1.0),
        reconnect_interval=1.0,
        metrics_interval=3600.0,
        sync_interval=timing.get("sync_interval", 3600.0),
        tls=TLSSettings(True, str(files.cert_file), str(files.key_file), str(files.ca_file)),
    )
    return ManagerClient(
        settings=settings,
        node=NodeIdentity(
            node_id="node-a",
            labels={},
            facts=HostFacts("node-a", "127.0.0.1", "linux", "x86_64", "test"),
            daemon_address="127.0.0.1:1",
        ),
        ssl_context=client_context(files, expect_role="manager"),
        outbox=Outbox(directory=tmp_path / "outbox", max_reports=100),
        host_metrics=HostMetrics(),
        agent_states=states,
    )


async def _until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def _waits_honour_the_hints(calls: list[Call]) -> list[tuple[float, float]]:
    """(hint, seconds until the next call) after every refusal; each wait >= its hint."""
    waits = [
        (call.refused_for, following.at - call.at)
        for call, following in itertools.pairwise(calls)
        if call.refused_for
    ]
    assert all(waited >= hint for hint, waited in waits), waits
    return waits


def test_a_refused_heartbeat_or_sync_waits_the_hint_and_keeps_the_link(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Heartbeats 2 and 3 and the first two syncs are refused with hints of 2–4 s — longer
    than the heartbeat interval (1 s), so a retry on the usual schedule would come too
    early — and the sync interval is an hour, so only a sync kept wanted is sent again."""
    caplog.set_level(logging.INFO, logger="daemon.manager_client")
    manager = BusyManager(
        refuse={"Heartbeat": 2, "SyncAgentStates": 2},
        statuses={},
        retry_after=2.0,
        after={"Heartbeat": 1},
    )
    agents = [manager_pb.AgentState(agent_id="web", status="STARTING")]
    disconnected: list[float] = []

    async def scenario() -> None:
        async with (
            _serving(certs, manager) as port,
            _client(tmp_path, certs, port, lambda: list(agents)) as link,
        ):
            await _until(lambda: link.connected, "connected")
            # A state change while the first sync waits out its refusal: the sync that
            # finally arrives carries the latest states, not the refused ones.
            await _until(lambda: manager.of("SyncAgentStates"), "the first sync")
            agents[0] = manager_pb.AgentState(agent_id="web", status="RUNNING")
            link.request_sync()
            while not (
                len(manager.of("Heartbeat")) >= 5
                and any(not c.refused_for for c in manager.of("SyncAgentStates"))
            ):
                if not link.connected:
                    disconnected.append(time.monotonic())
                await asyncio.sleep(0.02)
            assert link.registrations == 1 and link.switches == 0
            assert link.shed == {"Heartbeat": 2, "SyncAgentStates": 2}

    asyncio.run(scenario())
    assert disconnected == []
    assert len(manager.of("RegisterNode")) == 1  # no re-registration after the refusals
    beats = manager.of("Heartbeat")
    assert [bool(c.refused_for) for c in beats[:4]] == [False, True, True, False]
    print("heartbeat (hint, waited):", _waits_honour_the_hints(beats))
    syncs = manager.of("SyncAgentStates")
    assert [bool(c.refused_for) for c in syncs[:3]] == [True, True, False]
    print("sync (hint, waited):", _waits_honour_the_hints(syncs))
    assert syncs[2].states == ["web=RUNNING"]
    # Rate-limited: the first refusal is one line; the next ones fall in its 30 s.
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "server busy" in lines[0] and "retry in" in lines[0], lines
    assert "registering again" not in caplog.text


def test_a_busy_registernode_is_retried_no_sooner_than_the_hint(
    tmp_path: Path, certs: Path
) -> None:
    """``UNAVAILABLE`` "server busy … retry in N s" (N in 2–4 s) would be retried after
    the plain backoff (about 1 s here); the next RegisterNode comes after N instead."""
    manager = BusyManager(
        refuse={"RegisterNode": 2},
        statuses={"RegisterNode": Status.UNAVAILABLE},
        retry_after=2.0,
    )

    async def scenario() -> None:
        async with (
            _serving(certs, manager) as port,
            _client(tmp_path, certs, port, lambda: []) as link,
        ):
            await _until(lambda: link.connected, "registered after two refusals")
            assert link.registrations == 1

    asyncio.run(scenario())
    registers = manager.of("RegisterNode")
    assert [bool(c.refused_for) for c in registers] == [True, True, False]
    print("RegisterNode (hint, waited):", _waits_honour_the_hints(registers))
