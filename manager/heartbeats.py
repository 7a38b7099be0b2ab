"""Heartbeat coalescing: many heartbeats, one database write per flush interval.

Every heartbeat lands in an in-memory map ``node_id -> newest heartbeat`` (later ones
overwrite earlier ones of the same node, keeping the largest reported timestamp). A
single flusher task writes the whole map in one transaction every ``flush_interval``
seconds (sooner when ``max_batch`` nodes are waiting).

**When a heartbeat is acknowledged** (``heartbeats.ack``):

* ``buffered`` (default): the RPC answers as soon as the heartbeat is in the buffer,
  *while the last flush succeeded*. The Manager is then certain to flush it: the flusher
  runs every ``flush_interval``, and a failed flush puts its entries back (merged, newest
  wins) so they are written once the database returns. A Manager killed with SIGKILL
  loses at most the heartbeats of one flush interval (plus the flush in progress), which
  their Daemons resend on their next beat. This keeps heartbeat latency in milliseconds.
* ``flushed``: the RPC answers only once the flush carrying it has committed, so an
  acknowledged heartbeat is always durable; the price is up to one flush interval of
  latency per heartbeat.

Once a flush has failed (database down or read-only), both modes wait for the next flush
and answer ``UNAVAILABLE`` if it fails too: nothing is acknowledged that the Manager could
not yet write, and the Manager recovers on its own when a flush succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from common.errors import FleetError, Unavailable

from .metrics import ManagerMetrics
from .store import PendingHeartbeat, Store, Transition

log = logging.getLogger(__name__)


class HeartbeatBuffer:
    """Coalesces heartbeats in memory and flushes them in batches (see module doc)."""

    def __init__(
        self,
        *,
        store: Store,
        flush_interval: float,
        max_batch: int,
        ack: str = "buffered",
        grace_for: Callable[[float], float],
        metrics: ManagerMetrics,
        on_transitions: Callable[[list[Transition]], None] | None = None,
        on_missing: Callable[[set[str]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._interval = flush_interval
        self._max_batch = max_batch
        if ack not in {"buffered", "flushed"}:
            raise ValueError(f"heartbeat ack mode must be buffered or flushed: {ack!r}")
        self._ack_buffered = ack == "buffered"
        self._healthy = True  # the last flush committed
        self._grace_for = grace_for
        self._metrics = metrics
        self._on_transitions = on_transitions
        self._on_missing = on_missing
        self._clock = clock
        self._pending: dict[str, PendingHeartbeat] = {}
        self._writing: set[str] = set()
        self._flushed: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("heartbeat buffer already started")
        self._flushed = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name="heartbeat-flusher")

    def pending_ids(self) -> set[str]:
        """Nodes with a heartbeat received but not yet committed (they are alive)."""
        return set(self._pending) | self._writing

    async def forget(self, node_id: str) -> None:
        """Drop ``node_id``'s pending heartbeat and wait out a flush writing one, so
        nothing this buffer holds brings the node back online after it left."""
        self._pending.pop(node_id, None)
        if node_id in self._writing and self._flushed is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._flushed)

    async def submit(self, node_id: str, reported: int, *, heartbeat: bool = True) -> None:
        """Record a heartbeat; return once it is safe to acknowledge (see module doc).

        ``heartbeat=False``: a liveness signal that is not a Heartbeat call (an accepted
        ReportMetrics or SyncAgentStates, manager/services/manager_service.py): the same
        path — coalesced, flushed, offline→online — but not counted in
        ``fleet_manager_heartbeats``. Raises ``Unavailable`` when the flush it waited for
        failed.
        """
        if self._closing or self._flushed is None:
            raise Unavailable("manager is shutting down")
        now = self._clock()
        previous = self._pending.get(node_id)
        if previous is not None:
            reported = max(reported, previous.reported)
        self._pending[node_id] = PendingHeartbeat(received_at=now, reported=reported)
        if heartbeat:
            self._metrics.heartbeats.inc()
        if len(self._pending) >= self._max_batch:
            self._wake.set()
        if self._ack_buffered and self._healthy:
            return
        # shield: one cancelled caller must not cancel the flush everyone waits on.
        await asyncio.shield(self._flushed)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self._flush()
            if self._closing:
                return

    async def _flush(self) -> None:
        assert self._flushed is not None
        batch, self._pending = self._pending, {}
        done, self._flushed = self._flushed, asyncio.get_running_loop().create_future()
        if not batch:
            done.set_result(None)
            return
        started = time.perf_counter()
        self._writing = set(batch)
        try:
            transitions, missing = await self._store.flush_heartbeats(
                batch, now=self._clock(), grace_for=self._grace_for
            )
        except asyncio.CancelledError:
            done.set_exception(Unavailable("manager is shutting down"))
            raise
        except FleetError as exc:
            log.warning("heartbeat flush of %d nodes failed: %s", len(batch), exc)
            self._requeue(batch)
            done.set_exception(exc)
            done.exception()  # retrieved: callers may all be gone
            return
        except Exception as exc:
            log.exception("heartbeat flush of %d nodes failed", len(batch))
            self._requeue(batch)
            done.set_exception(Unavailable(f"heartbeat flush failed: {type(exc).__name__}"))
            done.exception()
            return
        finally:
            self._writing = set()
        self._healthy = True
        self._metrics.heartbeat_flush_size.observe(len(batch))
        self._metrics.heartbeat_flush_seconds.observe(time.perf_counter() - started)
        done.set_result(None)
        if transitions and self._on_transitions is not None:
            self._on_transitions(transitions)
        if missing and self._on_missing is not None:
            # Removed meanwhile: their next heartbeat gets NOT_FOUND and they register.
            self._on_missing(missing)

    def _requeue(self, batch: dict[str, PendingHeartbeat]) -> None:
        """Put a failed flush's entries back (newest wins) and stop buffered acks."""
        self._healthy = False
        for node_id, entry in batch.items():
            newer = self._pending.get(node_id)
            if newer is None:
                self._pending[node_id] = entry
            else:
                self._pending[node_id] = PendingHeartbeat(
                    received_at=max(entry.received_at, newer.received_at),
                    reported=max(entry.reported, newer.reported),
                )

    def close(self) -> None:
        """Stop taking heartbeats; ``wait_closed`` writes what is pending."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()

    async def wait_closed(self) -> None:
        if self._task is None:
            return
        try:
            await self._task
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("heartbeat flusher failed")

    async def __aenter__(self) -> HeartbeatBuffer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()
