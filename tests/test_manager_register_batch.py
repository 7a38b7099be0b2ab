"""RegisterNode group commit (manager/store/group_commit.py) on both backends.

Concurrent registrations are written in batches; the batches must have exactly the
effects of registering node by node: rows, node events, and each caller's own result.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from tortoise.exceptions import IntegrityError

from common.errors import Unavailable
from manager.store import AgentRecord, Database, RegisterResult, Store
from manager.store.models import OFFLINE, Agent, Node, NodeEvent
from manager.store.store import _AgentSync, _Registration

GRACE = 30.0


def _facts(node_id: str, instance: str, **extra: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "hostname": f"host-{node_id}",
        "ip": "10.0.0.1",
        "os": "linux",
        "arch": "amd64",
        "labels": {"env": "test", "id": node_id},
        "daemon_version": "1.0",
        "agent_version": "2.0",
        "daemon_address": f"127.0.0.1:{1000 + len(node_id)}",
        "heartbeat_interval": 10.0,
        "instance_id": instance,
    }
    facts.update(extra)
    return facts


async def _with_store(url: str, body: Callable[[Store], Awaitable[Any]]) -> Any:
    db = Database(url=url)
    await db.start()
    try:
        return await body(Store(database=db))
    finally:
        await db.close()


async def _state() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every node row (without clocks' identity) and every event, in a stable order."""
    nodes = await Node.all().order_by("node_id")
    rows = [
        (
            n.node_id,
            n.hostname,
            n.os,
            n.labels,
            n.daemon_address,
            n.instance_id,
            n.status,
            n.registered_at,
            n.updated_at,
            n.last_heartbeat,
            n.status_since,
            n.offline_after,
            n.grace,
            n.heartbeat_interval,
        )
        for n in nodes
    ]
    events = await NodeEvent.all().order_by("node_id", "id")
    return rows, [(e.node_id, e.timestamp, e.old_status, e.new_status, e.reason) for e in events]


async def _scenario(store: Store, one_by_one: bool) -> tuple[Any, ...]:
    """Registrations in waves: new nodes, re-registrations, offline, instance changes."""

    async def register(node_id: str, facts: dict[str, Any], now: float) -> RegisterResult:
        if one_by_one:
            # The one-by-one code path (kept as the batch's fallback).
            return await store._register_one(_Registration(node_id, facts, now, GRACE))
        return await store.register_node(node_id=node_id, facts=facts, now=now, grace=GRACE)

    async def wave(calls: list[tuple[str, dict[str, Any], float]]) -> list[RegisterResult]:
        if one_by_one:
            return [await register(*call) for call in calls]
        return list(await asyncio.gather(*(register(*call) for call in calls)))

    ids = [f"node-{i:03d}" for i in range(40)]
    first = await wave([(n, _facts(n, f"{n}-a"), 1000.0) for n in ids])
    # One node goes offline before the second wave.
    await Node.filter(node_id=ids[3]).update(status=OFFLINE, status_since=1005.0)
    second = await wave(
        [
            (n, _facts(n, f"{n}-b" if i % 2 else f"{n}-a", os="freebsd"), 1010.0 + i)
            for i, n in enumerate(ids[:20])
        ]
        + [(f"new-{i}", _facts(f"new-{i}", ""), 1020.0) for i in range(5)]
    )
    return first, second, await _state()


def test_batched_registrations_match_one_by_one(tmp_path: Any, db_url: str) -> None:
    batched = asyncio.run(_with_store(db_url, lambda s: _scenario(s, one_by_one=False)))
    first, second, (rows, events) = batched
    assert [r.created for r in first] == [True] * 40
    assert all(r.transition is not None and r.transition.reason == "registered" for r in first)
    assert [r.created for r in second] == [False] * 20 + [True] * 5
    assert second[3].transition is not None and second[3].transition.old == OFFLINE
    assert second[3].transition.reason == "re-registered"
    assert [r.transition for i, r in enumerate(second[:20]) if i != 3] == [None] * 19
    assert second[1].previous_instance == "node-001-a"
    assert second[1].previous_address == "127.0.0.1:1008"
    assert len(rows) == 45
    by_id = {row[0]: row for row in rows}
    assert by_id["node-000"][2] == "freebsd"
    assert by_id["node-000"][3] == {"env": "test", "id": "node-000"}
    assert by_id["node-039"][2] == "linux" and by_id["new-4"][5] == ""
    replaced = [e for e in events if "replaced" in e[4]]
    assert len(replaced) == 10
    assert replaced[0] == ("node-001", 1011.0, "online", "online", "daemon instance "
                           "node-001-b replaced node-001-a")  # fmt: skip

    # The same scenario through the one-by-one path on a fresh database gives the same
    # results, rows and events.
    if db_url.startswith("sqlite"):
        other = f"sqlite://{tmp_path / 'one-by-one.db'}"
        expected = asyncio.run(_with_store(other, lambda s: _scenario(s, one_by_one=True)))
        assert batched == expected


def test_same_node_twice_in_flight_applies_in_order(db_url: str) -> None:
    async def body(store: Store) -> tuple[list[RegisterResult], Any]:
        results = await asyncio.gather(
            *(
                store.register_node(
                    node_id="dup", facts=_facts("dup", f"i{k}"), now=100.0 + k, grace=GRACE
                )
                for k in range(3)
            )
        )
        return list(results), await _state()

    results, (rows, events) = asyncio.run(_with_store(db_url, body))
    assert [r.created for r in results] == [True, False, False]
    assert [r.previous_instance for r in results] == ["", "i0", "i1"]
    assert rows[0][5] == "i2" and rows[0][8] == 102.0
    assert [e[4] for e in events] == [
        "registered",
        "daemon instance i1 replaced i0",
        "daemon instance i2 replaced i1",
    ]


def test_cancelled_caller_still_registers(db_url: str) -> None:
    async def body(store: Store) -> Any:
        async def register(k: int) -> RegisterResult:
            return await store.register_node(
                node_id=f"c{k}", facts=_facts(f"c{k}", ""), now=1.0, grace=1
            )

        calls = [asyncio.create_task(register(k)) for k in range(10)]
        await asyncio.sleep(0)
        for call in calls[::2]:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        for _ in range(100):  # the batch of the callers that went away still commits
            if await Node.all().count() == 10:
                break
            await asyncio.sleep(0.05)
        return await _state()

    rows, events = asyncio.run(_with_store(db_url, body))
    assert [r[0] for r in rows] == [f"c{k}" for k in range(10)]
    assert len(events) == 10


def test_database_error_is_unavailable_for_every_caller(tmp_path: Any) -> None:
    async def body(store: Store) -> list[BaseException | RegisterResult]:
        await Node.all().count()
        from tortoise import connections

        # The table is gone: every statement of the batch fails as "no such table".
        await connections.get("sqlite").execute_script("DROP TABLE fleet_node")
        return list(
            await asyncio.gather(
                *(
                    store.register_node(
                        node_id=f"x{k}", facts=_facts(f"x{k}", ""), now=1.0, grace=GRACE
                    )
                    for k in range(5)
                ),
                return_exceptions=True,
            )
        )

    results = asyncio.run(_with_store(f"sqlite://{tmp_path / 'gone.db'}", body))
    assert all(isinstance(r, Unavailable) for r in results), results
    assert len({id(r) for r in results}) == 5


def test_integrity_error_falls_back_to_one_by_one(db_url: str) -> None:
    """A node created by another Manager between our SELECT and INSERT: still registered."""

    async def body(store: Store) -> tuple[list[RegisterResult], Any]:
        real = store._register_batch

        async def racing(items: Any) -> Any:
            # Another Manager inserts r1 between our SELECT and our INSERT: the INSERT
            # fails with the unique constraint, as the real batch would.
            if not await Node.exists(node_id="r1"):
                await Node.create(node_id="r1", status=OFFLINE, registered_at=1.0)
                raise IntegrityError("UNIQUE constraint failed: fleet_node.node_id")
            return await real(items)

        store._register_batch = racing  # type: ignore[method-assign]
        results = await asyncio.gather(
            *(
                store.register_node(
                    node_id=f"r{k}", facts=_facts(f"r{k}", ""), now=5.0, grace=GRACE
                )
                for k in range(4)
            )
        )
        return list(results), await _state()

    results, (rows, _events) = asyncio.run(_with_store(db_url, body))
    assert [r.created for r in results] == [True, False, True, True]
    assert results[1].transition is not None and results[1].transition.old == OFFLINE
    assert [(r[0], r[6]) for r in rows] == [(f"r{k}", "online") for k in range(4)]


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])


# ---- SyncAgentStates with changes: the same group commit ----


def _agents(prefix: str, count: int, **fields: Any) -> list[AgentRecord]:
    return [
        AgentRecord(agent_id=f"{prefix}{i}", status=fields.get("status", "RUNNING"), pid=100 + i,
                    last_heartbeat=fields.get("beat", 1), type="worker", version="1.0")
        for i in range(count)
    ]  # fmt: skip


async def _agent_state() -> list[tuple[Any, ...]]:
    agents = await Agent.all().order_by("node_id", "agent_id")
    return [
        (a.node_id, a.agent_id, a.status, a.pid, a.last_heartbeat, a.version, a.updated_at)
        for a in agents
    ]


async def _sync_scenario(store: Store, one_by_one: bool) -> tuple[Any, ...]:
    async def sync(node_id: str, states: list[AgentRecord], full: bool, now: float) -> Any:
        if one_by_one:
            return await store._sync_one(_AgentSync(node_id, states, full, now))
        return await store.sync_agents(node_id=node_id, states=states, full=full, now=now)

    async def wave(calls: list[tuple[str, list[AgentRecord], bool, float]]) -> list[Any]:
        if one_by_one:
            return [await sync(*call) for call in calls]
        return list(await asyncio.gather(*(sync(*call) for call in calls)))

    nodes = [f"n{i:02d}" for i in range(30)]
    first = await wave([(n, _agents("a", 4), True, 10.0) for n in nodes])
    second = await wave(
        [
            (n, _agents("a", 2 + i % 3, beat=2 if i % 2 else 1), i % 4 != 0, 20.0 + i)
            for i, n in enumerate(nodes)
        ]
        + [(nodes[0], _agents("a", 4, status="FATAL"), True, 30.0)]  # same node again
        + [(nodes[1], [], True, 31.0)]
    )
    return first, second, await _agent_state()


def test_batched_agent_syncs_match_one_by_one(tmp_path: Any, db_url: str) -> None:
    batched = asyncio.run(_with_store(db_url, lambda s: _sync_scenario(s, one_by_one=False)))
    first, second, rows = batched
    assert first == [(4, 0)] * 30
    assert second[0] == (2, 0)  # not full: nothing removed
    assert second[2] == (4, 0) and second[5] == (4, 0)
    assert second[4] == (3, 0) and second[6] == (2, 2)
    assert second[1] == (3, 1)
    assert second[30] == (4, 0) and second[31] == (0, 3)
    by_key = {(r[0], r[1]): r for r in rows}
    assert by_key[("n00", "a3")][2] == "FATAL" and by_key[("n00", "a3")][6] == 30.0
    assert ("n01", "a0") not in by_key and ("n06", "a2") not in by_key
    assert by_key[("n03", "a0")][4] == 2 and by_key[("n03", "a0")][6] == 23.0
    if db_url.startswith("sqlite"):
        other = f"sqlite://{tmp_path / 'one-by-one.db'}"
        expected = asyncio.run(_with_store(other, lambda s: _sync_scenario(s, one_by_one=True)))
        assert batched == expected
