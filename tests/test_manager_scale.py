"""Scale of the heartbeat path on a real database: 10,000 nodes in one flush, one sweep.

Runs the Manager's own store against real SQLite / PostgreSQL (no gRPC): what one
flush of a 10,000-node fleet costs is what decides whether "10,000 nodes heartbeating
every 10 s" (1,000 node updates per second) is cheap.
"""

from __future__ import annotations

import asyncio
import time

from manager.store import Database, PendingHeartbeat, Store
from manager.store.models import Node

N = 10_000


def test_flush_10000_nodes_in_one_transaction(db_url: str) -> None:
    async def run() -> tuple[float, float]:
        db = Database(url=db_url)
        await db.start()
        try:
            store = Store(database=db)
            now = time.time()
            await Node.bulk_create(
                [
                    Node(
                        node_id=f"n{i:05d}",
                        status="online",
                        heartbeat_interval=10,
                        last_heartbeat=now,
                        offline_after=now + 30,
                        grace=30,
                    )
                    for i in range(N)
                ],
                batch_size=1000,
            )
            batch = {
                f"n{i:05d}": PendingHeartbeat(received_at=now + 1, reported=int(now) + i % 7)
                for i in range(N)
            }
            started = time.perf_counter()
            transitions, missing = await store.flush_heartbeats(
                batch, now=now + 1, grace_for=lambda s: 30
            )
            assert missing == set()
            flush = time.perf_counter() - started
            assert transitions == []
            rows = await Node.filter(last_heartbeat=now + 1).count()
            assert rows == N
            # The liveness sweep over a healthy fleet is one indexed range scan.
            started = time.perf_counter()
            offline, held = await store.mark_overdue_offline(now=now + 2, started_at=0)
            sweep = time.perf_counter() - started
            assert offline == [] and held == 0
            return flush, sweep
        finally:
            await db.close()

    flush, sweep = asyncio.run(run())
    print(f"\n{db_url.split(':')[0]}: flush of {N} nodes {flush:.2f}s, sweep {sweep * 1000:.1f}ms")
    # 10,000 nodes every 10 s = one such flush per 10 s: it must take far less.
    assert flush < 5.0
    assert sweep < 0.5
