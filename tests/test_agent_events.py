"""Agent event history (issue 13 item 1): what a user sees when asking "why did it crash?".

In-process, on both backends: synced states become started / exited / restarted / fatal
/ added / removed events, written with the sync and published once committed; node
status events are merged into ListEvents; the per-agent quota bounds a crash loop and
says how much it left out. End to end: a real Manager and a real Daemon with a
crash-looping agent, an operation with its admin identity, the history surviving a
Manager restart, and ``fleetctl events`` / ``fleetctl agent show`` on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from harness import wait_until
from harness.daemon import agent, start_daemon
from harness.manager import manager_rpc, start_manager, write_manager_config
from test_fleetctl_e2e import admin_env
from typer.testing import CliRunner

from fleetctl.app import app
from fleetctl.errors import ExitCode
from manager.events import AgentEventQuota, EventRecorder, exit_message
from manager.store import AgentRecord, Database, Store
from manager.store.events import EventRow, EventStore
from schema import admin_pb

runner = CliRunner()


def _run(
    db_url: str,
    body: Callable[[Store, EventStore, EventRecorder], Awaitable[Any]],
    *,
    quota: AgentEventQuota | None = None,
) -> Any:
    async def main() -> Any:
        db = Database(url=db_url)
        await db.start()
        try:
            events = EventStore(database=db)
            recorder = EventRecorder(store=events, quota=quota)
            store = Store(database=db, agent_events=recorder)
            return await body(store, events, recorder)
        finally:
            await db.close()

    return asyncio.run(main())


def _web(status: str, *, pid: int = 0, restarts: int = 0, reason: str = "") -> AgentRecord:
    return AgentRecord(
        agent_id="web", status=status, pid=pid, restart_count=restarts, status_reason=reason
    )


def test_synced_states_become_events_published_once_committed(db_url: str) -> None:
    async def body(store: Store, events: EventStore, recorder: EventRecorder) -> None:
        published: list[EventRow] = []
        unsubscribe = recorder.subscribe(published.append)
        now = time.time()
        await store.register_node(node_id="n1", facts={"hostname": "h1"}, now=now, grace=30)

        async def sync(*states: AgentRecord, full: bool = True) -> None:
            await store.sync_agents(node_id="n1", states=list(states), full=full, now=time.time())

        await sync(_web("RUNNING", pid=10), AgentRecord(agent_id="db", status="RUNNING", pid=7))
        await sync(
            _web("BACKOFF", reason="exit code 3; restarting in 1.0s"),
            AgentRecord(agent_id="db", status="RUNNING", pid=7),
        )
        await sync(_web("RUNNING", pid=11, restarts=1), full=False)
        await sync(_web("RUNNING", pid=11, restarts=1), full=False)  # nothing new
        await sync(_web("FATAL", restarts=1, reason="killed by signal 9; flapping"), full=False)
        await sync(_web("FATAL", restarts=1, reason="killed by signal 9; flapping"))  # db gone

        rows = await events.list_events(node_id="n1", limit=100)
        agent_rows = [r for r in rows if r.agent_id]
        story = [(r.agent_id, r.kind, r.message) for r in reversed(agent_rows)]
        assert story == [
            ("web", "added", "added: RUNNING (pid 10)"),
            ("db", "added", "added: RUNNING (pid 7)"),
            ("web", "exited", "exited with code 3; restarting in 1.0s"),
            ("web", "restarted", "crash restart 1"),
            ("web", "started", "started (pid 11)"),
            ("web", "fatal", "killed by signal 9; flapping"),
            ("db", "removed", "no longer configured on the node"),
        ]
        # The node's own status event is in the same history (kind "status", no agent).
        node_rows = [r for r in rows if not r.agent_id]
        assert [(r.kind, r.new_status) for r in node_rows] == [("status", "online")]
        # Published after commit, each once, in id order, as stored — the node's status
        # event too, as ListEvents shows it (its id from the node event table).
        assert [r for r in published if not r.agent_id] == node_rows
        told = [r for r in published if r.agent_id]
        assert told == sorted(agent_rows, key=lambda r: r.id)
        assert [r.id for r in told] == sorted({r.id for r in told})

        only = await events.list_events(agent_id="web", kinds=["exited", "fatal"], limit=10)
        assert [r.kind for r in only] == ["fatal", "exited"]
        assert [r.kind for r in await events.list_events(node_only=True)] == ["status"]
        assert len(await events.list_events(node_id="n1", limit=2)) == 2
        last = await events.last_exit("n1", "web")
        assert last is not None and last.message == "killed by signal 9; flapping"

        unsubscribe()
        await sync(_web("RUNNING", pid=12, restarts=2), full=False)
        assert len(published) == len(agent_rows) + 1  # unsubscribed: not told
        # Removing the node removes its history with it.
        assert await store.remove_node("n1")
        assert await events.list_events(node_id="n1") == []

    _run(db_url, body)


def test_exit_reasons_read_as_an_operator_says_them() -> None:
    assert exit_message("exit code 3") == "exited with code 3"
    assert exit_message("killed by signal 9; restarting in 0.0s") == (
        "killed by signal 9; restarting in 0.0s"
    )
    assert exit_message("exited within start_seconds: exit code 1; stderr: boom") == (
        "exited with code 1 within start_seconds; stderr: boom"
    )


def test_the_quota_bounds_a_crash_loop_and_says_what_it_left_out(tmp_path: Path) -> None:
    clock = [1000.0]
    quota = AgentEventQuota(events=5, window=100.0, clock=lambda: clock[0])

    async def body(store: Store, events: EventStore, recorder: EventRecorder) -> None:
        async def sync(state: AgentRecord, agent_id: str = "web") -> None:
            await store.sync_agents(
                node_id="n1",
                states=[dataclasses.replace(state, agent_id=agent_id)],
                full=False,
                now=time.time(),
            )

        for n in range(1, 31):  # 30 crash cycles: 90 events without a quota
            await sync(_web("BACKOFF", restarts=n - 1, reason="exit code 3"))
            await sync(_web("RUNNING", pid=100 + n, restarts=n))
        await sync(_web("RUNNING", pid=5), agent_id="other")  # another agent: its own quota
        web = await events.list_events(agent_id="web", limit=1000)
        assert len(web) == 5
        assert [r.agent_id for r in await events.list_events(agent_id="other")] == ["other"]

        clock[0] += 100.0  # the bucket refilled: the next event says what was dropped
        await sync(_web("FATAL", restarts=30, reason="exit code 3; flapping"))
        newest = await events.list_events(agent_id="web", limit=2)
        assert [r.kind for r in newest] == ["fatal", "suppressed"]
        assert newest[1].message == ("85 more events not recorded: over the quota of 5 per 1m40s")

    _run(f"sqlite://{tmp_path / 'fleet.db'}", body, quota=quota)


# ---- end to end ----


def _list(port: int, certs: Path, **request: Any) -> list[Any]:
    reply = manager_rpc(certs, port, "admin", "list_events", admin_pb.ListEventsRequest(**request))
    return list(reply.events)


def _cli(env: dict[str, str], *argv: str) -> Any:
    return runner.invoke(app, list(argv), env=env)


def test_a_crash_loop_and_an_operation_are_history_that_survives_a_restart(
    tmp_path: Path, certs: Path
) -> None:
    config = write_manager_config(
        tmp_path / "manager.toml", {"events": {"agent_quota": 10, "agent_quota_window": "1h"}}
    )
    extra = ["--config", str(config)]
    mgr = start_manager(tmp_path, certs, extra_args=extra)
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=mgr.grpc_port,
        agents=[
            # Runs 0.6 s, exits 3, restarted after 1 s (long enough to be synced).
            agent(
                "looper",
                "crasher",
                "3",
                "0.6",
                start_seconds=0.3,
                backoff_initial=1.0,
                backoff_max=1.0,
                max_restarts=1000,
            ),
            agent("steady", "sleeper"),
        ],
    )
    try:
        port = mgr.grpc_port

        def looper_kinds() -> set[str]:
            return {e.kind for e in _list(port, certs, node_id="node-a", agent_id="looper")}

        wait_until(
            lambda: {"started", "exited", "restarted"} <= looper_kinds(),
            timeout=90,
            what="looper's starts, exits and crash restarts in the history",
        )
        exits = _list(port, certs, agent_id="looper", kinds=["exited"])
        assert any(e.message.startswith("exited with code 3") for e in exits), exits
        assert all(e.node_id == "node-a" and e.old_status == "RUNNING" for e in exits), exits

        # An operation through the Manager, by the real CLI: recorded with who asked.
        env = admin_env(certs, f"127.0.0.1:{port}")
        result = _cli(env, "agent", "restart", "node-a", "steady")
        assert result.exit_code == 0, result.output
        ops = _list(port, certs, node_id="node-a", agent_id="steady", kinds=["operation"])
        assert [(e.kind, e.actor, e.message) for e in ops] == [
            ("operation", "admin/admin", "restart by admin/admin: ok")
        ], ops
        assert ops[0].new_status == "RUNNING" and ops[0].pid > 0
        wait_until(
            lambda: any(
                e.kind == "started" and e.pid == ops[0].pid
                for e in _list(port, certs, agent_id="steady")
            ),
            timeout=30,
            what="steady's new pid as a started event",
        )

        # A config push and a Daemon reload: recorded with their outcome and who asked.
        manager_rpc(
            certs,
            port,
            "admin",
            "push_update",
            admin_pb.PushUpdateRequest(
                node_id="node-a", agent_id="steady", config_json="{}", version="v7"
            ),
        )
        manager_rpc(
            certs, port, "admin", "reload_daemon", admin_pb.ReloadDaemonRequest(node_id="node-a")
        )
        pushed = _list(port, certs, node_id="node-a", kinds=["config", "reload"])
        assert [(e.kind, e.agent_id, e.actor) for e in pushed] == [
            ("reload", "", "admin/admin"),
            ("config", "steady", "admin/admin"),
        ], pushed
        assert pushed[0].message == "reload by admin/admin: ok, 0 change(s)", pushed
        assert pushed[1].message.startswith("config v7 by admin/admin"), pushed

        # The quota bounds the crash loop: 10 events per agent per hour, however long
        # it goes on (each crash is 3 events: exited, restarted, started).
        def looper_restarts() -> int:
            reply = manager_rpc(
                certs, port, "admin", "get_agent", admin_pb.GetAgentRequest(agent_id="looper")
            )
            return int(reply.agent.restart_count)

        wait_until(lambda: looper_restarts() >= 6, timeout=120, what="six crash restarts")
        assert len(_list(port, certs, agent_id="looper", limit=1000)) <= 10

        # fleetctl events: table and JSON.
        result = _cli(env, "events", "node-a", "looper", "--since", "1h", "-k", "exited")
        assert result.exit_code == 0, result.output
        lines = result.stdout.strip().splitlines()
        assert lines[0].split() == ["TIME", "NODE", "AGENT", "KIND", "MESSAGE", "ACTOR"]
        assert all("exited" in line and "looper" in line for line in lines[1:]) and lines[1:]
        result = _cli(env, "events", "--limit", "500", "-o", "json")
        assert result.exit_code == 0, result.output
        shown = json.loads(result.stdout)
        assert list(shown[0]) == [
            "id",
            "timestamp",
            "node_id",
            "agent_id",
            "kind",
            "message",
            "actor",
            "old_status",
            "new_status",
            "pid",
        ]
        assert any(e["kind"] == "status" and e["agent_id"] is None for e in shown), shown
        assert any(e["actor"] == "admin/admin" for e in shown)
        bad = _cli(env, "events", "--kind", "crashed")
        assert bad.exit_code == ExitCode.USAGE and "use one of" in bad.output

        # fleetctl agent show (the agent id is unique: no node needed).
        result = _cli(env, "agent", "show", "looper", "-o", "json")
        assert result.exit_code == 0, result.output
        story = json.loads(result.stdout)
        assert list(story) == ["agent", "last_exit", "last_exit_at", "events"]
        assert story["agent"]["node_id"] == "node-a"
        assert story["last_exit"].startswith("exited with code 3"), story
        assert story["last_exit_at"] and story["events"]
        result = _cli(env, "agent", "show", "node-a", "looper")
        assert result.exit_code == 0, result.output
        assert "Last exit" in result.stdout and "exited with code 3" in result.stdout
        missing = _cli(env, "agent", "show", "node-a", "lopper")
        assert missing.exit_code == ExitCode.NOT_FOUND, missing.output
        assert "did you mean looper" in missing.output, missing.output

        # The history is in the database: a new Manager on it shows the same events.
        daemon.stop()
        before = _list(port, certs, limit=1000)
        mgr.stop()
        mgr = start_manager(tmp_path, certs, extra_args=extra, log_name="manager-2.log")
        after = _list(mgr.grpc_port, certs, limit=1000)

        def keys(events: list[Any]) -> set[tuple[int, str, str, str]]:
            return {(e.id, e.agent_id, e.kind, e.message) for e in events}

        assert keys(before) <= keys(after)
        assert any(e.kind == "operation" and e.actor == "admin/admin" for e in after)
    finally:
        daemon.stop()
        mgr.stop()
