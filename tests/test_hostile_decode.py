"""Decode bombs against a real Manager and a real Daemon (issue 11, item 3).

A request within the size limit can cost far more to decode than to send: 2 MB of
``0x12 0x00`` is a SyncAgentStates of 1,000,000 empty agents, ~44 s of betterproto on
the Manager's event loop before its handler could count them. The guard now walks the
wire format first (``common/wirelimits.py``) and refuses such a request with
``INVALID_ARGUMENT`` before anything is built. Each test sends bombs to every kind of
method (repeated messages, a map, a nested map, unknown and repeated scalar fields,
betterproto and upb request classes) while an honest peer keeps calling on its own
connection, and asserts: every bomb refused with the bound named, fast; the honest
calls never slowed past 250 ms; legitimate requests at the handlers' own maxima are
still accepted.

Servers under test are built as in ``tests/test_hostile_h2.py``: the real tiers, their
limits set through their ``[grpc.limits]`` keys.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from grpclib.client import Channel
from harness import REPO, wait_until
from harness.daemon import DaemonProc, agent, start_daemon
from harness.manager import ManagerProc
from test_hostile_h2 import P99_BOUND, honest_node, start_hardened_manager

from common.tls import TLSFiles, client_context

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.attack_h2 import (
    BombResult,
    Probe,
    Target,
    bomb,
    length_delimited,
    repeated_empty,
    unix_bomb,
)
from schema import daemon_pb, manager_pb, manager_pb2

LIMITS = {"body_stall_timeout": 5.0}
# A bomb is answered within this (from the first byte sent, 2 MB over TLS included).
BOMB_BOUND = 1.0


@pytest.fixture(scope="module")
def hostile_certs(tmp_path_factory: pytest.TempPathFactory, certgen: ModuleType) -> Path:
    directory = tmp_path_factory.mktemp("decode-certs")
    certgen.dev(directory, ["node-a", "node-b"], echo=lambda _line: None)
    return directory


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory, hostile_certs: Path) -> Iterator[ManagerProc]:
    proc = start_hardened_manager(tmp_path_factory.mktemp("decode-manager"), hostile_certs, LIMITS)
    try:
        yield proc
    finally:
        proc.stop()


def unknown_fields(count: int) -> bytes:
    """``count`` varint records of field 15, which no request declares."""
    return b"\x78\x00" * count


MANAGER = "/fleet.manager.v1.ManagerService/"
ADMIN = "/fleet.admin.v1.AdminService/"
# (path, identity, body, words the refusal must contain)
M = 1_000_000
MANAGER_BOMBS = [
    (MANAGER + "SyncAgentStates", "node-a", repeated_empty(2, M), "states has more than 1000"),
    (MANAGER + "SyncAgentStates", "node-a", repeated_empty(4, M), "specs has more than 1000"),
    (MANAGER + "ReportMetrics", "node-a", repeated_empty(2, M), "metrics has more than 1000"),
    (  # one sample holding a million values: the nested map
        MANAGER + "ReportMetrics", "node-a", length_delimited(2, repeated_empty(3, 1_000_000)),
        "metrics.values has more than 64000",
    ),
    (MANAGER + "RegisterNode", "node-a", repeated_empty(6, 1_000_000), "labels has more than 256"),
    (MANAGER + "Heartbeat", "node-a", unknown_fields(2_000_000), "more than 8192 fields"),
    (MANAGER + "Heartbeat", "node-a", b"\x0a\x00" * 2_000_000, "more than 8192 fields"),
    (ADMIN + "ListNodes", "admin", repeated_empty(2, 1_000_000), "labels has more than 256"),
]  # fmt: skip


def _context(certs: Path, name: str, server_role: str) -> Any:
    files = TLSFiles(certs / f"{name}.crt", certs / f"{name}.key", certs / "ca.crt")
    return client_context(files, expect_role=server_role)


def _check_refused(result: BombResult, words: str) -> None:
    assert result.status == "INVALID_ARGUMENT", result
    assert words in result.message, result
    assert result.seconds < BOMB_BOUND, result


def test_manager_refuses_decode_bombs_at_once(manager: ManagerProc, hostile_certs: Path) -> None:
    log_offset = len(manager.output())

    async def scenario() -> tuple[list[BombResult], Probe]:
        results = []
        async with honest_node(hostile_certs, manager.grpc_port) as probe:
            for _round in range(3):  # 24 bombs back to back
                for path, who, body, _words in MANAGER_BOMBS:
                    target = Target(
                        "127.0.0.1",
                        manager.grpc_port,
                        _context(hostile_certs, who, "manager"),
                        path,
                    )
                    results.append(await bomb(target, body, timeout=30))
        return results, probe

    results, probe = asyncio.run(scenario())
    for result in results[: len(MANAGER_BOMBS)]:
        print(f"{result.path} ({result.body_bytes} B): {result.status} in "
              f"{result.seconds * 1000:.1f} ms: {result.message}")  # fmt: skip
    print(f"honest node-b during {len(results)} bombs: {probe.summary()}")
    for result, (_path, _who, _body, words) in zip(results, MANAGER_BOMBS * 3, strict=True):
        _check_refused(result, words)
    assert not probe.errors, probe.errors[:3]
    assert probe.p99 < P99_BOUND, probe.summary()
    assert "Traceback" not in manager.output()[log_offset:]


def test_manager_accepts_requests_at_the_handlers_maxima(
    manager: ManagerProc, hostile_certs: Path
) -> None:
    """The decode bounds sit at the handlers' own limits: a sync of 1,000 agents (every
    field filled) and a report of 1,000 samples x 64 values are served, and one more
    agent is refused by the walk with the same words the handler would use."""
    states = [
        manager_pb.AgentState(
            agent_id=f"agent-{i}", status="RUNNING", pid=1000 + i, last_heartbeat=int(time.time()),
            type="web", version="1.0", start_time=int(time.time()), restart_count=1,
            status_reason="running", config_hash="h" * 64,
        )
        for i in range(1000)
    ]  # fmt: skip
    now = int(time.time())
    keys = [f"v{k}" for k in range(64)]
    report = manager_pb2.ReportMetricsRequest(
        node_id="node-a",
        metrics=[
            manager_pb2.MetricData(type="cpu", timestamp=now - i, values=dict.fromkeys(keys, 1.0))
            for i in range(1000)
        ],
    )  # fmt: skip

    async def scenario() -> list[Any]:
        files = TLSFiles(
            hostile_certs / "node-a.crt", hostile_certs / "node-a.key", hostile_certs / "ca.crt"
        )
        channel = Channel(
            "127.0.0.1", manager.grpc_port, ssl=client_context(files, expect_role="manager")
        )
        stub = manager_pb.ManagerServiceStub(channel, timeout=30)
        try:
            await stub.register_node(
                manager_pb.RegisterNodeRequest(node_id="node-a", instance_id="x")
            )
            sync = await stub.sync_agent_states(
                manager_pb.SyncAgentStatesRequest(node_id="node-a", states=states, full=True)
            )
            stored = await stub.report_metrics(
                manager_pb.ReportMetricsRequest().parse(report.SerializeToString())
            )
            target = Target(
                "127.0.0.1",
                manager.grpc_port,
                _context(hostile_certs, "node-a", "manager"),
                MANAGER + "SyncAgentStates",
            )
            one_more = await bomb(
                target,
                bytes(
                    manager_pb.SyncAgentStatesRequest(node_id="node-a", states=[*states, states[0]])
                ),
            )
            return [sync, stored, one_more]
        finally:
            channel.close()

    sync, stored, one_more = asyncio.run(scenario())
    assert sync.success
    assert stored.accepted == 1000
    assert one_more.status == "INVALID_ARGUMENT" and "states has more than 1000" in one_more.message


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, hostile_certs: Path, manager: ManagerProc
) -> Iterator[DaemonProc]:
    """A real fleet-daemon (node-a) with make_server on both its servers, one agent.
    The tests call its agent socket with the agent's token from outside its process
    group, so the group check is off (tests/test_daemon_agent_api.py covers it)."""
    proc = start_daemon(
        tmp_path_factory.mktemp("decode-daemon"), hostile_certs, node_id="node-a",
        manager_port=manager.grpc_port, agents=[agent("sleeper", "sleeper")],
        config={"grpc": {"limits": LIMITS}, "agent_api": {"check_peer": False}},
    )  # fmt: skip
    try:
        yield proc
    finally:
        proc.stop()


DAEMON = "/fleet.daemon.v1.DaemonService/"
DAEMON_TCP_BOMBS = [
    (DAEMON + "ApplySpecs", repeated_empty(1, 1_000_000), "specs has more than 1000"),
    (DAEMON + "SyncAgentStates", repeated_empty(2, 1_000_000), "states has more than 256"),
    (DAEMON + "PushUpdate", unknown_fields(2_000_000), "more than 8192 fields"),
]
DAEMON_SOCKET_BOMBS = [
    (DAEMON + "ReportMetrics", repeated_empty(3, 500_000), "metrics has more than 1000"),
    (  # one metric with half a million labels
        DAEMON + "ReportMetrics", length_delimited(3, repeated_empty(4, 500_000)),
        "metrics.labels has more than 16384",
    ),
    (DAEMON + "Register", repeated_empty(5, 500_000), "info has more than 256"),
    (DAEMON + "Heartbeat", unknown_fields(500_000), "more than 8192 fields"),
]  # fmt: skip


def _agent_metadata(daemon: DaemonProc, agent_id: str = "sleeper") -> dict[str, str]:
    """The agent's credentials as it sends them (the token as the Daemon saved it)."""

    def token() -> str | None:
        try:
            saved = json.loads((daemon.state_dir / "agents.json").read_text())
        except (OSError, ValueError):
            return None
        entry = saved.get("agents", {}).get(agent_id)
        return entry.get("token") if entry and entry.get("pid") else None

    return {"fleet-agent-id": agent_id, "fleet-agent-token": wait_until(token, timeout=30)}


def test_daemon_refuses_decode_bombs_on_both_ports(daemon: DaemonProc, hostile_certs: Path) -> None:
    """The Manager-facing TCP port (as the Manager) and the agent socket (as the agent,
    its token in metadata: a stranger's bombs are not read at all, see below)."""
    log_offset = len(daemon.output())
    credentials = _agent_metadata(daemon)

    async def scenario() -> tuple[list[BombResult], list[BombResult], Probe]:
        files = TLSFiles(
            hostile_certs / "manager.crt", hostile_certs / "manager.key", hostile_certs / "ca.crt"
        )
        channel = Channel(
            "127.0.0.1", daemon.grpc_port, ssl=client_context(files, expect_role="node")
        )
        stub = daemon_pb.DaemonServiceStub(channel, timeout=10)
        tcp, local = [], []
        try:
            async with Probe(
                lambda: stub.list_agents(daemon_pb.ListAgentsRequest()), interval=0.01
            ) as probe:
                for _round in range(3):
                    for path, body, _words in DAEMON_TCP_BOMBS:
                        target = Target(
                            "127.0.0.1",
                            daemon.grpc_port,
                            _context(hostile_certs, "manager", "node"),
                            path,
                        )
                        tcp.append(await bomb(target, body, timeout=30))
                    for path, body, _words in DAEMON_SOCKET_BOMBS:
                        local.append(
                            await unix_bomb(
                                path,
                                str(daemon.agent_socket),
                                body,
                                timeout=30,
                                metadata=credentials,
                            )
                        )
        finally:
            channel.close()
        return tcp, local, probe

    tcp, local, probe = asyncio.run(scenario())
    for result in [*tcp[: len(DAEMON_TCP_BOMBS)], *local[: len(DAEMON_SOCKET_BOMBS)]]:
        print(f"{result.path} ({result.body_bytes} B): {result.status} in "
              f"{result.seconds * 1000:.1f} ms: {result.message}")  # fmt: skip
    print(f"the Manager's ListAgents during {len(tcp) + len(local)} bombs: {probe.summary()}")
    for result, (_p, _b, words) in zip(tcp, DAEMON_TCP_BOMBS * 3, strict=True):
        _check_refused(result, words)
    for result, (_p, _b, words) in zip(local, DAEMON_SOCKET_BOMBS * 3, strict=True):
        _check_refused(result, words)
    assert not probe.errors, probe.errors[:3]
    assert probe.p99 < P99_BOUND, probe.summary()
    assert "Traceback" not in daemon.output()[log_offset:]


# What a stranger on the agent socket sends: 1 MB that is not even protobuf (walking or
# decoding it would answer INVALID_ARGUMENT, so UNAUTHENTICATED proves neither ran).
GARBAGE = b"\xff" * (1024 * 1024)


def test_agent_socket_authenticates_before_reading(daemon: DaemonProc) -> None:
    """A wrong token in the metadata is refused from the call's HEADERS; a large request
    without metadata from its length prefix; neither body is walked or decoded, and the
    agent's own calls stay fast meanwhile. The original contract (token in the body
    only) still works for small requests; metadata for one agent cannot act as another."""
    credentials = _agent_metadata(daemon)
    wrong = {**credentials, "fleet-agent-token": "0" * 64}
    socket_path = str(daemon.agent_socket)
    log_offset = len(daemon.output())

    async def scenario() -> tuple[list[BombResult], list[BombResult], Probe, list[Any]]:
        channel = Channel(path=socket_path)
        stub = daemon_pb.DaemonServiceStub(channel, timeout=10)
        heartbeat = daemon_pb.HeartbeatRequest(agent_id="sleeper", health="ok")
        strangers: list[BombResult] = []
        try:
            async with Probe(
                lambda: stub.heartbeat(heartbeat, metadata=credentials), interval=0.01
            ) as probe:
                for _round in range(10):
                    strangers.append(
                        await unix_bomb(
                            DAEMON + "ReportMetrics", socket_path, GARBAGE, metadata=wrong
                        )
                    )
                    strangers.append(
                        await unix_bomb(DAEMON + "ReportMetrics", socket_path, GARBAGE)
                    )
            # Body-only credentials (the original contract), and the agent's own metadata
            # naming another agent in the body.
            token = credentials["fleet-agent-token"]
            body_only = await stub.get_config(
                daemon_pb.ConfigRequest(agent_id="sleeper", token=token)
            )
            large_with_metadata = await stub.report_metrics(
                daemon_pb.MetricsRequest(
                    agent_id="sleeper",
                    metrics=[
                        daemon_pb.AgentMetric(name=f"m{i}", value=1.0, labels={"k": "v" * 100})
                        for i in range(1000)
                    ],
                ),
                metadata=credentials,
            )
            others = [
                await unix_bomb(
                    DAEMON + "GetConfig",
                    socket_path,
                    bytes(daemon_pb.ConfigRequest(agent_id="ghost", token=token)),
                    metadata=credentials,
                ),
                await unix_bomb(
                    DAEMON + "GetConfig",
                    socket_path,
                    bytes(daemon_pb.ConfigRequest(agent_id="sleeper", token=token)),
                    metadata={"fleet-agent-id": "ghost", "fleet-agent-token": token},
                ),
            ]
        finally:
            channel.close()
        return strangers, others, probe, [body_only, large_with_metadata]

    strangers, others, probe, (body_only, large) = asyncio.run(scenario())
    for result in strangers[:2]:
        print(f"stranger ({result.body_bytes} B): {result.status} in "
              f"{result.seconds * 1000:.1f} ms: {result.message}")  # fmt: skip
    print(f"the agent's heartbeats during {len(strangers)} strangers' calls: {probe.summary()}")
    by_header, by_prefix = strangers[0::2], strangers[1::2]
    for result in by_header:
        assert result.status == "UNAUTHENTICATED", result
        assert "wrong token in metadata" in result.message, result
    for result in by_prefix:
        assert result.status == "UNAUTHENTICATED", result
        assert "must carry the agent's id and token in metadata" in result.message, result
        assert "at most 65536 bytes without" in result.message, result
    assert not probe.errors, probe.errors[:3]
    assert probe.p99 < P99_BOUND, probe.summary()
    assert json.loads(body_only.config_json) == {}
    assert large.accepted == 1000
    assert others[0].status == "PERMISSION_DENIED", others[0]
    assert "may not act as agent 'ghost'" in others[0].message, others[0]
    assert others[1].status == "UNAUTHENTICATED", others[1]
    assert "Traceback" not in daemon.output()[log_offset:]
