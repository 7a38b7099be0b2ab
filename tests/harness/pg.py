"""Throwaway PostgreSQL databases for tests (created and dropped through asyncpg)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit


async def _admin(base_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base_url.replace("postgres://", "postgresql://", 1))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def throwaway_database(base_url: str) -> Iterator[str]:
    """Create ``fleet_test_<random>`` next to ``base_url``'s database; drop it afterwards."""
    name = f"fleet_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(base_url, f'CREATE DATABASE "{name}"'))
    parts = urlsplit(base_url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        asyncio.run(_admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
