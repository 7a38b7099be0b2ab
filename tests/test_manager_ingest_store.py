"""Metric ingest in the store, on both backends: what a report stores and what it counts.

``Store.save_metrics`` writes with one raw statement and ``ON CONFLICT DO NOTHING``;
these tests hold it to the behaviour the Daemons rely on: a resent sample is stored once
and not counted, the first of two samples with one (type, timestamp) in a report wins,
two identical reports racing each other store every sample once and count it once, and a
report larger than one statement holds is stored whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from manager.store import Database, Store


def _run(db_url: str, body: Callable[[Store], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        db = Database(url=db_url)
        await db.start()
        try:
            return await body(Store(database=db))
        finally:
            await db.close()

    return asyncio.run(main())


def test_resent_and_repeated_samples_are_stored_once(db_url: str) -> None:
    now = int(time.time())

    async def body(store: Store) -> None:
        first = [
            ("cpu", now - 2, {"usage": 1.5, "steal": 0.0}),
            ("cpu", now - 1, {"usage": 2.5}),
            ("cpu", now - 1, {"usage": 99.0}),  # same (type, timestamp): the first wins
            ("memory", now - 1, {"used": 1e9}),
        ]
        assert await store.save_metrics("node-a", first) == 3
        # A resent report stores nothing and says so; a new sample in it still counts.
        assert await store.save_metrics("node-a", first) == 0
        assert await store.save_metrics("node-a", [*first, ("cpu", now, {"usage": 3.0})]) == 1
        # Another node's samples with the same (type, timestamp) are its own.
        assert await store.save_metrics("node-b", first[:2]) == 2
        cpu = await store.query_metrics(node_id="node-a", type="cpu", since=now - 60, limit=10)
        assert [(s.timestamp, s.values) for s in cpu] == [
            (now - 2, {"usage": 1.5, "steal": 0.0}),
            (now - 1, {"usage": 2.5}),
            (now, {"usage": 3.0}),
        ]
        memory = await store.query_metrics(node_id="node-a", type="memory", since=0, limit=10)
        assert [s.values for s in memory] == [{"used": 1e9}]
        assert await store.save_metrics("node-a", []) == 0

    _run(db_url, body)


def test_racing_identical_reports_store_and_count_each_sample_once(db_url: str) -> None:
    now = int(time.time())
    report = [("cpu", now - i, {"usage": float(i)}) for i in range(200)]

    async def body(store: Store) -> None:
        counts = await asyncio.gather(*(store.save_metrics("node-a", report) for _ in range(4)))
        assert sum(counts) == 200, counts
        stored = await store.query_metrics(node_id="node-a", type="", since=0, limit=1000)
        assert len(stored) == 200

    _run(db_url, body)


def test_report_larger_than_one_statement_is_stored_whole(db_url: str) -> None:
    now = int(time.time())
    report = [(kind, now - i, {"v": float(i)}) for i in range(1300) for kind in ("a", "b")]

    async def body(store: Store) -> None:
        assert await store.save_metrics("node-a", report) == 2600
        assert await store.save_metrics("node-a", report) == 0
        stored = await store.query_metrics(node_id="node-a", type="b", since=0, limit=5000)
        assert [s.values["v"] for s in stored] == [float(i) for i in reversed(range(1300))]

    _run(db_url, body)


def test_database_upgraded_from_the_skeleton_schema_deduplicates(db_url: str) -> None:
    """The conflict target is the unique constraint migration 0003 adds to an old table."""
    from tortoise.context import TortoiseContext
    from tortoise.migrations.api import migrate

    from manager.store.database import tortoise_config

    async def skeleton() -> None:
        ctx = TortoiseContext()
        ctx.__enter__()
        try:
            await migrate(config=tortoise_config(db_url), target="manager.0001_initial")
        finally:
            await ctx.close_connections()
            ctx.__exit__(None, None, None)

    asyncio.run(skeleton())
    now = int(time.time())
    report = [("cpu", now - i, {"usage": float(i)}) for i in range(10)]

    async def body(store: Store) -> tuple[int, int]:
        return await store.save_metrics("node-a", report), await store.save_metrics(
            "node-a", report
        )

    assert _run(db_url, body) == (10, 0)
