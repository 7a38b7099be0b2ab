"""The Daemon against a real Manager: registration with host facts, heartbeats,
agent-state sync, host metrics, and surviving a Manager that is down."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

from harness import free_port, wait_until
from harness.daemon import agent, start_daemon
from harness.manager import admin_channel, start_manager

from schema import admin_pb


def _nodes(certs: Path, port: int) -> dict[str, admin_pb.Node]:
    async def go() -> dict[str, admin_pb.Node]:
        channel = admin_channel(certs, port)
        try:
            reply = await admin_pb.AdminServiceStub(channel).list_nodes(
                admin_pb.ListNodesRequest(), timeout=5
            )
        finally:
            channel.close()
        return {n.node_id: n for n in reply.nodes}

    return asyncio.run(go())


def _agents(certs: Path, port: int, node_id: str) -> dict[str, admin_pb.Agent]:
    async def go() -> dict[str, admin_pb.Agent]:
        channel = admin_channel(certs, port)
        try:
            reply = await admin_pb.AdminServiceStub(channel).list_agents(
                admin_pb.ListAgentsRequest(node_id=node_id), timeout=5
            )
        finally:
            channel.close()
        return {a.id: a for a in reply.agents}

    return asyncio.run(go())


def test_registers_with_host_facts_and_syncs_agents(tmp_path: Path, certs: Path) -> None:
    mgr = start_manager(tmp_path, certs)
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=mgr.grpc_port,
        agents=[agent("sleepy", "sleeper", type="worker", version="1.0")],
        config={"labels": {"zone": "test"}},
    )
    try:
        node = wait_until(
            lambda: (
                (n := _nodes(certs, mgr.grpc_port).get("node-a")) and n.status == "online" and n
            ),
            timeout=20,
            what="node-a online",
        )
        assert node.hostname == socket.gethostname()
        assert node.os.startswith("linux") and node.arch
        assert node.ip and node.daemon_version
        assert node.daemon_address == daemon.address
        assert node.labels == {"zone": "test"}
        assert node.heartbeat_interval_seconds == 1
        synced = wait_until(
            lambda: (
                (a := _agents(certs, mgr.grpc_port, "node-a").get("sleepy"))
                and a.status == "RUNNING"
                and a
            ),
            timeout=20,
            what="agent state synced to the Manager",
        )
        assert synced.type == "worker" and synced.version == "1.0" and synced.pid > 0
    finally:
        daemon.stop()
        mgr.stop()


def test_manager_down_at_start_then_up(tmp_path: Path, certs: Path) -> None:
    port = free_port()
    daemon = start_daemon(tmp_path, certs, node_id="node-b", manager_port=port)
    try:
        # gRPC's reconnect schedule: 1 s, x1.6, +-20 % jitter, capped by reconnect_interval
        # (2 s in the harness config).
        delays = wait_until(
            lambda: (
                (d := [float(x) for x in re.findall(r"retrying in ([\d.]+)s", daemon.output())])
                and len(d) >= 4
                and d
            ),
            timeout=30,
            what="several reconnect attempts",
        )
        assert 0.8 <= delays[0] <= 1.2, delays
        assert all(0.8 <= d <= 2.4 for d in delays), delays
        assert max(delays) > 1.2, delays  # it grew
        assert daemon.alive()
        mgr = start_manager(tmp_path, certs, grpc_port=port)
        try:
            wait_until(
                lambda: (n := _nodes(certs, port).get("node-b")) and n.status == "online",
                timeout=20,
                what="node-b registered after the Manager came up",
            )
        finally:
            mgr.stop()
    finally:
        daemon.stop()


def test_forgotten_node_registers_again(tmp_path: Path, certs: Path) -> None:
    """A Manager that answers NOT_FOUND (a fresh database) gets a new RegisterNode."""
    from harness.daemon import call_daemon

    from schema import daemon_pb

    port = free_port()
    first = tmp_path / "m1"
    first.mkdir()
    mgr = start_manager(first, certs, grpc_port=port)
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-c",
        manager_port=port,
        heartbeat_interval=60,
        metrics_interval=600,
        agents=[agent("s", "sleeper", start_seconds=0.1)],
    )
    try:
        wait_until(lambda: "node-c" in _nodes(certs, port), what="registered with m1")
        mgr.stop()
        second = tmp_path / "m2"
        second.mkdir()
        mgr = start_manager(second, certs, grpc_port=port)
        assert "node-c" not in _nodes(certs, port)
        # "Push your states now": the new Manager does not know us, so we register again.
        reply = call_daemon(
            certs, daemon, "sync_agent_states", daemon_pb.SyncAgentStatesRequest(node_id="node-c")
        )
        assert reply.success
        wait_until(
            lambda: "node-c" in _nodes(certs, port),
            timeout=20,
            what="re-registered with the new Manager",
        )
        wait_until(
            lambda: "s" in _agents(certs, port, "node-c"),
            timeout=20,
            what="agent states pushed after re-registering",
        )
    finally:
        daemon.stop()
        mgr.stop()


def test_insecure_mode_end_to_end(tmp_path: Path) -> None:
    """--insecure on both sides (development only): plaintext, and a warning in the log."""
    from grpclib.client import Channel

    from schema import daemon_pb

    mgr = start_manager(tmp_path, None, insecure=True)
    daemon = start_daemon(
        tmp_path,
        None,
        node_id="dev-node",
        manager_port=mgr.grpc_port,
        insecure=True,
        agents=[agent("s", "sleeper", start_seconds=0.1)],
    )
    try:
        assert "WITHOUT TLS" in daemon.output()

        async def nodes() -> list[str]:
            channel = Channel("127.0.0.1", mgr.grpc_port)
            try:
                reply = await admin_pb.AdminServiceStub(channel).list_nodes(
                    admin_pb.ListNodesRequest(), timeout=5
                )
                return [n.node_id for n in reply.nodes]
            finally:
                channel.close()

        wait_until(lambda: "dev-node" in asyncio.run(nodes()), what="registered in plaintext")

        async def agents() -> list[str]:
            channel = Channel("127.0.0.1", daemon.grpc_port)
            try:
                reply = await daemon_pb.DaemonServiceStub(channel).list_agents(
                    daemon_pb.ListAgentsRequest(), timeout=5
                )
                return [a.id for a in reply.agents]
            finally:
                channel.close()

        assert asyncio.run(agents()) == ["s"]
    finally:
        daemon.stop()
        mgr.stop()
