"""Group commit: concurrent store operations applied in one transaction per batch.

On SQLite, Tortoise keeps ONE connection behind a lock, and a transaction holds that
lock across every statement, each a hop to the aiosqlite thread and back that waits for
an event-loop turn on a busy Manager. A RegisterNode took five such hops, so the whole
database managed ~100 registrations/s. :class:`GroupCommit` queues the operations of
concurrent callers and hands them to one ``apply`` call per batch, which writes them
with a constant number of statements; every caller awaits its own result, which is set
only once the batch committed (an acknowledged write is durable).

There is no timer: the writer task starts when the first operation arrives and takes
everything that queued while the previous batch was being written, so an idle Manager
commits a lone operation at once and a busy one in ever larger batches. The task ends
when the queue is empty. Operations on the same key (node) are never in one batch: a
later one waits for the next batch, so they apply in arrival order.

Like every store operation, a queued operation runs to completion even if its caller
goes away (the caller's await is shielded).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")


class GroupCommit(Generic[I, R]):
    """Batches operations for ``apply``; see the module doc.

    ``apply`` gets a batch of distinct-key items and returns one result per item, in
    order, where a result may be an exception meant for that item's caller alone.
    """

    def __init__(
        self,
        apply: Callable[[list[I]], Awaitable[Sequence[R | BaseException]]],
        *,
        key: Callable[[I], Hashable],
        max_batch: int,
        name: str,
    ) -> None:
        self._apply = apply
        self._key = key
        self._max_batch = max_batch
        self._name = name
        self._queue: deque[tuple[I, asyncio.Future[R]]] = deque()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> R:
        """Queue ``item``; return its result once its batch committed (or raise its error)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        # Marked retrieved whatever happens: a caller that went away must not leave a
        # "Future exception was never retrieved" traceback behind.
        future.add_done_callback(_retrieve)
        self._queue.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name=self._name)
        # shield: a caller that goes away must not cancel its batch (nor leave it undone).
        return await asyncio.shield(future)

    def _take(self) -> list[tuple[I, asyncio.Future[R]]]:
        batch: list[tuple[I, asyncio.Future[R]]] = []
        later: list[tuple[I, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        queue = self._queue
        while queue and len(batch) < self._max_batch:
            entry = queue.popleft()
            k = self._key(entry[0])
            if k in keys:
                later.append(entry)
            else:
                keys.add(k)
                batch.append(entry)
        queue.extendleft(reversed(later))
        return batch

    async def _drain(self) -> None:
        batch: list[tuple[I, asyncio.Future[R]]] = []
        try:
            while self._queue:
                batch = self._take()
                try:
                    results: Sequence[R | BaseException] = await self._apply(
                        [item for item, _ in batch]
                    )
                    if len(results) != len(batch):
                        raise RuntimeError(f"{self._name}: {len(results)} results")
                except Exception as exc:
                    log.exception("%s: batch of %d failed", self._name, len(batch))
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._task = None
            # Only when the loop is going away (the task was cancelled): nobody waits forever.
            for _, future in [*batch, *self._queue]:
                if not future.done():
                    future.set_exception(ConnectionError(f"{self._name} stopped"))
            self._queue.clear()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
