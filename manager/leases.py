"""Leases: which Manager runs the duties that must run once, and one Manager per SQLite file.

Several Managers may share one PostgreSQL database; the duties that must not run twice
at once (the liveness sweep, retention, the rollout driver, the spec drift sweep) run
only on the one holding the ``duties`` :class:`Lease`.

The lease is a PostgreSQL session-level advisory lock (``pg_try_advisory_lock``) held on
a connection of its own — never one of Tortoise's pool, which may be handed back and
reused by another query. No consensus of our own: PostgreSQL grants the lock to one
session, and releases it when that session ends. So:

* **The holder dies** (kill -9, power loss): its socket closes, PostgreSQL ends the
  session and frees the lock, and another Manager takes it at its next try (every
  ``retry_interval``, 1 s).
* **The holder cannot be sure it still holds it**: it runs ``SELECT 1`` on that
  connection every ``retry_interval``; a check that fails or takes longer than
  ``check_timeout`` (connection lost, database unreachable) gives the lease up at once —
  the duties stop — and drops the connection. PostgreSQL itself frees a silent session's
  lock only later (``idle_session_timeout`` and TCP keepalives, ``SESSION_TIMEOUT``
  seconds), so a holder cut off from the database has stopped its duties well before
  another Manager can start them.
* **A holder whose duty step is already running** when the lease goes finishes that step:
  the duties are conditional, idempotent updates, so one overlapping step does no harm.

On SQLite there is one Manager per database (:class:`SqliteLock` refuses a second one),
so the lease is always held.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from common.errors import FleetError

from .metrics import ManagerMetrics

log = logging.getLogger(__name__)

# The advisory lock key of each lease: one bigint, "fleet" in ASCII and a lease number.
LEASE_KEYS = {"duties": 0x666C656574_0001}
# PostgreSQL ends a lease session silent for this long (at least; see session_timeout):
# the latest a lost holder's lock is freed when its socket did not close.
SESSION_TIMEOUT = 10.0
# Query parameters of a Tortoise URL that are Tortoise's own, not libpq's.
_TORTOISE_PARAMS = {"minsize", "maxsize", "max_queries", "max_inactive_connection_lifetime"}


class AnotherManager(FleetError):
    """A second Manager was started on an SQLite database another Manager uses."""


def asyncpg_dsn(url: str) -> str:
    """The Manager's database URL as a DSN for ``asyncpg.connect`` (Tortoise's pool
    parameters dropped, the scheme made ``postgresql://``)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _TORTOISE_PARAMS]
    return urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query)))


async def connect_dedicated(
    url: str, *, purpose: str, name: str, timeout: float, session_timeout: float
) -> Any:
    """A connection of its own to PostgreSQL (not from Tortoise's pool), named in
    ``pg_stat_activity.application_name`` so an operator sees which Manager holds what.
    The server ends it once silent for ``session_timeout`` (TCP keepalives; from
    PostgreSQL 14 ``idle_session_timeout`` too, which also catches a stopped process)."""
    import asyncpg

    seconds = max(2, int(session_timeout))
    conn = await asyncpg.connect(
        asyncpg_dsn(url),
        timeout=timeout,
        server_settings={
            "application_name": f"fleet-manager {name} {purpose}"[:63],
            "tcp_keepalives_idle": str(seconds // 2),
            "tcp_keepalives_interval": "1",
            "tcp_keepalives_count": str(seconds // 2),
        },
    )
    try:
        if conn.get_server_version().major >= 14:
            await conn.execute(f"SET idle_session_timeout = '{seconds}s'", timeout=timeout)
    except BaseException:
        conn.terminate()
        raise
    return conn


class Lease:
    """A named lease held by at most one Manager of a database (see module doc).

    ``held`` says whether this Manager holds it now; ``acquired_at`` (wall clock) when it
    last took it. ``on_change(held)`` is called on every change. ``url`` None: the lease
    is always held from ``start()`` (SQLite, one Manager per database).
    """

    def __init__(
        self,
        *,
        name: str,
        holder: str,
        url: str | None,
        metrics: ManagerMetrics,
        retry_interval: float = 1.0,
        check_timeout: float = 2.0,
        on_change: Callable[[bool], None] = lambda held: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.holder = holder
        self._url = url
        self._key = LEASE_KEYS[name]
        self._metrics = metrics
        self._retry = retry_interval
        self._timeout = check_timeout
        self._on_change = on_change
        self._clock = clock
        self._held = False
        self.acquired_at = 0.0
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._stop = asyncio.Event()
        self._failures = 0
        # The server frees a silent holder's lock after this: several checks' worth, so
        # that the holder always notices (and stops its duties) first.
        self.session_timeout = max(SESSION_TIMEOUT, 3 * (retry_interval + check_timeout))
        self._gauge().set(0)

    @property
    def held(self) -> bool:
        return self._held

    def _gauge(self) -> Any:
        return self._metrics.lease_held.labels(self.name)

    def _set_held(self, held: bool, why: str = "") -> None:
        if held == self._held:
            return
        self._held = held
        self._gauge().set(1 if held else 0)
        if held:
            self.acquired_at = self._clock()
            log.info("lease '%s' acquired by manager %s", self.name, self.holder)
        elif self._stop.is_set():
            log.info("lease '%s' released by manager %s: %s", self.name, self.holder, why)
        else:
            log.warning("lease '%s' lost by manager %s: %s", self.name, self.holder, why)
        self._on_change(held)

    async def start(self) -> None:
        if self._started:
            raise RuntimeError(f"lease {self.name} already started")
        self._started = True
        if self._url is None:
            self._set_held(True)
            return
        # The first try now, so a lone Manager holds the lease before it starts its duties.
        await self._attempt()
        self._task = asyncio.create_task(self._run(), name=f"lease-{self.name}")

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._retry)
            if not self._stop.is_set():
                await self._attempt()

    async def _attempt(self) -> None:
        """Connect if needed, then take the lock (not held) or check the session (held)."""
        try:
            if self._conn is None:
                self._conn = await connect_dedicated(
                    self._url or "",
                    purpose="lease",
                    name=self.holder,
                    timeout=self._timeout,
                    session_timeout=self.session_timeout,
                )
            if self._held:
                # The lock lives as long as the session: a session that answers still holds it.
                await self._conn.fetchval("SELECT 1", timeout=self._timeout)
            elif await self._conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", self._key, timeout=self._timeout
            ):
                self._set_held(True)
            self._failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}".rstrip(": ")
            self._set_held(False, f"its database connection failed ({why})")
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 60 == 0:
                log.warning("lease '%s': cannot reach the database: %s", self.name, why)
            self._drop_connection()

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # No goodbye that could hang on a dead network: the socket is closed now.
            conn.terminate()

    def close(self) -> None:
        """Stop trying (idempotent); the lease is released in ``wait_closed``."""
        self._stop.set()

    async def wait_closed(self) -> None:
        if self._task is not None:
            await self._task
        if self._held:
            self._set_held(False, "the Manager is stopping")
        conn, self._conn = self._conn, None
        if conn is not None:
            # A clean goodbye ends the session: the next Manager takes the lease at once.
            try:
                await asyncio.wait_for(conn.close(), self._timeout)
            except asyncio.CancelledError:
                raise
            except Exception:
                conn.terminate()

    async def __aenter__(self) -> Lease:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


class SqliteLock:
    """One Manager per SQLite file: an exclusive ``flock`` on ``<database>.lock``.

    SQLite itself would let a second Manager in, and both would then sweep, retain and
    drive rollouts while fighting over one write lock. The lock file holds the owner's
    pid so that the refusal can name it; the kernel drops the lock when the owner exits,
    however it exits.
    """

    def __init__(self, *, database_path: str) -> None:
        self.path = Path(f"{database_path}.lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`AnotherManager` naming the Manager that has it."""
        if self._file is not None:
            raise RuntimeError("SQLite lock already taken")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the life of the Manager
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            fh.close()
            raise AnotherManager(
                f"another Manager (pid {owner}) uses this SQLite database "
                f"({self.path.with_suffix('')}); several Managers need PostgreSQL "
                "(docs/manager.md, Several Managers)"
            ) from None
        except BaseException:
            fh.close()
            raise
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._file = fh

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        fh, self._file = self._file, None
        if fh is not None:
            fh.close()
