"""WatchEvents: fleet events as this Manager records them, until the client goes away.

One stream is one subscriber of :class:`~manager.events.EventRecorder`, which publishes
every committed event — agent events and node status events alike — on the event loop.
The subscriber only filters and ``put_nowait``\\s into the stream's own bounded queue;
the stream's generator sends what it takes from the queue. When the queue is full the
client is not keeping up: the subscriber stops queueing (it counts what it drops) and the
stream ends ``RESOURCE_EXHAUSTED`` "too slow: N events not read" — a slow reader costs at
most ``queue_size`` events of memory, never more. (GuardedService in common/rpc.py adds
the other bounds: at most 8 open streams per caller identity, and a reply the client does
not take within 10 s drops the stream.)

Resuming (``after_id``): agent events and node status events are numbered by two
different tables, so ``after_id`` is an agent event id (the highest one the watcher saw).
The stream first sends, oldest first, the agent events with a greater id and the node
status events recorded at or after the time of the newest agent event up to
``after_id`` — node events are resumed by time, so one seen just before a disconnect may
come again (same ``id``, ``agent_id`` "" and kind "status": a watcher drops it), none is
missed. At most ``history_limit`` of each; more is ``OUT_OF_RANGE`` (read that much
history with ListEvents). Without gaps or duplicates between history and live events:
the stream subscribes first, then reads the history, then sends what was queued
meanwhile, skipping every id the history already sent (per table).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence

from grpclib.const import Status

from common.errors import FleetError, ResourceExhausted

from .events import EventRecorder
from .metrics import ManagerMetrics
from .store.events import NODE_STATUS, EventRow, EventStore

log = logging.getLogger(__name__)

__all__ = ["HISTORY_LIMIT", "QUEUE_SIZE", "EventWatch", "is_node_event"]

# Events queued per stream before its client counts as too slow.
QUEUE_SIZE = 1024
# Events of each table sent before the live ones when resuming (after_id).
HISTORY_LIMIT = 5000


def is_node_event(row: EventRow) -> bool:
    """A node status event (``fleet_node_event``'s ids), not an agent event."""
    return not row.agent_id and row.kind == NODE_STATUS


class _TooMuchHistory(FleetError):
    status = Status.OUT_OF_RANGE


class EventWatch:
    """Opens WatchEvents streams over ``recorder`` (live) and ``store`` (history)."""

    def __init__(
        self,
        *,
        recorder: EventRecorder,
        store: EventStore,
        metrics: ManagerMetrics | None = None,
        queue_size: int = QUEUE_SIZE,
        history_limit: int = HISTORY_LIMIT,
    ) -> None:
        if queue_size < 1 or history_limit < 1:
            raise ValueError("queue_size and history_limit must be at least 1")
        self._recorder = recorder
        self._store = store
        self._metrics = metrics
        self._queue_size = queue_size
        self._history_limit = history_limit

    async def rows(
        self,
        *,
        node_id: str = "",
        agent_id: str = "",
        kinds: Sequence[str] = (),
        after_id: int = 0,
    ) -> AsyncGenerator[EventRow, None]:
        """The events matching the filters (those of ListEvents), history after
        ``after_id`` first, until closed; raises :class:`~common.errors.ResourceExhausted` when
        the reader fell ``queue_size`` events behind."""
        wanted = frozenset(kinds)
        queue: asyncio.Queue[EventRow] = asyncio.Queue(self._queue_size)
        dropped = 0

        def deliver(row: EventRow) -> None:
            nonlocal dropped
            if node_id and row.node_id != node_id:
                return
            if agent_id and row.agent_id != agent_id:
                return
            if wanted and row.kind not in wanted:
                return
            if dropped:
                dropped += 1
                return
            try:
                queue.put_nowait(row)
            except asyncio.QueueFull:
                dropped = 1

        unsubscribe = self._recorder.subscribe(deliver)
        if self._metrics is not None:
            self._metrics.watch_streams.inc()
        try:
            last_agent, last_node = max(after_id, 0), 0
            if after_id > 0:
                for row in await self._history(node_id, agent_id, kinds, after_id):
                    if is_node_event(row):
                        last_node = max(last_node, row.id)
                    else:
                        last_agent = max(last_agent, row.id)
                    yield row
            while True:
                if dropped:
                    behind = queue.qsize() + dropped
                    if self._metrics is not None:
                        self._metrics.watch_dropped.inc()
                    log.info("WatchEvents: dropped a stream %d events behind", behind)
                    raise ResourceExhausted(f"too slow: {behind} events not read")
                row = await queue.get()
                if row.id <= (last_node if is_node_event(row) else last_agent):
                    continue  # the history sent it already
                yield row
        finally:
            unsubscribe()
            if self._metrics is not None:
                self._metrics.watch_streams.dec()

    async def _history(
        self, node_id: str, agent_id: str, kinds: Sequence[str], after_id: int
    ) -> list[EventRow]:
        limit = self._history_limit
        agents, nodes = await self._store.events_after(
            after_id, node_id=node_id, agent_id=agent_id, kinds=kinds, limit=limit
        )
        if len(agents) > limit or len(nodes) > limit:
            raise _TooMuchHistory(
                f"more than {limit} events after id {after_id}: read them with ListEvents, "
                "or watch without after_id"
            )
        return sorted([*agents, *nodes], key=lambda r: r.timestamp)
