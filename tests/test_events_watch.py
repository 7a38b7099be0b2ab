"""Following fleet events (issue 13 item 2): WatchEvents, ``fleetctl events -f`` and
``nodes list -w``.

End to end with a real Manager, a real Daemon and fleetctl as a child process: an
agent's restart and its node going stopped and online again arrive as JSON lines as they
happen; a follower that goes away (Ctrl-C, or killed) is no longer a subscriber of the
Manager (``fleet_manager_watch_streams`` back to 0); one admin's ninth stream is refused;
``nodes list -w`` prints a new table when a node changes. In-process: resuming after an
id sends the history once and then the live events without gaps or duplicates, and a
reader that does not keep up is dropped with "too slow".
"""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError
from harness import async_wait_until, console_script, wait_until
from harness.daemon import agent, scrape_metrics, start_daemon
from harness.manager import ManagerProc, _channel, manager_rpc, start_manager
from test_fleetctl_e2e import admin_env

from common.errors import ResourceExhausted
from manager.events import EventRecorder
from manager.store import AgentRecord, Database, Store
from manager.store.events import EventRow, EventStore
from manager.watch import EventWatch
from schema import admin_pb

WATCH = "/fleet.admin.v1.AdminService/WatchEvents"


class Lines:
    """A child process's stdout, line by line, read by a thread (never blocks a test)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def until(self, match: Any, *, timeout: float = 60.0, what: str = "") -> str:
        """The first new line for which ``match(line)`` is true."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = ""
                if left <= 0:
                    raise AssertionError(
                        f"no line {what} within {timeout}s; got {self.seen}"
                    ) from None
                continue
            if line is None:
                raise AssertionError(f"stdout ended before a line {what}; got {self.seen}")
            self.seen.append(line)
            if match(line):
                return line


def _fleetctl(certs: Path, mgr: ManagerProc, *argv: str) -> subprocess.Popen[str]:
    import os

    return subprocess.Popen(
        [console_script("fleetctl"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **admin_env(certs, mgr.address)},
    )


def _streams(mgr: ManagerProc) -> float:
    assert mgr.http_port
    return scrape_metrics(mgr.http_port).get("fleet_manager_watch_streams", -1.0)


def _wait_streams(mgr: ManagerProc, count: int) -> None:
    wait_until(
        lambda: _streams(mgr) == count,
        timeout=60,
        what=f"fleet_manager_watch_streams == {count}",
    )


def _interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    code = proc.wait(30)
    assert proc.stderr is not None
    return code, proc.stderr.read()


@pytest.fixture
def fleet(tmp_path: Path, certs: Path) -> Iterator[tuple[ManagerProc, Any]]:
    mgr = start_manager(tmp_path, certs)
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=mgr.grpc_port,
        agents=[agent("web", "sleeper", start_seconds=0.2)],
    )
    try:
        wait_until(
            lambda: any(
                a.id == "web" and a.status == "RUNNING"
                for a in manager_rpc(
                    certs, mgr.grpc_port, "admin", "list_agents", admin_pb.ListAgentsRequest()
                ).agents
            ),
            timeout=60,
            what="web running on node-a",
        )
        yield mgr, daemon
    finally:
        daemon.stop()
        mgr.stop()


def test_events_follow_streams_restarts_and_node_changes_as_they_happen(
    certs: Path, fleet: tuple[ManagerProc, Any]
) -> None:
    mgr, daemon = fleet
    follower = _fleetctl(certs, mgr, "events", "-f", "-o", "json")
    killed = _fleetctl(certs, mgr, "events", "-f")
    try:
        out = Lines(follower)
        _wait_streams(mgr, 2)

        manager_rpc(
            certs,
            mgr.grpc_port,
            "admin",
            "operate_agent",
            admin_pb.OperateAgentRequest(node_id="node-a", agent_id="web", operation="restart"),
        )
        op = json.loads(out.until(lambda line: '"operation"' in line, what="operation"))
        assert op["agent_id"] == "web" and "admin" in op["actor"]
        started = json.loads(out.until(lambda line: '"started"' in line, what="started"))
        assert started["node_id"] == "node-a" and started["agent_id"] == "web"

        daemon.stop()  # a clean stop: Leave, stopped at once
        stopped = json.loads(out.until(lambda line: '"stopped"' in line, what="stopped"))
        assert stopped["kind"] == "status" and stopped["agent_id"] is None
        assert stopped["node_id"] == "node-a"
        daemon.restart()
        online = json.loads(
            out.until(lambda line: '"new_status": "online"' in line, what="back online")
        )
        assert online["old_status"] == "stopped"
        for line in out.seen:  # one JSON object a line, nothing else
            assert set(json.loads(line)) >= {"id", "timestamp", "node_id", "kind", "message"}

        killed.kill()  # a client that just vanishes is no longer a subscriber
        killed.wait(30)
        _wait_streams(mgr, 1)
        code, err = _interrupt(follower)
        assert code == 0, err
        assert "Traceback" not in err and "Aborted" not in err
        _wait_streams(mgr, 0)
    finally:
        for proc in (follower, killed):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_the_manager_going_away_ends_a_follow_with_one_line(
    certs: Path, tmp_path: Path, fleet: tuple[ManagerProc, Any]
) -> None:
    mgr, _ = fleet
    follower = _fleetctl(certs, mgr, "events", "-f")
    try:
        _wait_streams(mgr, 1)
        mgr.kill()
        code = follower.wait(60)
        assert follower.stderr is not None
        err = follower.stderr.read()
        assert code == 5, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    finally:
        if follower.poll() is None:
            follower.kill()


def test_nodes_list_watch_prints_a_new_table_when_a_node_changes(
    certs: Path, fleet: tuple[ManagerProc, Any]
) -> None:
    mgr, daemon = fleet
    watcher = _fleetctl(certs, mgr, "nodes", "list", "-w")
    try:
        out = Lines(watcher)
        out.until(lambda line: line.startswith("node-a") and "online" in line, what="online")
        _wait_streams(mgr, 1)
        daemon.stop()
        out.until(lambda line: line == "", what="the blank line between tables")
        out.until(lambda line: line.startswith("NODE"), what="a new table")
        out.until(lambda line: line.startswith("node-a") and "stopped" in line, what="stopped")
        code, err = _interrupt(watcher)
        assert code == 0, err
        assert "Traceback" not in err
        _wait_streams(mgr, 0)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait(10)


def test_one_admin_may_hold_eight_streams_the_ninth_is_refused(
    certs: Path, fleet: tuple[ManagerProc, Any]
) -> None:
    mgr, _ = fleet

    async def main() -> None:
        channel = _channel(certs, mgr.grpc_port, "admin")
        streams: list[Any] = []
        try:
            for _ in range(8):
                stream = channel.request(
                    WATCH, Cardinality.UNARY_STREAM, admin_pb.WatchEventsRequest, admin_pb.Event
                )
                await stream.__aenter__()
                await stream.send_message(admin_pb.WatchEventsRequest(), end=True)
                streams.append(stream)
            await async_wait_until(
                lambda: asyncio.to_thread(lambda: _streams(mgr) == 8),
                timeout=60,
                what="eight open streams",
            )
            ninth = channel.request(
                WATCH, Cardinality.UNARY_STREAM, admin_pb.WatchEventsRequest, admin_pb.Event
            )
            with pytest.raises(GRPCError) as refused:
                async with ninth:
                    await ninth.send_message(admin_pb.WatchEventsRequest(), end=True)
                    await ninth.recv_message()
            assert refused.value.status is Status.RESOURCE_EXHAUSTED
            assert "at most 8" in (refused.value.message or "")
        finally:
            for stream in streams:
                await stream.cancel()
                await stream.__aexit__(None, None, None)
            channel.close()

    asyncio.run(main())
    _wait_streams(mgr, 0)


# ---- in-process: resuming and slow readers ----


def _run(db_url: str, body: Any) -> Any:
    async def main() -> Any:
        db = Database(url=db_url)
        await db.start()
        try:
            events = EventStore(database=db)
            recorder = EventRecorder(store=events)
            store = Store(database=db, agent_events=recorder)
            return await body(store, events, recorder)
        finally:
            await db.close()

    return asyncio.run(main())


def test_after_id_sends_the_history_once_then_live_events_without_gaps(db_url: str) -> None:
    async def body(store: Store, events: EventStore, recorder: EventRecorder) -> None:
        now = time.time()
        await store.register_node(node_id="n1", facts={"hostname": "h"}, now=now, grace=30)

        async def sync(status: str, pid: int) -> None:
            state = AgentRecord(agent_id="web", status=status, pid=pid)
            await store.sync_agents(node_id="n1", states=[state], full=False, now=time.time())

        await sync("RUNNING", 10)
        first = [r for r in await events.list_events(node_id="n1") if r.agent_id]
        seen_id = first[0].id
        await sync("EXITED", 0)  # missed by the watcher: it comes from the history
        watch = EventWatch(recorder=recorder, store=events)
        rows = watch.rows(after_id=seen_id)
        got: list[EventRow] = []
        reader = asyncio.create_task(_collect(rows, got))
        await async_wait_until(lambda: _true(recorder.subscriber_count == 1), what="subscribed")
        await sync("RUNNING", 11)  # live
        await store.mark_stopped("n1", instance_id="", reason="daemon shut down", now=time.time())
        await async_wait_until(lambda: _true(len(got) >= 3), what="history and live")
        kinds = [(r.kind, r.message.split(":")[0]) for r in got]
        assert kinds[0] == ("exited", "exited")  # history first
        assert kinds[-2:] == [("started", "started (pid 11)"), ("status", "online -> stopped")]
        # The node's registration (before the resumed event's time) is not sent again,
        # and nothing comes twice.
        assert len({(r.kind == "status" and not r.agent_id, r.id) for r in got}) == len(got)
        assert all(r.id > seen_id for r in got if r.agent_id)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await rows.aclose()
        assert recorder.subscriber_count == 0

    _run(db_url, body)


async def _true(value: bool) -> bool:
    return value


async def _collect(rows: Any, into: list[EventRow]) -> None:
    async for row in rows:
        into.append(row)


def test_a_reader_that_falls_behind_is_dropped_too_slow(tmp_path: Path) -> None:
    async def body(store: Store, events: EventStore, recorder: EventRecorder) -> None:
        watch = EventWatch(recorder=recorder, store=events, queue_size=2)
        rows = watch.rows()
        first = asyncio.ensure_future(anext(rows))
        await async_wait_until(lambda: _true(recorder.subscriber_count == 1), what="subscribed")
        recorder.committed(
            [EventRow(i, time.time(), "n1", "web", "started", f"#{i}") for i in range(1, 7)]
        )
        assert (await first).id == 1
        with pytest.raises(ResourceExhausted, match=r"too slow: \d+ events not read"):
            await anext(rows)
        assert recorder.subscriber_count == 0  # the ended stream unsubscribed

    _run(f"sqlite://{tmp_path / 'fleet.db'}", body)
