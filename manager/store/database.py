"""Opening the database: Tortoise context, migrations, SQLite WAL, error mapping.

The Manager owns one :class:`Database`; it applies the migrations in
``manager/store/migrations`` on start (Tortoise's own migration framework, the same one
``tortoise makemigrations`` / ``tortoise migrate`` drive), so an older database is
upgraded in place. To create a new migration after changing ``models.py``::

    tortoise --config manager.store.database.TORTOISE_ORM makemigrations
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from tortoise import Tortoise
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.context import TortoiseContext
from tortoise.exceptions import DBConnectionError, OperationalError
from tortoise.migrations.api import migrate

from common.errors import FleetError, Unavailable

log = logging.getLogger(__name__)

APP = "manager"


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
        asyncpg.TooManyConnectionsError,
        asyncpg.InterfaceError,  # e.g. connection closed under us
    )
except ImportError:  # pragma: no cover
    pass

P = ParamSpec("P")
T = TypeVar("T")


def db_errors_unavailable(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Awaitable[T]]:
    """Run a store operation to completion and map connectivity failures to ``UNAVAILABLE``."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            # Shielded: a caller that goes away (client cancelled, deadline) must not
            # cancel a transaction half-way. Tortoise's SQLite transaction context takes
            # its lock *before* BEGIN, and a cancellation during BEGIN skips __aexit__:
            # the lock leaks and every later query hangs (seen when a Daemon cancelled
            # a SyncAgentStates call). The operation now always finishes on its own.
            return await asyncio.shield(fn(*args, **kwargs))
        except FleetError:
            raise
        except DB_ERRORS as exc:
            log.warning("database error in %s: %s", fn.__name__, exc)
            raise Unavailable(f"database unavailable: {type(exc).__name__}") from exc

    return wrapper


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

    @property
    def backend(self) -> str:
        return connection_name(self.url)

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

    def _check_sqlite_file(self) -> None:
        """Create the SQLite file's directory and prove the file opens.

        Tortoise 1.1 deadlocks (a connection lock is never released) when its first
        SQLite connection fails, so a bad path would hang start-up instead of failing.
        """
        path = self.url.split("://", 1)[1].split("?", 1)[0]
        if not path or path == ":memory:":
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
        """True when a trivial query succeeds (for /readyz)."""
        try:
            await self.connection().execute_query("SELECT 1")
            return True
        except Exception as exc:
            log.warning("database ping failed: %s", exc)
            return False

    async def close(self) -> None:
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
