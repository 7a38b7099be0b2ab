"""Fixtures every test module may use: certificates and the PostgreSQL URL."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from harness import load_certgen

NODES = ("node-a", "node-b", "node-c")


@pytest.fixture(scope="session")
def certgen() -> ModuleType:
    """The ``tools/certgen.py`` module."""
    return load_certgen()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory, certgen: ModuleType) -> Path:
    """A directory with ca.crt, manager, admin and node-a/b/c certificates (dev layout)."""
    directory = tmp_path_factory.mktemp("certs")
    certgen.dev(directory, list(NODES), echo=lambda _line: None)
    return directory


@pytest.fixture(scope="session")
def other_ca_certs(tmp_path_factory: pytest.TempPathFactory, certgen: ModuleType) -> Path:
    """Same layout signed by an unrelated CA: must be refused everywhere."""
    directory = tmp_path_factory.mktemp("other-ca")
    certgen.dev(directory, list(NODES), echo=lambda _line: None)
    return directory


def postgres_url() -> str | None:
    """The PostgreSQL URL from FLEET_TEST_POSTGRES (set by .ci/run), or None."""
    return os.environ.get("FLEET_TEST_POSTGRES") or None


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL on each backend; PostgreSQL gets a throwaway database."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'fleet.db'}"
        return
    base = postgres_url()
    if not base:
        pytest.skip(
            "PostgreSQL not configured: set FLEET_TEST_POSTGRES=postgres://user@host:port/db"
        )
    from harness.pg import throwaway_database

    with throwaway_database(base) as url:
        yield url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database (several Managers, workers); skips without one."""
    base = postgres_url()
    if not base:
        pytest.skip("PostgreSQL not configured: set FLEET_TEST_POSTGRES=postgres://user@host/db")
    from harness.pg import throwaway_database

    with throwaway_database(base) as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """After the session, kill any child process a failed test left running (Managers,
    Daemons and their agents), so a red run does not leave servers on the machine."""
    yield
    import psutil

    leftovers = psutil.Process().children(recursive=True)
    for proc in leftovers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(leftovers, timeout=5)
