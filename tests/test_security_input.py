"""Security battery, item 5: malformed input against one long-lived real Manager.

* hypothesis drives every ManagerService field an attacker controls — ids with ``/``,
  ``..``, NUL, 100 KB strings, huge label maps, negative and far-future timestamps,
  NaN/inf metric values — and random bytes / truncated protobuf as whole request bodies;
  every answer must be a deliberate status (never ``INTERNAL``/``UNKNOWN``), nothing
  invalid may be stored, and the Manager must stay up;
* hand-written frames: a length prefix claiming 2 GiB (followed by real bytes), the
  compressed flag, a truncated body;
* 10,000 streams opened and abandoned (reset, connection dropped, left hanging) while
  another node keeps heartbeating: the Manager's RSS stays bounded and the other node is
  served throughout.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Server
from harness.manager import ManagerProc, manager_rpc, start_manager, stored_nodes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import validate
from common.rpc import DEFAULT_REQUEST_TIMEOUT, GuardedService
from common.tls import TLSFiles, client_context, server_context
from schema import admin_pb, manager_pb

MANAGER_SVC = "/fleet.manager.v1.ManagerService/"
ADMIN_SVC = "/fleet.admin.v1.AdminService/"
# Statuses a deliberate refusal may carry; INTERNAL/UNKNOWN would mean a crash.
DELIBERATE = {
    "OK",
    "INVALID_ARGUMENT",
    "PERMISSION_DENIED",
    "NOT_FOUND",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ALREADY_EXISTS",
}
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@pytest.fixture(scope="module")
def mgr(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[ManagerProc]:
    proc = start_manager(tmp_path_factory.mktemp("security-input"), certs)
    # node-a is registered so that valid-looking calls reach the store.
    for node_id in ("node-a", "node-b"):
        manager_rpc(
            certs,
            proc.grpc_port,
            node_id,
            "register_node",
            manager_pb.RegisterNodeRequest(
                node_id=node_id,
                daemon_address="127.0.0.1:1",
                heartbeat_interval_seconds=60,
                instance_id=f"{node_id}-1",
            ),
        )
    try:
        yield proc
        assert proc.alive(), proc.output()[-3000:]
        assert "Traceback" not in proc.output(), proc.output()[-6000:]
    finally:
        code = proc.stop()
    assert code == 0


def _ctx(certs: Path, name: str) -> ssl.SSLContext:
    files = TLSFiles(certs / f"{name}.crt", certs / f"{name}.key", certs / "ca.crt")
    return client_context(files, expect_role="manager")


class Caller:
    """One event loop and one channel per certificate, reused by every example."""

    def __init__(self, certs: Path, port: int) -> None:
        self.certs = certs
        self.port = port
        self.loop = asyncio.new_event_loop()
        self.channels: dict[str, Channel] = {}

    def channel(self, name: str) -> Channel:
        """Called inside the loop (grpclib binds a channel to the running loop)."""
        if name not in self.channels:
            self.channels[name] = Channel("127.0.0.1", self.port, ssl=_ctx(self.certs, name))
        return self.channels[name]

    def call(self, name: str, path: str, body: bytes, reply_type: type) -> tuple[str, str]:
        """Send ``body`` as the request's message bytes; (status name, message)."""
        return self.loop.run_until_complete(self._call(name, path, body, reply_type))

    async def _call(
        self, name: str, path: str, body: bytes, reply_type: type[Any]
    ) -> tuple[str, str]:
        channel = self.channel(name)
        try:
            async with channel.request(
                path, Cardinality.UNARY_UNARY, _Raw, reply_type, timeout=20
            ) as stream:
                await stream.send_message(_Raw(body), end=True)
                await stream.recv_message()
                await stream.recv_trailing_metadata()
                return "OK", ""
        except GRPCError as exc:
            return exc.status.name, exc.message or ""

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


class _Raw:
    """A 'message' that is just bytes, so bodies can be anything on the wire."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def __bytes__(self) -> bytes:
        return self.data

    def SerializeToString(self) -> bytes:
        return self.data


@pytest.fixture(scope="module")
def caller(mgr: ManagerProc, certs: Path) -> Iterator[Caller]:
    c = Caller(certs, mgr.grpc_port)
    yield c
    c.close()


# ---- strategies ------------------------------------------------------------------------

NASTY_IDS = st.sampled_from(
    [
        "",
        "/",
        "..",
        "../node-b",
        "node-a/../node-b",
        "node-a\x00",
        "node-a\x00node-b",
        "node-b",
        " node-a",
        "node-a ",
        "NODE-A",
        "node‐a",  # a Unicode hyphen
        "x" * 100_000,
        "%2e%2e",
        "node-a;DROP TABLE nodes",
        "*",
    ]
)
IDS = st.one_of(NASTY_IDS, st.just("node-a"), st.text(max_size=200))
BIG_TEXT = st.one_of(st.text(max_size=300), st.just("y" * 100_000), st.just("\x00\x01\x1b[2J"))
TIMESTAMPS = st.one_of(
    st.sampled_from([0, -1, -(2**63), 2**63 - 1, 32503680000, int(time.time())]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
FLOATS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True),
)
LABELS = st.one_of(
    st.dictionaries(st.text(max_size=70), st.text(max_size=300), max_size=8),
    st.just({f"k{i}": "v" for i in range(10_000)}),
    st.just({"../../etc/passwd": "x", "a\x00b": "c"}),
)


def _assert_deliberate(code: str, message: str) -> None:
    assert code in DELIBERATE, (code, message)
    assert "Traceback" not in message and 'File "' not in message


def _node_rows_are_sane(db_url: str) -> None:
    for node_id, row in stored_nodes(db_url).items():
        validate.check_id("node_id", node_id)
        validate.check_labels("labels", row["labels"])
        assert len(row["hostname"]) <= 255


# ---- message-field fuzzing ------------------------------------------------------------


@FUZZ
@given(
    node_id=IDS,
    hostname=BIG_TEXT,
    labels=LABELS,
    address=st.one_of(BIG_TEXT, st.just("127.0.0.1:1"), st.just("0.0.0.0:1")),
    interval=st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_fuzz_register_node(
    caller: Caller, mgr: ManagerProc, node_id: str, hostname: str, labels: dict, address: str,
    interval: int,
) -> None:  # fmt: skip
    request = manager_pb.RegisterNodeRequest(
        node_id=node_id,
        hostname=hostname,
        labels=labels,
        daemon_address=address,
        heartbeat_interval_seconds=interval,
        instance_id="node-a-1",
    )
    code, message = caller.call(
        "node-a", MANAGER_SVC + "RegisterNode", bytes(request), manager_pb.RegisterNodeResponse
    )
    _assert_deliberate(code, message)
    if code == "OK":
        assert node_id == "node-a"  # nobody else, and never a mangled variant
        assert len(hostname) <= 255 and len(labels) <= validate.MAX_LABELS


@FUZZ
@given(node_id=IDS, timestamp=TIMESTAMPS, instance=st.one_of(st.just("node-a-1"), BIG_TEXT))
def test_fuzz_heartbeat(caller: Caller, node_id: str, timestamp: int, instance: str) -> None:
    request = manager_pb.HeartbeatRequest(
        node_id=node_id, timestamp=timestamp, instance_id=instance
    )
    code, message = caller.call(
        "node-a", MANAGER_SVC + "Heartbeat", bytes(request), manager_pb.HeartbeatResponse
    )
    _assert_deliberate(code, message)
    if code == "OK":
        assert node_id == "node-a"
        now = time.time()
        assert timestamp == 0 or validate.MIN_TIMESTAMP <= timestamp <= now + 86_400 + 5


@FUZZ
@given(
    node_id=IDS,
    samples=st.lists(
        st.tuples(
            st.one_of(st.just("cpu"), IDS),
            TIMESTAMPS,
            st.dictionaries(st.one_of(st.just("usage"), st.text(max_size=80)), FLOATS, max_size=5),
        ),
        max_size=5,
    ),
)
def test_fuzz_report_metrics(
    caller: Caller, node_id: str, samples: list[tuple[str, int, dict[str, float]]]
) -> None:
    request = manager_pb.ReportMetricsRequest(
        node_id=node_id,
        metrics=[manager_pb.MetricData(type=t, timestamp=ts, values=v) for t, ts, v in samples],
    )
    code, message = caller.call(
        "node-a", MANAGER_SVC + "ReportMetrics", bytes(request), manager_pb.ReportMetricsResponse
    )
    _assert_deliberate(code, message)
    if code == "OK":
        assert node_id == "node-a"
        for _t, ts, values in samples:
            assert all(math.isfinite(v) for v in values.values())
            assert validate.MIN_TIMESTAMP <= ts <= time.time() + 86_400 + 5


@FUZZ
@given(
    node_id=IDS,
    states=st.lists(
        st.tuples(
            IDS,
            st.one_of(st.sampled_from(["RUNNING", "FATAL", "running"]), BIG_TEXT),
            st.integers(min_value=-(2**31), max_value=2**31 - 1),
            TIMESTAMPS,
        ),
        max_size=4,
    ),
)
def test_fuzz_sync_agent_states(
    caller: Caller, node_id: str, states: list[tuple[str, str, int, int]]
) -> None:
    request = manager_pb.SyncAgentStatesRequest(
        node_id=node_id,
        states=[
            manager_pb.AgentState(agent_id=a, status=s, pid=pid, start_time=ts)
            for a, s, pid, ts in states
        ],
    )
    code, message = caller.call(
        "node-a",
        MANAGER_SVC + "SyncAgentStates",
        bytes(request),
        manager_pb.SyncAgentStatesResponse,
    )
    _assert_deliberate(code, message)
    if code == "OK":
        assert node_id == "node-a"
        for agent_id, _s, pid, _ts in states:
            validate.check_id("agent_id", agent_id)
            assert pid >= 0


@FUZZ
@given(
    node_id=IDS,
    agent_id=IDS,
    status=st.one_of(st.just(""), BIG_TEXT),
    since=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    limit=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    labels=LABELS,
)
def test_fuzz_admin_queries(
    caller: Caller,
    node_id: str,
    agent_id: str,
    status: str,
    since: int,
    limit: int,
    labels: dict[str, str],
) -> None:
    """Admin RPCs that do not need a Daemon: the Manager's own read paths."""
    for path, request, reply in (
        (
            "ListNodes",
            admin_pb.ListNodesRequest(status=status, labels=labels),
            admin_pb.ListNodesResponse,
        ),
        ("GetNode", admin_pb.GetNodeRequest(node_id=node_id), admin_pb.GetNodeResponse),
        (
            "ListAgents",
            admin_pb.ListAgentsRequest(node_id=node_id, status=status),
            admin_pb.ListAgentsResponse,
        ),
        (
            "QueryNodeMetrics",
            admin_pb.QueryNodeMetricsRequest(
                node_id=node_id, type=agent_id[:40], since_seconds=since, limit=limit
            ),
            admin_pb.QueryNodeMetricsResponse,
        ),
        (
            "GetAgentConfig",
            admin_pb.GetAgentConfigRequest(node_id=node_id, agent_id=agent_id),
            admin_pb.GetAgentConfigResponse,
        ),
    ):
        code, message = caller.call("admin", ADMIN_SVC + path, bytes(request), reply)
        # GetAgentConfig for a registered node whose Daemon is not there: UNAVAILABLE.
        _assert_deliberate(code if code != "UNAVAILABLE" else "OK", message)


METHODS = [
    ("node-a", MANAGER_SVC + "RegisterNode", manager_pb.RegisterNodeResponse),
    ("node-a", MANAGER_SVC + "Heartbeat", manager_pb.HeartbeatResponse),
    ("node-a", MANAGER_SVC + "ReportMetrics", manager_pb.ReportMetricsResponse),
    ("node-a", MANAGER_SVC + "SyncAgentStates", manager_pb.SyncAgentStatesResponse),
    ("admin", ADMIN_SVC + "ListNodes", admin_pb.ListNodesResponse),
    ("admin", ADMIN_SVC + "GetNode", admin_pb.GetNodeResponse),
    ("admin", ADMIN_SVC + "ListAgents", admin_pb.ListAgentsResponse),
    ("admin", ADMIN_SVC + "OperateAgent", admin_pb.OperateAgentResponse),
    ("admin", ADMIN_SVC + "GetAgentMetrics", admin_pb.GetAgentMetricsResponse),
    ("admin", ADMIN_SVC + "QueryNodeMetrics", admin_pb.QueryNodeMetricsResponse),
    ("admin", ADMIN_SVC + "PushUpdate", admin_pb.PushUpdateResponse),
    ("admin", ADMIN_SVC + "GetAgentConfig", admin_pb.GetAgentConfigResponse),
]


@FUZZ
@given(method=st.sampled_from(METHODS), body=st.binary(max_size=2048), cut=st.integers(0, 64))
def test_fuzz_random_and_truncated_bodies(
    caller: Caller, method: tuple[str, str, type], body: bytes, cut: int
) -> None:
    """Random bytes, and a valid message cut short, as the request body of every RPC."""
    name, path, reply = method
    valid = bytes(
        manager_pb.RegisterNodeRequest(
            node_id="node-a", hostname="h" * 50, labels={"a": "b"}, daemon_address="127.0.0.1:1"
        )
    )
    for data in (body, valid[: max(0, len(valid) - 1 - cut)]):
        code, message = caller.call(name, path, data, reply)
        _assert_deliberate(code if code != "UNAVAILABLE" else "OK", message)


def test_stored_rows_stay_valid_after_fuzzing(
    caller: Caller, mgr: ManagerProc, certs: Path
) -> None:
    """Whatever the fuzzers sent, the database holds only well-formed node rows, and the
    Manager still answers an honest node."""
    _node_rows_are_sane(mgr.db_url)
    assert set(stored_nodes(mgr.db_url)) <= {"node-a", "node-b"}
    reply = manager_rpc(
        certs,
        mgr.grpc_port,
        "node-b",
        "heartbeat",
        manager_pb.HeartbeatRequest(node_id="node-b", timestamp=int(time.time())),
    )
    assert reply.success


# ---- hand-written frames ----------------------------------------------------------------


async def _raw_frames(port: int, ctx: Any, frames: list[bytes]) -> tuple[str, str]:
    """Write ``frames`` as the request's DATA (bypassing the codec) while reading the
    answer: the server may answer and stop reading long before we finish sending."""
    channel = Channel("127.0.0.1", port, ssl=ctx)
    try:
        async with channel.request(
            MANAGER_SVC + "ReportMetrics",
            Cardinality.UNARY_UNARY,
            manager_pb.ReportMetricsRequest,
            manager_pb.ReportMetricsResponse,
            timeout=20,
        ) as stream:
            await stream.send_request()

            async def send() -> None:
                for i, frame in enumerate(frames):
                    await stream._stream.send_data(frame, end_stream=i == len(frames) - 1)

            sender = asyncio.create_task(send())
            stream._end_done = True
            try:
                await asyncio.wait_for(stream.recv_message(), 15)
                await asyncio.wait_for(stream.recv_trailing_metadata(), 15)
            except StreamTerminatedError:
                pass  # answered, then reset while we were still sending: status below
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        return "OK", ""
    except GRPCError as exc:
        return exc.status.name, exc.message or ""
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("frames", "status"),
    [
        # Claims 2 GiB, then really starts sending: refused from the prefix, not buffered.
        ([b"\x00" + (2**31).to_bytes(4, "big")] + [b"\x00" * 65536] * 64, "RESOURCE_EXHAUSTED"),
        ([b"\x00\xff\xff\xff\xff"], "RESOURCE_EXHAUSTED"),
        ([b"\x01" + (3).to_bytes(4, "big") + b"abc"], "UNIMPLEMENTED"),  # compressed flag
        ([b"\x00" + (100).to_bytes(4, "big") + b"\x0a\x06node-a"], "INVALID_ARGUMENT"),
        ([b"\x00\x00"], "INVALID_ARGUMENT"),  # prefix itself cut short
        ([b"\x00" + (3).to_bytes(4, "big") + b"\xff\xff\xff"], "INVALID_ARGUMENT"),
        # Two messages on a unary call: the first is served, the extra is not trusted.
        ([b"\x00\x00\x00\x00\x00", b"\x00\x00\x00\x00\x00"], None),
    ],
    ids=["2GiB-then-data", "4GiB", "compressed", "truncated", "short-prefix", "garbage", "two"],
)
def test_hand_written_frames(
    mgr: ManagerProc, certs: Path, frames: list[bytes], status: str | None
) -> None:
    rss_before = psutil.Process(mgr.pid).memory_info().rss
    code, message = asyncio.run(_raw_frames(mgr.grpc_port, _ctx(certs, "node-a"), frames))
    if status is None:
        assert code in DELIBERATE, (code, message)
    else:
        assert code == status, (code, message)
    # Nothing close to the claimed size was buffered.
    assert psutil.Process(mgr.pid).memory_info().rss - rss_before < 64 * 1024 * 1024
    assert mgr.alive()


# ---- 10,000 abandoned streams ----------------------------------------------------------


async def _open_streams(port: int, ctx: Any, count: int, partial: bytes) -> tuple[Channel, list]:
    """``count`` (<= 100, the server's concurrent-stream limit) streams on one connection,
    each with its headers and ``partial`` bytes of a message sent, then nothing."""
    channel = Channel("127.0.0.1", port, ssl=ctx)
    streams = []
    for _ in range(count):
        stream = channel.request(
            MANAGER_SVC + "Heartbeat",
            Cardinality.UNARY_UNARY,
            manager_pb.HeartbeatRequest,
            manager_pb.HeartbeatResponse,
        )
        await stream.__aenter__()  # no deadline, never exited: abandoned
        await stream.send_request()
        if partial:
            await stream._stream.send_data(partial, end_stream=False)
        streams.append(stream)
    return channel, streams


async def _final_status(stream: Any) -> str:
    """How the server ended a stream we never finished: the grpc-status it sent. (The
    server answers, then resets the half we left open, so grpclib's client may report
    the reset first; the status is in the headers it received.)"""
    try:
        await stream.recv_initial_metadata()
        await stream.recv_trailing_metadata()
    except GRPCError as exc:
        return exc.status.name
    except StreamTerminatedError:
        pass
    raw = stream._stream
    for headers in (raw.headers, raw.trailers):
        for key, value in headers or ():
            if key == "grpc-status":
                return Status(int(value)).name
    return "NO STATUS"


def test_a_request_never_finished_is_closed_by_the_server(certs: Path) -> None:
    """The guard's request timeout, shortened: a caller that sends headers and half a
    frame, then nothing, gets DEADLINE_EXCEEDED instead of holding a handler forever."""

    class Echo(manager_pb.ManagerServiceBase):
        async def heartbeat(self, req: manager_pb.HeartbeatRequest) -> manager_pb.HeartbeatResponse:
            return manager_pb.HeartbeatResponse(success=True)

    async def scenario() -> tuple[str, float]:
        server = Server(
            [GuardedService(Echo(), policy={"Heartbeat": {"node"}}, request_timeout=0.5)]
        )
        files = TLSFiles(certs / "manager.crt", certs / "manager.key", certs / "ca.crt")
        await server.start("127.0.0.1", 0, ssl=server_context(files))
        port = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            channel, streams = await _open_streams(port, _ctx(certs, "node-a"), 3, b"\x00\x00")
            started = time.monotonic()
            codes = await asyncio.wait_for(asyncio.gather(*map(_final_status, streams)), 10)
            took = time.monotonic() - started
            channel.close()
            assert set(codes) == {"DEADLINE_EXCEEDED"}, codes
            return codes[0], took
        finally:
            server.close()
            await server.wait_closed()

    code, took = asyncio.run(scenario())
    assert code == "DEADLINE_EXCEEDED" and took < 5


@pytest.mark.slow
def test_10000_abandoned_streams_keep_memory_bounded_and_others_served(
    mgr: ManagerProc, certs: Path
) -> None:
    proc = psutil.Process(mgr.pid)
    ctx = _ctx(certs, "node-a")
    latencies: list[float] = []
    failures: list[str] = []
    rss: list[int] = []

    async def honest_node(stop: asyncio.Event) -> None:
        """node-b keeps heartbeating on its own connection throughout."""
        channel = Channel("127.0.0.1", mgr.grpc_port, ssl=_ctx(certs, "node-b"))
        stub = manager_pb.ManagerServiceStub(channel, timeout=10)
        try:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await stub.heartbeat(
                        manager_pb.HeartbeatRequest(node_id="node-b", timestamp=int(time.time()))
                    )
                    latencies.append(time.monotonic() - started)
                except Exception as exc:
                    failures.append(repr(exc))
                rss.append(proc.memory_info().rss)
                await asyncio.sleep(0.2)
        finally:
            channel.close()

    async def scenario() -> dict[str, int]:
        stop = asyncio.Event()
        honest = asyncio.create_task(honest_node(stop))
        opened = 0
        baseline = proc.memory_info().rss
        # 1) 5,000 streams reset by the client (RST_STREAM) after a partial prefix.
        for _ in range(50):
            channel, streams = await _open_streams(mgr.grpc_port, ctx, 100, b"\x00\x00\x00")
            opened += len(streams)
            for s in streams:
                await s.cancel()
            channel.close()
        # 2) 3,000 streams whose connection just goes away (no RST_STREAM, no END_STREAM).
        for _ in range(30):
            channel, streams = await _open_streams(mgr.grpc_port, ctx, 100, b"")
            opened += len(streams)
            channel.close()
        # 3) 2,000 streams left hanging on 20 open connections, mid-message.
        hanging = []
        hanging_streams = []
        for _ in range(20):
            channel, streams = await _open_streams(mgr.grpc_port, ctx, 100, b"\x00\x00\x00\x00")
            opened += len(streams)
            hanging.append(channel)
            hanging_streams.append(streams)
        peak = proc.memory_info().rss
        # The server gives up on each hanging request after its request timeout and
        # closes the stream with DEADLINE_EXCEEDED (node-b keeps beating meanwhile).
        left = [streams[0] for streams in hanging_streams]
        closed = await asyncio.wait_for(
            asyncio.gather(*(_final_status(s) for s in left)),
            DEFAULT_REQUEST_TIMEOUT + 20,
        )
        assert set(closed) == {"DEADLINE_EXCEEDED"}, closed
        for channel in hanging:
            channel.close()
        await asyncio.sleep(1)
        stop.set()
        await honest
        return {"opened": opened, "baseline": baseline, "peak": peak}

    result = asyncio.run(scenario())
    assert result["opened"] == 10_000
    growth = max(rss) - result["baseline"]
    assert not failures, failures[:5]
    assert len(latencies) >= 5
    # A heartbeat is answered once durable (flush every 1 s): bound = flush + 2 s.
    assert max(latencies) < 3.0, (max(latencies), statistics.median(latencies))
    assert growth < 150 * 1024 * 1024, growth / 2**20
    assert mgr.alive()
    print(
        f"10k streams: baseline {result['baseline'] / 2**20:.0f} MiB, growth "
        f"{growth / 2**20:.1f} MiB, node-b p50 {statistics.median(latencies) * 1000:.0f} ms "
        f"max {max(latencies) * 1000:.0f} ms"
    )
