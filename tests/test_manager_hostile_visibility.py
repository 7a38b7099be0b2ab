"""Issue 11 item 11, the Manager's side: what an operator could not see.

Against a real Manager:

* refused TLS handshakes — no certificate, another CA's, an expired one, plaintext —
  are logged with the peer's address and the reason, one line per peer and reason a
  minute (counted in /metrics), and cost no memory (grpclib kept a connection handler
  for every refused handshake: ~1.7 KB each, for ever);
* ``/readyz`` is 503 with the reason while the SQLite file is locked by another process
  or cannot be written (and gRPC health is NOT_SERVING), 200 again once it can;
* clients are told why ("database is locked: another process holds a lock on …",
  "database cannot be written: …"), not "database unavailable: OperationalError";
* calls whose callers gave up while the database was locked leave no "Task exception
  was never retrieved" traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
from harness import load_certgen, wait_until
from harness.manager import (
    ManagerProc,
    admin_channel,
    http_get,
    manager_rpc,
    metric_value,
    node_channel,
    start_manager,
    write_manager_config,
)

from schema import manager_pb

TRACEBACKS = ("Traceback", "exception was never retrieved")


def _handshake(port: int, context: ssl.SSLContext | None, payload: bytes = b"") -> int:
    """One connection to the Manager's gRPC port from a port we know; returns it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        local = sock.getsockname()[1]
        if context is None:
            sock.sendall(payload)
            with contextlib.suppress(OSError):
                sock.recv(100)
            return local
        with (
            contextlib.suppress(ssl.SSLError, OSError),
            context.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            tls.recv(100)
        return local


def _client(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


@pytest.fixture(scope="module")
def expired(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> tuple[Path, Path]:
    """node-a's certificate from the fleet CA, expired yesterday."""
    ca = load_certgen().CertificateAuthority.load(certs)
    now = dt.datetime.now(dt.UTC)
    cert, key = ca.issue(
        "node",
        "node-a",
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    directory = tmp_path_factory.mktemp("expired")
    (directory / "node-a.crt").write_bytes(cert)
    (directory / "node-a.key").write_bytes(key)
    return directory / "node-a.crt", directory / "node-a.key"


def _logged(mgr: ManagerProc, line: str) -> Callable[[], bool]:
    return lambda: line in mgr.output()


@pytest.mark.slow
def test_refused_handshakes_are_logged_rate_limited_and_cost_no_memory(
    tmp_path: Path, certs: Path, other_ca_certs: Path, expired: tuple[Path, Path]
) -> None:
    mgr = start_manager(tmp_path, certs)
    try:
        port = mgr.grpc_port
        ca = certs / "ca.crt"
        cases = {
            "no client certificate": _handshake(port, _client(ca)),
            "client certificate was not issued by the fleet CA": _handshake(
                port, _client(ca, other_ca_certs / "node-a.crt", other_ca_certs / "node-a.key")
            ),
            "client certificate has expired": _handshake(port, _client(ca, *expired)),
            "not TLS": _handshake(port, None, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        }
        for reason, local in cases.items():
            line = f"refused TLS handshake from 127.0.0.1:{local}: {reason}"
            wait_until(_logged(mgr, line), timeout=10, what=line)

        # An honest node is served meanwhile.
        manager_rpc(
            certs,
            port,
            "node-a",
            "register_node",
            manager_pb.RegisterNodeRequest(node_id="node-a", daemon_address="127.0.0.1:1"),
        )

        # 3,000 more without a certificate: one line a minute, every one counted, and
        # nothing kept for them.
        process = psutil.Process(mgr.pid)
        for _ in range(200):  # warm up allocator arenas and TLS buffers
            _handshake(port, _client(ca))
        before = process.memory_info().rss
        context = _client(ca)
        started = time.monotonic()
        for _ in range(3000):
            _handshake(port, context)
        took = time.monotonic() - started

        def counted() -> float:
            text = http_get(f"{mgr.http_url}/metrics")[1]
            value = metric_value(
                text, "fleet_manager_tls_handshake_failures_total", reason="no_certificate"
            )
            return value or 0

        wait_until(lambda: counted() == 3201, timeout=20, what="3,201 refusals counted")
        grown = (process.memory_info().rss - before) / 2**20
        lines = [ln for ln in mgr.output().splitlines() if ": no client certificate" in ln]
        assert len(lines) == 1, lines[:5]
        assert grown < 3.0, f"RSS grew {grown:.1f} MiB over 3,000 refused handshakes"
        print(f"\n3,000 refused handshakes in {took:.1f} s: Manager RSS {grown:+.1f} MiB")
    finally:
        mgr.stop()


@contextlib.contextmanager
def _sqlite_locked(path: str) -> Iterator[None]:
    """Another process's exclusive lock on the database file (as a backup tool or the
    sqlite3 shell holding a write transaction would)."""
    lock = sqlite3.connect(path, isolation_level=None, timeout=10)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        lock.execute("ROLLBACK")
        lock.close()


def _ready(mgr: ManagerProc) -> tuple[int, dict[str, object]]:
    status, body = http_get(f"{mgr.http_url}/readyz", timeout=15)
    return status, json.loads(body)


async def _health(certs: Path, port: int) -> int:
    channel = admin_channel(certs, port)
    try:
        reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=15)
        return int(reply.status)
    finally:
        channel.close()


async def _heartbeat(certs: Path, port: int) -> str:
    """One heartbeat from node-a with a patient caller: "OK" or "STATUS: message"."""
    channel = node_channel(certs, port, "node-a")
    try:
        await manager_pb.ManagerServiceStub(channel, timeout=30).heartbeat(
            manager_pb.HeartbeatRequest(node_id="node-a", timestamp=int(time.time()))
        )
        return "OK"
    except GRPCError as exc:
        return f"{exc.status.name}: {exc.message}"
    finally:
        channel.close()


async def _impatient_calls(certs: Path, port: int) -> None:
    """Metric reports and registrations whose callers give up after 1 s — while the
    store waits out SQLite's busy timeout (5 s) for each."""
    channel = node_channel(certs, port, "node-a")
    stub = manager_pb.ManagerServiceStub(channel, timeout=1.0)
    now = int(time.time())
    try:
        for i in range(3):
            with contextlib.suppress(TimeoutError, GRPCError):
                await stub.report_metrics(
                    manager_pb.ReportMetricsRequest(
                        node_id="node-a",
                        metrics=[manager_pb.MetricData(type="cpu", timestamp=now - i)],
                    )
                )
            with contextlib.suppress(TimeoutError, GRPCError):
                await stub.register_node(
                    manager_pb.RegisterNodeRequest(node_id="node-a", daemon_address="127.0.0.1:1")
                )
    finally:
        channel.close()


def test_locked_sqlite_is_not_ready_and_says_why(tmp_path: Path, certs: Path) -> None:
    cfg = write_manager_config(tmp_path / "m.toml", {"heartbeats": {"flush_interval": 0.2}})
    mgr = start_manager(tmp_path, certs, extra_args=["--config", str(cfg)])
    try:
        port = mgr.grpc_port
        path = mgr.db_url.split("://", 1)[1]
        manager_rpc(
            certs,
            port,
            "node-a",
            "register_node",
            manager_pb.RegisterNodeRequest(node_id="node-a", daemon_address="127.0.0.1:1"),
        )
        assert _ready(mgr)[0] == 200
        locked = f"database is locked: another process holds a lock on {path}"
        with _sqlite_locked(path):

            def not_ready() -> bool:
                status, body = _ready(mgr)
                return status == 503 and str(body["database"]).startswith(locked)

            wait_until(not_ready, timeout=30, what="/readyz 503 'database is locked'")
            assert f"pid {os.getpid()}" in str(_ready(mgr)[1]["database"])  # who holds it
            assert asyncio.run(_health(certs, port)) == HealthCheckResponse.NOT_SERVING
            asyncio.run(_impatient_calls(certs, port))
            # A caller that waits is told why (a heartbeat is answered from the buffer
            # until a flush has failed; after that it waits for the next flush).
            wait_until(
                lambda: asyncio.run(_heartbeat(certs, port)).startswith(f"UNAVAILABLE: {locked}"),
                timeout=60,
                what="heartbeat UNAVAILABLE 'database is locked'",
            )
        wait_until(lambda: _ready(mgr)[0] == 200, timeout=30, what="/readyz 200 again")
        wait_until(lambda: asyncio.run(_heartbeat(certs, port)) == "OK", timeout=30, what="OK")
        time.sleep(1.0)  # callbacks of abandoned operations have run
        log = mgr.output()
        assert "(its caller had gone)" in log
        for needle in TRACEBACKS:
            assert needle not in log, log[-3000:]
        assert "database unavailable: OperationalError" not in log
    finally:
        mgr.stop()


def _chattr(flag: str, paths: list[Path]) -> None:
    existing = [str(p) for p in paths if p.exists()]
    subprocess.run(["chattr", flag, *existing], check=True, capture_output=True)


def test_unwritable_sqlite_is_not_ready_and_says_why(tmp_path: Path, certs: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_text("x")
    if (
        not shutil.which("chattr")
        or subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode
    ):
        pytest.skip("cannot make files immutable here (chattr +i needs CAP_LINUX_IMMUTABLE)")
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    mgr = start_manager(tmp_path, certs)
    db = Path(mgr.db_url.split("://", 1)[1])
    # Not the -shm index: a store into a mapped page of an immutable file is SIGBUS
    # (see test_faults_database.py).
    files = [db, Path(f"{db}-wal")]
    try:
        assert _ready(mgr)[0] == 200
        _chattr("+i", files)
        try:
            expected = f"database cannot be written: disk I/O error on {db}"

            def not_ready() -> bool:
                status, body = _ready(mgr)
                return status == 503 and str(body["database"]).startswith(expected)

            wait_until(not_ready, timeout=30, what="/readyz 503 'cannot be written'")
            with pytest.raises(GRPCError) as refused:
                manager_rpc(
                    certs,
                    mgr.grpc_port,
                    "node-b",
                    "register_node",
                    manager_pb.RegisterNodeRequest(node_id="node-b", daemon_address="127.0.0.1:1"),
                )
            assert refused.value.status == Status.UNAVAILABLE
            assert (refused.value.message or "").startswith(expected), refused.value.message
        finally:
            _chattr("-i", files)
        wait_until(lambda: _ready(mgr)[0] == 200, timeout=30, what="/readyz 200 again")
        for needle in TRACEBACKS:
            assert needle not in mgr.output()
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], capture_output=True)
        mgr.stop()


def test_read_only_postgres_is_not_ready_and_says_why(tmp_path: Path, certs: Path) -> None:
    base = os.environ.get("FLEET_TEST_POSTGRES")
    if not base:
        pytest.skip("PostgreSQL not configured: set FLEET_TEST_POSTGRES")
    from harness.pg import _admin, throwaway_database

    with throwaway_database(base) as url:
        name = url.rsplit("/", 1)[1]
        admin = url.rsplit("/", 1)[0] + "/postgres"

        async def read_only(on: bool) -> None:
            # New sessions of the database refuse writes; close the Manager's current ones.
            await _admin(
                admin,
                f'ALTER DATABASE "{name}" SET default_transaction_read_only = '
                f"{'on' if on else 'off'}",
            )
            await _admin(
                admin,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
            )

        mgr = start_manager(tmp_path, certs, db_url=url)
        try:
            assert _ready(mgr)[0] == 200
            asyncio.run(read_only(True))
            expected = "database is read-only: "

            def not_ready() -> bool:
                status, body = _ready(mgr)
                return status == 503 and str(body["database"]).startswith(expected)

            wait_until(not_ready, timeout=30, what="/readyz 503 'read-only'")
            with pytest.raises(GRPCError) as refused:
                manager_rpc(
                    certs,
                    mgr.grpc_port,
                    "node-a",
                    "register_node",
                    manager_pb.RegisterNodeRequest(node_id="node-a", daemon_address="127.0.0.1:1"),
                )
            assert refused.value.status == Status.UNAVAILABLE
            assert "database is read-only" in (refused.value.message or "")
            asyncio.run(read_only(False))
            wait_until(lambda: _ready(mgr)[0] == 200, timeout=30, what="/readyz 200 again")
            for needle in TRACEBACKS:
                assert needle not in mgr.output()
        finally:
            mgr.stop()


def test_handshake_gate_on_asyncio_loop(tmp_path: Path, certs: Path) -> None:
    """The gate upgrades connections with loop.start_tls(): asyncio's loop as well as
    uvloop (the default) — refusals logged, honest calls served."""
    mgr = start_manager(tmp_path, certs, extra_args=["--event-loop", "asyncio"])
    try:
        assert "loop=asyncio" in mgr.output()
        local = _handshake(mgr.grpc_port, _client(certs / "ca.crt"))
        line = f"refused TLS handshake from 127.0.0.1:{local}: no client certificate"
        wait_until(_logged(mgr, line), timeout=10, what=line)
        for node_id in ("node-a", "node-b"):
            manager_rpc(
                certs,
                mgr.grpc_port,
                node_id,
                "register_node",
                manager_pb.RegisterNodeRequest(node_id=node_id, daemon_address="127.0.0.1:1"),
            )
        assert asyncio.run(_health(certs, mgr.grpc_port)) == HealthCheckResponse.SERVING
    finally:
        mgr.stop()
