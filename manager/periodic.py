"""A named background loop with the house lifecycle (start / close / wait_closed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``step()`` every ``interval`` seconds until closed; a failing step is logged."""

    def __init__(self, *, name: str, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self._interval = interval
        self._step = step
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self.name} already started")
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s step failed", self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)

    def close(self) -> None:
        self._stop.set()

    async def wait_closed(self) -> None:
        if self._task is not None:
            await self._task
