"""The guarded handler layer (common/rpc.py) on a real grpclib server with real mTLS."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import grpclib.client
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Server

from common.errors import NotFound
from common.rpc import GuardedService, current_call
from common.tls import TLSFiles, client_context, server_context
from schema import manager_pb


class _EchoManager(manager_pb.ManagerServiceBase):
    """A tiny ManagerService whose behaviour exposes what the guard passed through."""

    async def register_node(
        self, req: manager_pb.RegisterNodeRequest
    ) -> manager_pb.RegisterNodeResponse:
        return manager_pb.RegisterNodeResponse(success=True, message=str(current_call().identity))

    async def heartbeat(self, req: manager_pb.HeartbeatRequest) -> manager_pb.HeartbeatResponse:
        raise NotFound(f"node {req.node_id} is not registered")

    async def report_metrics(
        self, req: manager_pb.ReportMetricsRequest
    ) -> manager_pb.ReportMetricsResponse:
        raise RuntimeError("secret internals")


def _files(certs: Path, name: str) -> TLSFiles:
    return TLSFiles(certs / f"{name}.crt", certs / f"{name}.key", certs / "ca.crt")


async def _serve(certs: Path, observed: list[tuple[str, str]]) -> tuple[Server, int]:
    guarded = GuardedService(
        _EchoManager(),
        policy={"RegisterNode": {"node"}, "Heartbeat": {"node"}, "ReportMetrics": {"node"}},
        max_message_bytes=1024,
        observer=lambda method, code, _s: observed.append((method, code)),
    )
    server = Server([guarded])
    await server.start("127.0.0.1", 0, ssl=server_context(_files(certs, "manager")))
    port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return server, port


def _stub(certs: Path, name: str, port: int) -> tuple[grpclib.client.Channel, Any]:
    ssl = client_context(_files(certs, name), expect_role="manager")
    channel = grpclib.client.Channel("127.0.0.1", port, ssl=ssl)
    return channel, manager_pb.ManagerServiceStub(channel, timeout=5)


def test_roles_errors_and_size_bound(certs: Path) -> None:
    async def scenario() -> None:
        observed: list[tuple[str, str]] = []
        server, port = await _serve(certs, observed)
        try:
            channel, stub = _stub(certs, "node-a", port)
            reply = await stub.register_node(manager_pb.RegisterNodeRequest(node_id="node-a"))
            assert reply.message == "node/node-a"  # identity came from the certificate

            with pytest.raises(GRPCError) as err:
                await stub.heartbeat(manager_pb.HeartbeatRequest(node_id="zz"))
            assert (err.value.status, err.value.message) == (
                Status.NOT_FOUND,
                "node zz is not registered",
            )

            with pytest.raises(GRPCError) as err:
                await stub.report_metrics(manager_pb.ReportMetricsRequest(node_id="node-a"))
            assert err.value.status is Status.INTERNAL
            assert "secret" not in (err.value.message or "")
            assert "request id" in (err.value.message or "")

            big = manager_pb.RegisterNodeRequest(node_id="node-a", hostname="x" * 5000)
            with pytest.raises(GRPCError) as err:
                await stub.register_node(big)
            assert err.value.status is Status.RESOURCE_EXHAUSTED
            channel.close()

            admin_channel, admin = _stub(certs, "admin", port)
            with pytest.raises(GRPCError) as err:
                await admin.register_node(manager_pb.RegisterNodeRequest(node_id="node-a"))
            assert err.value.status is Status.PERMISSION_DENIED
            assert "admin/admin may not call RegisterNode" in (err.value.message or "")
            admin_channel.close()
            assert ("RegisterNode", "OK") in observed
            assert ("ReportMetrics", "INTERNAL") in observed
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("prefix", "status"),
    [
        (b"\x00" + (2**31).to_bytes(4, "big"), Status.RESOURCE_EXHAUSTED),  # claims 2 GiB
        (b"\x01" + (3).to_bytes(4, "big"), Status.UNIMPLEMENTED),  # compressed flag
        (b"\x00" + (3).to_bytes(4, "big") + b"\xff\xff\xff", Status.INVALID_ARGUMENT),  # garbage
    ],
)
def test_raw_frames_are_refused(certs: Path, prefix: bytes, status: Status) -> None:
    async def scenario() -> None:
        server, port = await _serve(certs, [])
        channel, _ = _stub(certs, "node-a", port)
        try:
            method = "/fleet.manager.v1.ManagerService/RegisterNode"
            async with channel.request(
                method,
                grpclib.const.Cardinality.UNARY_UNARY,
                manager_pb.RegisterNodeRequest,
                manager_pb.RegisterNodeResponse,
                timeout=5,
            ) as stream:
                await stream.send_request()
                # Bypass the codec: write the frame header (and body) as given.
                await stream._stream.send_data(prefix, end_stream=True)
                stream._end_done = True
                with pytest.raises(GRPCError) as err:
                    await stream.recv_message()
                    await stream.recv_trailing_metadata()
                assert err.value.status is status
        finally:
            channel.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_certificate_from_another_ca_cannot_call(certs: Path, other_ca_certs: Path) -> None:
    async def scenario() -> None:
        server, port = await _serve(certs, [])
        ssl = client_context(
            TLSFiles(
                other_ca_certs / "node-a.crt", other_ca_certs / "node-a.key", certs / "ca.crt"
            ),
            expect_role="manager",
        )
        channel = grpclib.client.Channel("127.0.0.1", port, ssl=ssl)
        try:
            stub = manager_pb.ManagerServiceStub(channel, timeout=5)
            with pytest.raises((OSError, GRPCError, StreamTerminatedError)):
                await stub.register_node(manager_pb.RegisterNodeRequest(node_id="node-a"))
        finally:
            channel.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_client_refuses_server_with_wrong_identity(certs: Path) -> None:
    """A node certificate serving where the Manager should be is refused by the client."""

    async def scenario() -> None:
        guarded = GuardedService(_EchoManager(), policy={"RegisterNode": {"node"}})
        server = Server([guarded])
        await server.start("127.0.0.1", 0, ssl=server_context(_files(certs, "node-b")))
        port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        channel, stub = _stub(certs, "node-a", port)
        try:
            with pytest.raises(OSError) as err:
                await stub.register_node(manager_pb.RegisterNodeRequest(node_id="node-a"))
            assert "expected manager" in str(err.value)
        finally:
            channel.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


class _SlowRegistrations(manager_pb.ManagerServiceBase):
    """RegisterNode waits until released, so calls pile up as on an overloaded server."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.two_waiting = asyncio.Event()
        self.entered = 0

    async def register_node(
        self, req: manager_pb.RegisterNodeRequest
    ) -> manager_pb.RegisterNodeResponse:
        self.entered += 1
        if self.entered == 2:
            self.two_waiting.set()
        await self.release.wait()
        return manager_pb.RegisterNodeResponse(success=True)

    async def heartbeat(self, req: manager_pb.HeartbeatRequest) -> manager_pb.HeartbeatResponse:
        return manager_pb.HeartbeatResponse(success=True)


def test_a_method_over_its_concurrency_limit_is_shed_with_unavailable(certs: Path) -> None:
    async def scenario() -> None:
        observed: list[tuple[str, str]] = []
        service = _SlowRegistrations()
        guarded = GuardedService(
            service,
            policy={"RegisterNode": {"node"}, "Heartbeat": {"node"}},
            max_in_flight={"RegisterNode": 2},
            observer=lambda method, code, _s: observed.append((method, code)),
        )
        server = Server([guarded])
        await server.start("127.0.0.1", 0, ssl=server_context(_files(certs, "manager")))
        port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        channel, stub = _stub(certs, "node-a", port)
        try:
            request = manager_pb.RegisterNodeRequest(node_id="node-a")
            held = [asyncio.create_task(stub.register_node(request)) for _ in range(2)]
            await asyncio.wait_for(service.two_waiting.wait(), 10)
            # Two in progress: the third is refused at once, without reaching the service.
            with pytest.raises(GRPCError) as err:
                await asyncio.wait_for(stub.register_node(request), 5)
            assert err.value.status is Status.UNAVAILABLE
            assert "2 RegisterNode calls already in progress" in (err.value.message or "")
            assert service.entered == 2
            # Other methods are not limited.
            assert (await stub.heartbeat(manager_pb.HeartbeatRequest(node_id="node-a"))).success
            service.release.set()
            assert all(r.success for r in await asyncio.gather(*held))
            # Slots are given back, refused calls included.
            replies = await asyncio.gather(*(stub.register_node(request) for _ in range(2)))
            assert all(r.success for r in replies)
            assert observed.count(("RegisterNode", "UNAVAILABLE")) == 1
            assert guarded._admission.in_flight("RegisterNode") == 0
        finally:
            channel.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


class _HeldReports(manager_pb.ManagerServiceBase):
    """ReportMetrics calls wait until released (they hold the method's budget)."""

    def __init__(self) -> None:
        self.entered = 0
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def heartbeat(self, req: manager_pb.HeartbeatRequest) -> manager_pb.HeartbeatResponse:
        return manager_pb.HeartbeatResponse(success=True)

    async def report_metrics(
        self, req: manager_pb.ReportMetricsRequest
    ) -> manager_pb.ReportMetricsResponse:
        self.entered += 1
        self.holding.set()
        await self.release.wait()
        return manager_pb.ReportMetricsResponse(success=True, accepted=len(req.metrics))


_HINT = re.compile(
    r"^server busy: 1 ReportMetrics calls already in progress; retry in (\d+(\.\d)?) s$"
)


def _report(node: str, samples: int) -> manager_pb.ReportMetricsRequest:
    return manager_pb.ReportMetricsRequest(
        node_id=node,
        metrics=[
            manager_pb.MetricData(type="cpu", timestamp=i, values={f"v{v}": 1.5 for v in range(10)})
            for i in range(samples)
        ],
    )


def _grpcio_call(certs: Path, node: str, port: int, path: str, body: bytes) -> tuple[str, str]:
    """One unary call by Google's grpcio (C core) with ``node``'s certificate on a new
    channel: ``("OK", "")`` or (status name, details)."""
    grpc = pytest.importorskip("grpc", reason="grpcio is a dev dependency")
    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=(certs / f"{node}.key").read_bytes(),
        certificate_chain=(certs / f"{node}.crt").read_bytes(),
    )
    # The dev manager certificate names localhost; grpcio matches host names.
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        outcomes = []
        # The first call on a connection identifies the caller (handler path); the
        # second is the one the test is about.
        for call_path, call_body in (
            ("/fleet.manager.v1.ManagerService/Heartbeat", bytes(manager_pb.HeartbeatRequest())),
            (path, body),
        ):
            call = channel.unary_unary(call_path, lambda b: b, lambda b: b)
            try:
                call(call_body, timeout=10)
                outcomes.append(("OK", ""))
            except grpc.RpcError as exc:
                outcomes.append((exc.code().name, exc.details() or ""))
        assert outcomes[0] == ("OK", ""), outcomes
        return outcomes[1]


def test_over_budget_calls_are_refused_from_their_headers(certs: Path) -> None:
    """On a server built by make_server, a call over its method's budget is answered from
    its HEADERS (no grpclib stream or handler task): the handler's status and hint reach
    a grpclib client and a grpcio client alike, refused bodies are charged to no byte
    budget (so refusals cannot crowd out calls being served), the refusal is observed
    and counted like the handler's, and a caller the policy refuses still learns only
    that (PERMISSION_DENIED), nothing about the budget."""
    from common.h2limits import H2Limits
    from common.overload import MethodLimit
    from common.rpc import make_server

    async def scenario() -> None:
        observed: list[tuple[str, str]] = []
        shed: list[tuple[str, str]] = []
        service = _HeldReports()
        guarded = GuardedService(
            service,
            policy={"Heartbeat": {"node", "admin"}, "ReportMetrics": {"node"}},
            max_message_bytes=1_000_000,
            max_in_flight={"ReportMetrics": MethodLimit(1)},
            observer=lambda method, code, _s: observed.append((method, code)),
            shed_observer=lambda method, reason: shed.append((method, reason)),
        )
        limits = H2Limits(
            stream_window=1_048_576, connection_window=1_048_576,
            buffer_per_connection=2_100_000, buffer_per_peer=2_100_000, buffer_total=2_100_000,
        )  # fmt: skip
        server = make_server([guarded], limits=limits)
        await server.start("127.0.0.1", 0, ssl=server_context(_files(certs, "manager")))
        port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        channel, stub = _stub(certs, "node-a", port)
        try:
            small, large = _report("node-a", 1), _report("node-a", 3000)
            assert 400_000 < len(bytes(large)) < 1_000_000
            assert (await stub.heartbeat(manager_pb.HeartbeatRequest(node_id="node-a"))).success
            held = asyncio.create_task(stub.report_metrics(small))
            await asyncio.wait_for(service.holding.wait(), 10)
            held_bytes = server.shield.held

            # grpclib clients on three connections of node-a, a dozen large bodies at
            # once: each gets the handler's status and hint, and none of their bytes
            # is charged to a budget (a refused stream cannot crowd out served ones).
            more = [_stub(certs, "node-a", port) for _ in range(3)]
            charged: list[int] = []
            take = server.shield.take
            try:
                for _, other in more:  # identifies node-a on each connection
                    await other.heartbeat(manager_pb.HeartbeatRequest(node_id="node-a"))

                # Every byte charge from here on is recorded (the budgets still apply).
                def recorded(peer: str, nbytes: int) -> str | None:
                    charged.append(nbytes)
                    return take(peer, nbytes)

                server.shield.take = recorded  # type: ignore[method-assign]
                results = await asyncio.gather(
                    *(other.report_metrics(large) for _, other in more for _ in range(4)),
                    return_exceptions=True,
                )
            finally:
                server.shield.take = take  # type: ignore[method-assign]
                for other_channel, _ in more:
                    other_channel.close()
            assert charged == []
            for result in results:
                assert isinstance(result, GRPCError), result
                assert result.status is Status.RESOURCE_EXHAUSTED
                assert _HINT.match(result.message or ""), result.message
            assert server.shield.counts.get("refused_early") == 12
            assert "buffer" not in server.shield.counts
            assert server.shield.held == held_bytes
            assert service.entered == 1

            # grpcio, on its own connection (its first call identifies it).
            status, details = await asyncio.to_thread(
                _grpcio_call,
                certs,
                "node-b",
                port,
                "/fleet.manager.v1.ManagerService/ReportMetrics",
                bytes(large),
            )
            assert status == "RESOURCE_EXHAUSTED"
            assert _HINT.match(details), details
            assert server.shield.counts.get("refused_early") == 13

            # An admin may call Heartbeat, not ReportMetrics: with the budget full it
            # is still told only that it may not call it.
            admin_channel, admin = _stub(certs, "admin", port)
            try:
                assert (await admin.heartbeat(manager_pb.HeartbeatRequest())).success
                with pytest.raises(GRPCError) as err:
                    await admin.report_metrics(small)
                assert err.value.status is Status.PERMISSION_DENIED
                assert "budget" not in (err.value.message or "")
                assert "busy" not in (err.value.message or "")
            finally:
                admin_channel.close()
            assert server.shield.counts.get("refused_early") == 13

            service.release.set()
            assert (await held).success
            # The budget is back: the next call is served, the refused ones never ran.
            service.release.set()
            assert (await stub.report_metrics(small)).accepted == 1
            assert service.entered == 2
            assert guarded._admission.in_flight("ReportMetrics") == 0
            assert shed == [("ReportMetrics", "busy")] * 13
            assert observed.count(("ReportMetrics", "RESOURCE_EXHAUSTED")) == 13
            assert observed.count(("ReportMetrics", "PERMISSION_DENIED")) == 1
            await _eventually(lambda: server.shield.held == 0)
        finally:
            channel.close()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


async def _eventually(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
