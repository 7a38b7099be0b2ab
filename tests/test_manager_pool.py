"""DaemonClientPool against real grpclib servers holding real node certificates.

The servers here are real TLS peers (a minimal DaemonService on 127.0.0.1 with a node
certificate from the project's CA), not mocks: they let the tests control exactly when
the peer is up, down, slow or holding the wrong node's certificate.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import cast

import pytest
from grpclib.const import Status
from grpclib.protocol import H2Protocol
from grpclib.server import Server
from harness import free_port

from common.errors import DeadlineExceeded, NotFound, Unavailable
from common.tls import TLSFiles, client_context, server_context
from manager.daemon_pool import DaemonClientPool, DaemonError
from schema import daemon_pb


class MiniDaemon(daemon_pb.DaemonServiceBase):
    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.calls = 0

    async def list_agents(
        self, list_agents_request: daemon_pb.ListAgentsRequest
    ) -> daemon_pb.ListAgentsResponse:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return daemon_pb.ListAgentsResponse(
            agents=[daemon_pb.AgentInfo(id=f"agent-of-{self.name}", status="RUNNING")]
        )

    async def operate_agent(
        self, agent_operation_request: daemon_pb.AgentOperationRequest
    ) -> daemon_pb.AgentOperationResponse:
        from grpclib.exceptions import GRPCError

        raise GRPCError(Status.NOT_FOUND, f"no agent {agent_operation_request.agent_id}")


def files(certs: Path, name: str) -> TLSFiles:
    return TLSFiles(certs / f"{name}.crt", certs / f"{name}.key", certs / "ca.crt")


class KillableServer(Server):
    """A grpclib Server whose stop also drops established connections, like a process exit."""

    def __init__(self, daemon: MiniDaemon) -> None:
        super().__init__([daemon])
        self.daemon = daemon
        self.transports: list[asyncio.Transport] = []

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        made = protocol.connection_made

        def connection_made(transport: asyncio.BaseTransport) -> None:
            # asyncio's or uvloop's (an earlier test may have installed its policy).
            self.transports.append(cast(asyncio.Transport, transport))
            made(transport)

        protocol.connection_made = connection_made  # type: ignore[method-assign]
        return protocol


async def serve(certs: Path, cert_name: str, port: int, delay: float = 0.0) -> KillableServer:
    server = KillableServer(MiniDaemon(cert_name, delay))
    await server.start("127.0.0.1", port, ssl=server_context(files(certs, cert_name)))
    return server


async def stop(server: KillableServer) -> None:
    server.close()
    for transport in server.transports:
        transport.abort()
    await server.wait_closed()


def make_pool(certs: Path, **kw: object) -> DaemonClientPool:
    settings: dict[str, object] = {
        "call_timeout": 5.0,
        "connect_timeout": 2.0,
        "connect_attempts": 3,
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
    }
    settings.update(kw)
    return DaemonClientPool(
        ssl_context=client_context(files(certs, "manager"), expect_role="node"),
        **settings,  # type: ignore[arg-type]
    )


def test_one_reused_channel_per_daemon(certs: Path) -> None:
    async def run() -> None:
        port = free_port()
        server = await serve(certs, "node-a", port)
        pool = make_pool(certs)
        try:
            address = f"127.0.0.1:{port}"
            first = await pool.list_agents("node-a", address)
            assert [a.id for a in first.agents] == ["agent-of-node-a"]
            channel = pool._conns["node-a"].channel
            protocol = channel._protocol
            for _ in range(5):
                await pool.list_agents("node-a", address)
            assert pool._conns["node-a"].channel is channel
            assert channel._protocol is protocol  # same HTTP/2 connection
            assert pool.states() == {"node-a": "ready"}
            # Errors from the Daemon keep their status and name the node.
            with pytest.raises(DaemonError) as info:
                await pool.operate_agent("node-a", address, "ghost", "start")
            assert info.value.status == Status.NOT_FOUND
            assert "node-a" in str(info.value)
            assert isinstance(info.value, Exception) and not isinstance(info.value, NotFound)
        finally:
            pool.close()
            await stop(server)
        assert pool.states() == {}

    asyncio.run(run())


def test_wrong_node_certificate_is_refused_without_retry(
    certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        port = free_port()
        server = await serve(certs, "node-b", port)  # node-b answers at node-a's address
        pool = make_pool(certs)
        try:
            with pytest.raises(Unavailable) as info:
                await pool.list_agents("node-a", f"127.0.0.1:{port}")
            message = str(info.value)
            assert "node-a" in message and "TLS verification" in message
            assert "node/node-b" in message
            assert pool.states() == {"node-a": "idle"}
            # The impostor saw no request: the identity is checked before the first call.
            assert server.daemon.calls == 0
            # The channel itself refuses, so a reconnect grpclib makes on its own (not
            # through the pool's connect) is checked too.
            channel = pool._conns["node-a"].channel
            with pytest.raises(ssl.SSLError, match="expected node/node-a"):
                await daemon_pb.DaemonServiceStub(channel).list_agents(
                    daemon_pb.ListAgentsRequest(), timeout=5
                )
            assert server.daemon.calls == 0
        finally:
            pool.close()
            await stop(server)

    with caplog.at_level(logging.INFO, logger="manager.daemon_pool"):
        asyncio.run(run())
    assert "Reconnecting" not in caplog.text  # a wrong identity is not retried


def test_unreachable_daemon_backs_off_then_unavailable(
    certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def run() -> None:
        pool = make_pool(certs, connect_attempts=3)
        port = free_port()
        try:
            with pytest.raises(Unavailable) as info:
                await pool.list_agents("node-c", f"127.0.0.1:{port}")
            assert "node-c" in str(info.value)
            assert "after 3 attempts" in str(info.value)
        finally:
            pool.close()

    with caplog.at_level(logging.INFO, logger="manager.daemon_pool"):
        asyncio.run(run())
    seen = [
        r.getMessage().split(" -> ")[1].split(" ")[0].lower()
        for r in caplog.records
        if r.getMessage().startswith("daemon node-c ")
    ]
    assert seen == [
        "connecting",
        "reconnecting",
        "connecting",
        "reconnecting",
        "connecting",
        "idle",
    ]
    assert "Connecting -> Reconnecting" in caplog.text
    assert "Connecting -> Idle (gave up after 3 attempts)" in caplog.text


def test_reconnects_after_daemon_restarts_on_same_port(certs: Path) -> None:
    async def run() -> None:
        port = free_port()
        address = f"127.0.0.1:{port}"
        server = await serve(certs, "node-a", port)
        pool = make_pool(certs)
        try:
            await pool.list_agents("node-a", address)
            await stop(server)
            with pytest.raises(Unavailable):
                await pool.list_agents("node-a", address)
            assert pool.states()["node-a"] == "idle"
            server = await serve(certs, "node-a", port)
            reply = await pool.list_agents("node-a", address)
            assert [a.id for a in reply.agents] == ["agent-of-node-a"]
            assert pool.states()["node-a"] == "ready"
        finally:
            pool.close()
            await stop(server)

    asyncio.run(run())


def test_every_call_has_a_deadline(certs: Path) -> None:
    async def run() -> None:
        port = free_port()
        server = await serve(certs, "node-a", port, delay=5.0)
        pool = make_pool(certs, call_timeout=0.3)
        try:
            with pytest.raises(DeadlineExceeded) as info:
                await pool.list_agents("node-a", f"127.0.0.1:{port}")
            assert "node-a" in str(info.value)
        finally:
            pool.close()
            await stop(server)

    asyncio.run(run())


def test_address_change_replaces_the_channel(certs: Path) -> None:
    async def run() -> None:
        p1, p2 = free_port(), free_port()
        s1 = await serve(certs, "node-a", p1)
        s2 = await serve(certs, "node-a", p2)
        pool = make_pool(certs)
        try:
            await pool.list_agents("node-a", f"127.0.0.1:{p1}")
            old = pool._conns["node-a"].channel
            await pool.list_agents("node-a", f"127.0.0.1:{p2}")
            assert pool._conns["node-a"].channel is not old
            assert old._protocol is None  # closed
        finally:
            pool.close()
            await stop(s1)
            await stop(s2)

    asyncio.run(run())
