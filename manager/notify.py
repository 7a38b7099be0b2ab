"""ChangeFeed: what one Manager changed, told to the others on the same PostgreSQL.

Managers sharing a database each keep caches in front of it. Each cache either is safe
to be stale (said where it is defined) or is invalidated through this feed: PostgreSQL
``LISTEN`` / ``NOTIFY`` on the channel :data:`CHANNEL`, on a connection of the feed's own
(asyncpg's ``add_listener``; Tortoise's pool connections come and go).

* ``publish(topic, key)`` is called *after* the change committed (a cache dropped on a
  notification is refilled from the database, so the change must be there already). It
  queues; the feed's task sends the queue in as few ``pg_notify`` calls as fit
  PostgreSQL's 8,000-byte payload limit. A queue that grows past :data:`MAX_QUEUED` while
  the database is away collapses into one ``*`` ("everything may have changed").
* Every other Manager's ``on_change(topic, key)`` runs for each message (its own are
  skipped: it changed its caches itself). Topics: ``node`` (anything cached about node
  ``key``), ``revocations`` (the revocation list moved), ``rollouts`` (a rollout wants a
  step), ``*``.
* Notifications sent while a Manager's feed connection was down are lost to it, so each
  reconnect calls ``on_reset()``: everything may have changed.

The connection is checked (``SELECT 1``) every ``retry_interval``; a check slower than
``check_timeout`` drops it and the feed reconnects. On SQLite (one Manager per database)
there is nobody to tell: ``url`` is None and the feed does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from .leases import SESSION_TIMEOUT, connect_dedicated

log = logging.getLogger(__name__)

CHANNEL = "fleet_changes"
# pg_notify refuses payloads of 8,000 bytes or more.
MAX_PAYLOAD = 7900
MAX_QUEUED = 10_000
EVERYTHING = "*"


class ChangeFeed:
    """Cross-Manager cache invalidation over LISTEN/NOTIFY (see module doc)."""

    def __init__(
        self,
        *,
        url: str | None,
        name: str,
        on_change: Callable[[str, str], Awaitable[None]],
        on_reset: Callable[[], Awaitable[None]],
        retry_interval: float = 1.0,
        check_timeout: float = 2.0,
    ) -> None:
        self._url = url
        self.name = name
        # Tells this Manager's own notifications apart (names may repeat).
        self._sender = uuid.uuid4().hex
        self._on_change = on_change
        self._on_reset = on_reset
        self._retry = retry_interval
        self._timeout = check_timeout
        self._session_timeout = max(SESSION_TIMEOUT, 3 * (retry_interval + check_timeout))
        self._outbox: list[str] = []
        self._inbox: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._conn: Any = None
        self._connected_once = False
        self._failures = 0
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def enabled(self) -> bool:
        return self._url is not None

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def publish(self, topic: str, key: str = "") -> None:
        """Tell the other Managers that ``topic``/``key`` changed (already committed)."""
        if self._url is None or self._stop.is_set():
            return
        if len(self._outbox) >= MAX_QUEUED:
            self._outbox = [f"{EVERYTHING}|"]
        else:
            self._outbox.append(f"{topic}|{key}")
        self._wake.set()

    # ---- lifecycle ----

    async def start(self) -> None:
        if self._tasks or self._stop.is_set():
            raise RuntimeError("change feed already started")
        if self._url is None:
            return
        await self._connect_or_log()
        self._tasks = [
            asyncio.create_task(self._run(), name="change-feed"),
            asyncio.create_task(self._dispatch(), name="change-feed-dispatch"),
        ]

    def close(self) -> None:
        self._stop.set()
        self._wake.set()

    async def wait_closed(self) -> None:
        if self._tasks:
            await self._tasks[0]  # sends what is queued, then stops
            self._inbox.put_nowait(None)
            await self._tasks[1]
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), self._timeout)
            except asyncio.CancelledError:
                raise
            except Exception:
                conn.terminate()

    async def __aenter__(self) -> ChangeFeed:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # ---- the connection ----

    async def _connect_or_log(self) -> None:
        try:
            conn = await connect_dedicated(
                self._url or "",
                purpose="listen",
                name=self.name,
                timeout=self._timeout,
                session_timeout=self._session_timeout,
            )
            try:
                await conn.add_listener(CHANNEL, self._received)
            except BaseException:
                conn.terminate()
                raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(exc)
            return
        self._conn = conn
        if self._failures:
            log.info("change feed: listening again after %d failed attempt(s)", self._failures)
        self._failures = 0
        if self._connected_once:
            # Deaf meanwhile: whatever others changed was not heard.
            self._inbox.put_nowait((EVERYTHING, ""))
        self._connected_once = True

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        if self._failures in (1, 10) or self._failures % 60 == 0:
            log.warning(
                "change feed: database unreachable (%s: %s); caches shared with other "
                "Managers are refreshed once it is back",
                type(exc).__name__,
                exc,
            )
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    def _received(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        sender, _, body = payload.partition("\n")
        if sender == self._sender:
            return
        for line in body.splitlines():
            topic, _, key = line.partition("|")
            self._inbox.put_nowait((topic, key))

    async def _run(self) -> None:
        while True:
            if not self._outbox and not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._retry)
            self._wake.clear()
            if self._conn is None:
                if self._stop.is_set():
                    return  # what is queued cannot be sent: the others time out to it
                await self._connect_or_log()
                if self._conn is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self._retry)
                    continue
            try:
                if self._outbox:
                    await self._send()
                elif not self._stop.is_set():
                    await self._conn.fetchval("SELECT 1", timeout=self._timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
            if self._stop.is_set() and not self._outbox:
                return

    async def _send(self) -> None:
        header = f"{self._sender}\n"
        while self._outbox:
            lines: list[str] = []
            size = len(header)
            for line in self._outbox:
                if lines and size + len(line) + 1 > MAX_PAYLOAD:
                    break
                lines.append(line[: MAX_PAYLOAD - len(header)])
                size += len(line) + 1
            await self._conn.execute(
                "SELECT pg_notify($1, $2)",
                CHANNEL,
                header + "\n".join(lines),
                timeout=self._timeout,
            )
            del self._outbox[: len(lines)]

    async def _dispatch(self) -> None:
        while True:
            item = await self._inbox.get()
            if item is None:
                return
            topic, key = item
            try:
                if topic == EVERYTHING:
                    await self._on_reset()
                else:
                    await self._on_change(topic, key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("change feed: cannot apply %s %s here now: %s", topic, key, exc)
