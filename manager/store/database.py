"""Opening the database: Tortoise context, migrations, SQLite WAL, error mapping.

The Manager owns one :class:`Database`; it applies the migrations in
``manager/store/migrations`` on start (Tortoise's own migration framework, the same one
``tortoise makemigrations`` / ``tortoise migrate`` drive), so an older database is
upgraded in place. To create a new migration after changing ``models.py``::

    tortoise --config manager.store.database.TORTOISE_ORM makemigrations
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from tortoise import Tortoise
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.context import TortoiseContext
from tortoise.exceptions import DBConnectionError, OperationalError, TransactionManagementError
from tortoise.migrations.api import migrate

from common.errors import FleetError, Unavailable

log = logging.getLogger(__name__)

APP = "manager"
# PostgreSQL advisory lock held while migrating ("fleet" in ASCII, then 0xdb; the leases
# use 0x0001 upwards) and how long to wait for it and for its connection.
MIGRATION_LOCK_KEY = 0x666C656574_00DB
MIGRATION_LOCK_TIMEOUT = 120.0


def connection_name(url: str) -> str:
    """One connection name per backend.

    Tortoise caches prepared INSERT/DELETE SQL per *connection name* (process-wide), so a
    process that opens SQLite and later PostgreSQL (the test suite) must not reuse a name
    across dialects.
    """
    return "postgres" if url.startswith(("postgres", "asyncpg")) else "sqlite"


def tortoise_config(url: str) -> dict[str, Any]:
    """The Tortoise config for the Manager's single app on ``url``."""
    if url.startswith("postgresql://"):
        url = "postgres://" + url[len("postgresql://") :]
    name = connection_name(url)
    return {
        "connections": {name: url},
        "apps": {
            APP: {
                "models": ["manager.store.models"],
                "migrations": "manager.store.migrations",
                "default_connection": name,
            }
        },
        "use_tz": False,
        "timezone": "UTC",
    }


# For the ``tortoise`` CLI (makemigrations needs no real database).
TORTOISE_ORM = tortoise_config("sqlite://:memory:")

# Errors meaning "the database is not reachable / not usable right now": UNAVAILABLE.
DB_ERRORS: tuple[type[BaseException], ...] = (
    DBConnectionError,
    OperationalError,
    sqlite3.OperationalError,
    ConnectionError,
    OSError,
    TimeoutError,
)
try:  # asyncpg is optional (only for PostgreSQL)
    import asyncpg

    DB_ERRORS += (
        asyncpg.PostgresConnectionError,  # SQLSTATE class 08
        asyncpg.OperatorInterventionError,  # class 57: shutdown, cannot connect now
        asyncpg.InvalidCatalogNameError,  # the database itself is gone
        asyncpg.InsufficientResourcesError,  # class 53: disk full, out of memory, connections
        asyncpg.ReadOnlySQLTransactionError,  # a hot standby, default_transaction_read_only
        asyncpg.InterfaceError,  # e.g. connection closed under us
    )
    _PG_READ_ONLY: tuple[type[BaseException], ...] = (asyncpg.ReadOnlySQLTransactionError,)
except ImportError:  # pragma: no cover
    _PG_READ_ONLY = ()


def as_db_error(exc: BaseException) -> BaseException | None:
    """The database failure ``exc`` stands for (itself, or what Tortoise wrapped), or
    None when it is not one. Tortoise reports PostgreSQL's read-only refusal (SQLSTATE
    25006) as a TransactionManagementError, which otherwise means a programming error."""
    if isinstance(exc, TransactionManagementError):
        cause = exc.__cause__
        return cause if _PG_READ_ONLY and isinstance(cause, _PG_READ_ONLY) else None
    return exc if isinstance(exc, DB_ERRORS) else None


# The write check behind /readyz and gRPC health runs at most this often.
_PROBE_INTERVAL = 1.0
# /proc is scanned for the processes holding a locked SQLite file at most this often.
_HOLDERS_TTL = 10.0


@functools.lru_cache(maxsize=8)
def _holders_at(path: str, bucket: int) -> str:
    """'pid 4242 (sqlite3), …' of other processes with ``path`` (or its -wal/-shm) open,
    from /proc (Linux; "" elsewhere, or when nothing readable holds it). ``bucket``
    makes the cache expire."""
    del bucket
    names = {path, f"{path}-wal", f"{path}-shm"}
    found: list[str] = []
    me = os.getpid()
    try:
        pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return ""
    for pid in pids:
        if pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in names for fd in fds):
                with open(f"/proc/{pid}/comm") as fh:
                    found.append(f"pid {pid} ({fh.read().strip()})")
        except OSError:
            continue
        if len(found) >= 3:
            break
    return ", ".join(found)


def sqlite_path(url: str) -> str:
    """The file of an SQLite URL ("" for an in-memory database)."""
    path = url.split("://", 1)[1].split("?", 1)[0] if "://" in url else url
    return "" if path in ("", ":memory:") else str(Path(path).absolute())


def describe_db_error(exc: BaseException, url: str) -> str:
    """What a client or an operator should read about a database failure: what is wrong,
    where, and what to look at — instead of an exception class name."""
    text = " ".join(str(exc).split())[:300]
    low = text.lower()
    where = _redact(url)
    if url.startswith("sqlite"):
        path = sqlite_path(url) or where
        if "locked" in low or "busy" in low:
            holders = _holders_at(path, int(time.monotonic() // _HOLDERS_TTL)) if path else ""
            held = f"; open in {holders}" if holders else ""
            return f"database is locked: another process holds a lock on {path}{held}"
        if "readonly" in low or "read-only" in low:
            return (
                f"database is read-only: {path} cannot be written (check the file's "
                "permissions and whether its file system is mounted read-only)"
            )
        if "disk i/o error" in low:
            return (
                f"database cannot be written: disk I/O error on {path} (a read-only or "
                "immutable file, a read-only file system, or a failing disk)"
            )
        if "full" in low:
            return f"database cannot be written: the disk holding {path} is full"
        if "unable to open" in low:
            return f"database unavailable: cannot open {path} ({text})"
        return f"database unavailable: {path}: {text or type(exc).__name__}"
    if _PG_READ_ONLY and isinstance(exc, _PG_READ_ONLY):
        return (
            f"database is read-only: {where} refuses writes (a hot standby, or "
            "default_transaction_read_only is on)"
        )
    if "disk full" in low or "no space left" in low:
        return f"database cannot be written: the disk of {where} is full"
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"database unavailable: {where}: {detail}"


P = ParamSpec("P")
T = TypeVar("T")


def db_errors_unavailable(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Awaitable[T]]:
    """Run a store operation to completion and map database failures to ``UNAVAILABLE``
    with :func:`describe_db_error`'s message (for a method of an object whose ``_db`` is
    the :class:`Database`)."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        # Shielded: a caller that goes away (client cancelled, deadline) must not cancel
        # a transaction half-way. Tortoise's SQLite transaction context takes its lock
        # *before* BEGIN, and a cancellation during BEGIN skips __aexit__: the lock leaks
        # and every later query hangs (seen when a Daemon cancelled a SyncAgentStates
        # call). The operation always finishes on its own.
        task = asyncio.ensure_future(fn(*args, **kwargs))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # Nobody will await the outcome: report it here, once and briefly, instead of
            # asyncio's "Task exception was never retrieved" traceback at collection.
            task.add_done_callback(functools.partial(_orphaned, fn.__name__, args))
            raise
        except FleetError:
            raise
        except Exception as exc:
            failure = as_db_error(exc)
            if failure is None:
                raise
            message = _describe(args, failure)
            log.warning("database error in %s: %s", fn.__name__, message)
            raise Unavailable(message) from exc

    return wrapper


def _describe(args: tuple[Any, ...], exc: BaseException) -> str:
    database = getattr(args[0], "_db", None) if args else None
    if isinstance(database, Database):
        return database.describe_error(exc)
    return f"database unavailable: {type(exc).__name__}: {exc}"


def _orphaned(name: str, args: tuple[Any, ...], task: asyncio.Future[Any]) -> None:
    """Done callback of a store operation whose caller went away."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None or isinstance(exc, FleetError):
        return
    failure = as_db_error(exc)
    if failure is not None:
        log.warning(
            "database error in %s (its caller had gone): %s", name, _describe(args, failure)
        )
    else:
        log.error("%s failed after its caller had gone", name, exc_info=exc)


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
    return url


class Database:
    """The Manager's database connection: ``start()`` migrates and connects, ``close()``."""

    def __init__(self, *, url: str) -> None:
        self.url = url
        self._ctx: TortoiseContext | None = None
        self._started = False
        self._user_version = 0  # SQLite: written back unchanged by the write check
        self._probe: asyncio.Future[str] | None = None
        self._probe_at = 0.0
        self._last_problem = ""  # what the last finished write check found

    @property
    def backend(self) -> str:
        return connection_name(self.url)

    @property
    def location(self) -> str:
        """Where the data is, for the start-up line: the SQLite file, or the PostgreSQL
        server and database (never the password)."""
        if self.url.startswith("sqlite://"):
            return self.url.removeprefix("sqlite://")
        rest = self.url.split("://", 1)[-1]
        return rest.rsplit("@", 1)[-1]

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("database already started")
        self._started = True
        config = tortoise_config(self.url)
        self._ctx = TortoiseContext()
        self._ctx.__enter__()
        applied: list[str] = []

        def progress(event: str, app_label: str, name: str) -> None:
            if event == "apply_done":
                applied.append(name)

        if self.backend == "sqlite":
            self._check_sqlite_file()
        try:
            async with self._migration_lock():
                await migrate(config=config, progress=progress)
        except DB_ERRORS as exc:
            raise Unavailable(f"cannot open database {_redact(self.url)}: {exc}") from exc
        if applied:
            log.info("database migrated: applied %s", ", ".join(applied))
        await Tortoise.init(config=config, _enable_global_fallback=True)
        if self.backend == "sqlite":
            # WAL: readers never block the writer; NORMAL sync is durable at each
            # checkpoint-free commit in WAL mode against process crashes.
            await self.connection().execute_script(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;"
            )
            _, rows = await self.connection().execute_query("PRAGMA user_version")
            self._user_version = int(rows[0][0]) if rows else 0

    @contextlib.asynccontextmanager
    async def _migration_lock(self) -> AsyncIterator[None]:
        """PostgreSQL: one Manager migrates at a time. Several starting together on a
        new database (workers, replicas) would otherwise race creating the same tables;
        the others wait, then find nothing left to apply. SQLite has one Manager."""
        if self.backend == "sqlite":
            yield
            return
        import asyncpg

        from ..leases import asyncpg_dsn

        conn = await asyncpg.connect(asyncpg_dsn(self.url), timeout=MIGRATION_LOCK_TIMEOUT)
        try:
            await conn.execute(
                "SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY, timeout=MIGRATION_LOCK_TIMEOUT
            )
            yield
        finally:
            conn.terminate()  # ends the session, and so the lock, whatever happened

    def _check_sqlite_file(self) -> None:
        """Create the SQLite file's directory and prove the file opens.

        Tortoise 1.1 deadlocks (a connection lock is never released) when its first
        SQLite connection fails, so a bad path would hang start-up instead of failing.
        """
        path = sqlite_path(self.url)
        if not path:
            return
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            sqlite3.connect(path).close()
        except (OSError, sqlite3.Error) as exc:
            raise Unavailable(f"cannot open database {self.url}: {exc}") from exc

    def connection(self) -> BaseDBAsyncClient:
        assert self._ctx is not None
        return self._ctx.db(connection_name(self.url))

    async def ping(self) -> bool:
        """True when a trivial query succeeds."""
        try:
            await self.connection().execute_query("SELECT 1")
            return True
        except Exception as exc:
            log.warning("database ping failed: %s", exc)
            return False

    def describe_error(self, exc: BaseException) -> str:
        """:func:`describe_db_error` for this database."""
        return describe_db_error(exc, self.url)

    async def writable(self) -> bool:
        """True when the database takes writes (gRPC health); see :meth:`write_status`."""
        return not await self.write_status()

    async def write_status(self, *, wait: float = 2.0) -> str:
        """Why the database does not take a write now ("" when it does): what /readyz
        reports. A real write is tried at most once a second (concurrent callers share
        it); one that has not finished after ``wait`` seconds — SQLite waits up to its
        busy timeout (5 s) for a lock — is reported as such and left to finish."""
        now = time.monotonic()
        probe = self._probe
        if probe is None or (probe.done() and now - self._probe_at >= _PROBE_INTERVAL):
            probe = self._probe = asyncio.ensure_future(self._write_check())
            probe.add_done_callback(self._write_checked)
            self._probe_at = now
        if not probe.done():
            try:
                await asyncio.wait_for(asyncio.shield(probe), wait)
            except TimeoutError:
                # The last finished check says why more precisely, if it failed too.
                return self._last_problem or (
                    f"database did not take a write within {wait:g} s: it is locked by "
                    "another process or overloaded"
                )
        return probe.result()

    def _write_checked(self, probe: asyncio.Future[str]) -> None:
        if not probe.cancelled() and probe.exception() is None:
            self._last_problem = probe.result()

    async def _write_check(self) -> str:
        """One real write that changes nothing: SQLite writes its header's user_version
        back (a read-only, immutable or locked file fails it, where a no-op UPDATE would
        not even take the write lock); PostgreSQL runs an UPDATE that matches no row (a
        read-only transaction or a standby refuses it)."""
        try:
            if self.backend == "sqlite":
                sql = f"PRAGMA user_version = {self._user_version}"
            else:
                sql = "UPDATE fleet_node SET status = status WHERE false"
            await self.connection().execute_query(sql)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = as_db_error(exc)
            if failure is None:
                log.exception("database write check failed")
                return f"database write check failed: {type(exc).__name__}"
            reason = self.describe_error(failure)
            log.warning("database write check: %s", reason)
            return reason
        return ""

    async def close(self) -> None:
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        if self._ctx is None:
            return
        ctx, self._ctx = self._ctx, None
        try:
            await ctx.close_connections()
        finally:
            ctx.__exit__(None, None, None)
            # Release the global fallback so a later Database in this process can start.
            import tortoise.context as tctx

            if tctx._global_context is ctx:
                tctx._global_context = None
