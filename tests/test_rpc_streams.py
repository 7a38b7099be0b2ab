"""Server-streaming calls through GuardedService: replies until the handler ends or the
client goes away, at most N open per caller, and a client that does not read is dropped
instead of buffered for (issue 13: follow streams are bounded per caller)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import free_port

from common.overload import MethodLimit
from common.rpc import GuardedService, Transport, make_server
from schema import admin_pb
from schema.gen.pb2.fleet.admin.v1 import admin_grpc, admin_pb2


class Events(admin_pb.AdminServiceBase):
    """WatchEvents that sends ``count`` events of ``size`` bytes, then waits forever
    when ``hold``; records that its generator was closed."""

    def __init__(self, *, count: int, size: int = 10, hold: bool = False) -> None:
        self.count, self.size, self.hold = count, size, hold
        self.closed = 0
        self.opened = 0

    async def watch_events(
        self, watch_events_request: admin_pb.WatchEventsRequest
    ) -> AsyncIterator[admin_pb.Event]:
        self.opened += 1
        try:
            for i in range(self.count):
                yield admin_pb.Event(id=i + 1, message="x" * self.size)
            if self.hold:
                await asyncio.Event().wait()
        finally:
            self.closed += 1


async def _serve(
    service: Events,
    *,
    max_streams_per_caller: int = 8,
    stream_send_timeout: float = 10.0,
) -> tuple[GuardedService, object, int]:
    guarded = GuardedService(
        service,
        policy={"WatchEvents": {"insecure"}},
        transport=Transport.INSECURE,
        max_streams_per_caller=max_streams_per_caller,
        stream_send_timeout=stream_send_timeout,
    )
    server = make_server([guarded])
    port = free_port()
    await server.start("127.0.0.1", port)
    return guarded, server, port


async def _until(predicate: object, what: str) -> None:
    for _ in range(500):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(what)


@pytest.mark.asyncio
async def test_replies_arrive_and_the_stream_ends_with_the_handler() -> None:
    service = Events(count=50)
    _, server, port = await _serve(service)
    channel = Channel("127.0.0.1", port)
    try:
        got = [
            e.id
            async for e in admin_pb.AdminServiceStub(channel).watch_events(
                admin_pb.WatchEventsRequest()
            )
        ]
        assert got == list(range(1, 51))
        await _until(lambda: service.closed == 1, "generator closed")
    finally:
        channel.close()
        server.close()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_at_most_n_streams_per_caller_and_a_gone_client_frees_its_slot() -> None:
    service = Events(count=1, hold=True)
    guarded, server, port = await _serve(service, max_streams_per_caller=2)
    channel = Channel("127.0.0.1", port)
    stub = admin_grpc.AdminServiceStub(channel)
    try:
        async with stub.WatchEvents.open() as one, stub.WatchEvents.open() as two:
            for s in (one, two):
                await s.send_message(admin_pb2.WatchEventsRequest(), end=True)
                got = await s.recv_message()
                assert got is not None and got.id == 1
            with pytest.raises(GRPCError) as err:
                await stub.WatchEvents(admin_pb2.WatchEventsRequest())
            assert err.value.status is Status.RESOURCE_EXHAUSTED
            assert "at most 2 per caller" in (err.value.message or "")
            assert service.opened == 2  # the refused one never started its handler
            await one.cancel()  # the client goes away: its generator is closed
            await _until(lambda: service.closed == 1, "the cancelled stream's handler closed")
            await two.cancel()
        await _until(lambda: not guarded._streams, "every slot given back")
        async with stub.WatchEvents.open() as three:  # a slot is free again
            await three.send_message(admin_pb2.WatchEventsRequest(), end=True)
            got = await three.recv_message()
            assert got is not None and got.id == 1
            await three.cancel()
    finally:
        channel.close()
        server.close()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_a_client_that_does_not_read_is_dropped_not_buffered_for() -> None:
    # 2,000 events of 64 KiB: far more than the HTTP/2 windows hold.
    service = Events(count=2000, size=64 * 1024)
    guarded, server, port = await _serve(service, stream_send_timeout=0.5)
    channel = Channel("127.0.0.1", port)
    stub = admin_grpc.AdminServiceStub(channel)
    try:
        s = await stub.WatchEvents.open().__aenter__()
        await s.send_message(admin_pb2.WatchEventsRequest(), end=True)
        # The handler is stopped and its slot given back; this client read nothing at
        # all, so its connection is closed (not even the trailers would go through).
        await _until(lambda: service.closed == 1, "the slow reader's stream dropped")
        assert not guarded._streams
        assert service.opened == 1
    finally:
        channel.close()
        server.close()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_streams_hold_no_in_flight_budget_and_a_relaying_role_has_its_own_bound() -> None:
    """A follow lasts minutes: it must not take one of the method's in-flight slots (they
    are for short calls); the bound that applies is per caller, by role when given."""
    service = Events(count=1, hold=True)
    guarded = GuardedService(
        service,
        policy={"WatchEvents": {"insecure"}},
        transport=Transport.INSECURE,
        max_in_flight={"WatchEvents": MethodLimit(1)},
        max_streams_per_role={"insecure": 3},
    )
    assert guarded.early_refusals() == {}  # no budget answer at HEADERS for streams
    server = make_server([guarded])
    port = free_port()
    await server.start("127.0.0.1", port)
    channel = Channel("127.0.0.1", port)
    stub = admin_grpc.AdminServiceStub(channel)
    try:
        opened = []
        for _ in range(3):  # a budget of 1 would refuse the second
            s = await stub.WatchEvents.open().__aenter__()
            await s.send_message(admin_pb2.WatchEventsRequest(), end=True)
            got = await s.recv_message()
            assert got is not None and got.id == 1
            opened.append(s)
        with pytest.raises(GRPCError) as err:
            await stub.WatchEvents(admin_pb2.WatchEventsRequest())
        assert "at most 3 per caller" in (err.value.message or "")
        for s in opened:
            await s.cancel()
    finally:
        channel.close()
        server.close()
