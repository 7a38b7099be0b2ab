"""Issue 11 item 6, the Manager's half: one agent's poisoned text never discards its
node's whole SyncAgentStates.

A Daemon relays text it does not control (an agent's last stderr line as its
``status_reason``, a pushed ``version``). An ANSI colour code or a 100 KB version there
used to make the Manager refuse every sync of the node, so fleetctl kept showing dead
agents as RUNNING with stale pids. Against a real Manager: the text is cleaned and cut,
every agent of the node is stored, what changed is said in the answer, the log (once a
minute per node) and /metrics, and the node's next syncs keep updating its agents.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness.manager import (
    ManagerProc,
    admin_channel,
    http_get,
    metric_value,
    node_channel,
    start_manager,
)

from common import validate
from schema import admin_pb, manager_pb

ANSI_REASON = "\x1b[31mERROR\x1b[0m: connection refused\r\n\x1b]0;pwned\x07"
BIG_VERSION = "v" * 100_000
BIDI_TYPE = "web\u202egnp.exe"


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[ManagerProc]:
    proc = start_manager(tmp_path_factory.mktemp("hostile-sync"), certs)
    try:
        yield proc
    finally:
        proc.stop()


async def _sync(
    certs: Path,
    port: int,
    states: list[manager_pb.AgentState],
    specs: list[manager_pb.SpecState] | None = None,
) -> manager_pb.SyncAgentStatesResponse:
    """A full sync of node-a, as its Daemon sends it."""
    channel = node_channel(certs, port, "node-a")
    try:
        stub = manager_pb.ManagerServiceStub(channel, timeout=15)
        return await stub.sync_agent_states(
            manager_pb.SyncAgentStatesRequest(
                node_id="node-a", states=states, full=True, specs=specs or []
            )
        )
    finally:
        channel.close()


async def _agents(certs: Path, port: int) -> dict[str, admin_pb.Agent]:
    channel = admin_channel(certs, port)
    try:
        reply = await admin_pb.AdminServiceStub(channel, timeout=15).list_agents(
            admin_pb.ListAgentsRequest(node_id="node-a")
        )
        return {a.id: a for a in reply.agents}
    finally:
        channel.close()


def test_poisoned_entries_are_cleaned_and_every_agent_is_stored(
    manager: ManagerProc, certs: Path
) -> None:
    port = manager.grpc_port

    async def scenario() -> None:
        channel = node_channel(certs, port, "node-a")
        try:
            await manager_pb.ManagerServiceStub(channel, timeout=15).register_node(
                manager_pb.RegisterNodeRequest(node_id="node-a", daemon_address="127.0.0.1:1")
            )
        finally:
            channel.close()
        states = [
            manager_pb.AgentState(agent_id="api", status="RUNNING", pid=101, version="1.2"),
            manager_pb.AgentState(
                agent_id="web", status="BACKOFF", pid=0, status_reason=ANSI_REASON
            ),
            manager_pb.AgentState(
                agent_id="worker", status="RUNNING", pid=103, version=BIG_VERSION
            ),
            manager_pb.AgentState(agent_id="odd", status="RUNNING", pid=104, type=BIDI_TYPE),
        ]
        reply = await _sync(certs, port, states)
        assert reply.success
        assert reply.message.startswith("synced 4 agents, removed 0; sanitised 3 fields ("), reply
        assert "states[1].status_reason: escape sequences removed, control characters" in (
            reply.message
        )
        assert "states[2].version: cut to 64 of 100000 characters" in reply.message
        assert "states[3].type: bidi overrides or line separators removed" in reply.message
        agents = await _agents(certs, port)
        assert set(agents) == {"api", "web", "worker", "odd"}
        web = agents["web"]
        assert web.status == "BACKOFF"
        assert web.status_reason == "ERROR: connection refused"
        assert agents["worker"].version == "v" * 63 + validate.ELLIPSIS
        assert agents["odd"].type == "webgnp.exe"
        for agent in agents.values():  # what fleetctl shows is clean
            for text in (agent.status_reason, agent.version, agent.type):
                validate.check_text("shown", text)

        # The node's agents keep being updated while the poisoned text is still sent:
        # "api" died — fleetctl must not keep showing it RUNNING with its old pid.
        states[0] = manager_pb.AgentState(agent_id="api", status="FATAL", pid=0, version="1.2")
        for _ in range(3):
            reply = await _sync(certs, port, states)
            assert reply.success
        agents = await _agents(certs, port)
        assert (agents["api"].status, agents["api"].pid) == ("FATAL", 0)

        # Spec states' reasons are relayed text as well.
        spec = manager_pb.SpecState(
            name="websvc",
            revision=1,
            running_revision=0,
            status="FAILED",
            reason="\x1b[1magent web did not start\x1b[0m\x00",
        )
        reply = await _sync(certs, port, states, [spec])
        assert reply.success and "specs[0].reason: escape sequences removed" in reply.message

        # What only a broken Daemon sends still refuses the request, naming the entry.
        bad = [*states, manager_pb.AgentState(agent_id="bad", status="DANCING\x1b[0m")]
        with pytest.raises(GRPCError) as refused:
            await _sync(certs, port, bad)
        assert refused.value.status == Status.INVALID_ARGUMENT
        assert "states[4].status 'DANCING' is not one of" in (refused.value.message or "")

    asyncio.run(scenario())
    text = http_get(f"{manager.http_url}/metrics")[1]
    counted = metric_value(text, "fleet_manager_agent_sync_problems_total", kind="sanitised")
    assert counted is not None and counted >= 3 * 4 + 1
    lines = [
        line
        for line in manager.output().splitlines()
        if "node-a: SyncAgentStates stored with changes" in line
    ]
    assert len(lines) == 1, lines  # five syncs with changes, one line a minute
    assert "\x1b" not in manager.output()
