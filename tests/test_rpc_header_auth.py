"""GuardedService(authenticate=HeaderAuth): credentials in the call's metadata are checked
before the request is read, on a server built by make_server (from the HEADERS) and on a
plain grpclib server (in the handler, before the body), over a real Unix socket."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpclib.client
import pytest
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError
from grpclib.server import Server

from bench.attack_h2 import RawMessage
from common.errors import Unauthenticated
from common.rpc import (
    GuardedService,
    HardenedServer,
    HeaderAuth,
    Transport,
    current_call,
    make_server,
)
from schema import manager_pb

KEY = "x-test-key"
LIMIT = 2048


class _Echo(manager_pb.ManagerServiceBase):
    """Heartbeat answers with what the guard says about the caller."""

    async def heartbeat(self, req: manager_pb.HeartbeatRequest) -> manager_pb.HeartbeatResponse:
        return manager_pb.HeartbeatResponse(success=True, message=repr(current_call().principal))


def _guarded(checked: list[str]) -> GuardedService:
    def check(method: str, metadata: Mapping[str, str], peer_pid: int) -> Any:
        checked.append(method)
        key = metadata.get(KEY)
        if key is None:
            return None
        if key != "sesame":
            raise Unauthenticated(f"{method}: wrong key")
        assert peer_pid > 0  # the caller's pid, read from the Unix socket
        return "friend"

    return GuardedService(
        _Echo(),
        policy={"Heartbeat": {"local"}},
        transport=Transport.LOCAL,
        authenticate=HeaderAuth(check=check, max_bytes_without=LIMIT, hint=f"{KEY} metadata"),
    )


async def _call(path: str, body: bytes, metadata: dict[str, str] | None) -> tuple[str, str]:
    channel = grpclib.client.Channel(path=path)
    try:
        stream: Any
        async with channel.request(
            "/fleet.manager.v1.ManagerService/Heartbeat",
            Cardinality.UNARY_UNARY,
            RawMessage,
            RawMessage,
            timeout=10,
            metadata=metadata,
        ) as stream:
            await stream.send_message(RawMessage(body), end=True)
            reply = await stream.recv_message()
        message = manager_pb.HeartbeatResponse().parse(reply.data).message
        return "OK", message
    except GRPCError as exc:
        return exc.status.name, exc.message or ""
    finally:
        channel.close()


@pytest.mark.parametrize("hardened", [True, False], ids=["make_server", "plain-server"])
def test_metadata_credentials_are_checked_before_the_request_is_read(hardened: bool) -> None:
    checked: list[str] = []
    servers: list[Server] = []
    garbage = b"\xff" * 100_000  # not protobuf: reading it would answer INVALID_ARGUMENT
    small = bytes(manager_pb.HeartbeatRequest(node_id="n"))

    async def scenario() -> list[tuple[str, str]]:
        guarded = _guarded(checked)
        server = make_server([guarded]) if hardened else Server([guarded])
        servers.append(server)
        with tempfile.TemporaryDirectory(prefix="fleet-auth-") as directory:
            path = str(Path(directory) / "s.sock")
            await server.start(path=path)
            try:
                return [
                    await _call(path, small, {KEY: "sesame"}),
                    await _call(path, garbage, {KEY: "wrong"}),
                    await _call(path, small, None),
                    await _call(path, garbage, None),
                    await _call(path, garbage[:LIMIT], None),
                ]
            finally:
                server.close()
                await server.wait_closed()

    friend, wrong, without, large_without, garbage_within = asyncio.run(scenario())
    assert friend == ("OK", "'friend'")
    assert wrong == ("UNAUTHENTICATED", "Heartbeat: wrong key")
    assert without == ("OK", "None")  # the handler authenticates it from the body
    assert large_without == (
        "UNAUTHENTICATED",
        f"a request of 100000 bytes must carry {KEY} metadata (at most {LIMIT} bytes without)",
    )
    # Within the limit, a request without credentials is read (and refused as garbage).
    assert garbage_within[0] == "INVALID_ARGUMENT", garbage_within
    if hardened:
        # Refused from the HEADERS: no grpclib stream or handler task was made for it.
        server = servers[0]
        assert isinstance(server, HardenedServer)
        assert server.shield.counts.get("refused_early") == 1, server.shield.counts
