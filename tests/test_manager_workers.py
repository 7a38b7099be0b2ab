"""Manager worker processes sharing one host's ports (issue 14, item 1: manager/workers.py).

* On SQLite, asking for workers is refused in one line (one process per SQLite file).
* Two workers on a real PostgreSQL with real certificates and real Daemons: both workers
  take connections on the one gRPC port, ``/metrics`` adds up every worker's counters
  whichever worker answers, one worker killed with SIGKILL is restarted by the parent
  while the nodes stay online and its counters are kept; SIGTERM stops everything.
* A worker whose parent was killed stops by itself.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from harness import console_script, wait_until
from harness.daemon import DaemonProc, start_daemon
from harness.manager import (
    ManagerProc,
    _channel,
    fleet_certs,
    http_get,
    manager_rpc,
    metric_value,
    start_manager,
)

from schema import admin_pb

NODES = ("node-a", "node-b", "node-c")
_PIDS = re.compile(r"manager ready: .* workers=(\d+) pids=([\d,]+)")


def test_workers_on_sqlite_are_refused_in_one_line(tmp_path: Path) -> None:
    for asked, why in (("2", "needs PostgreSQL"), ("0", "must be auto or a number")):
        done = subprocess.run(
            [console_script("fleet-manager"), "--insecure", "--workers", asked],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "FLEET_MANAGER_MANAGER_DATA_DIR": str(tmp_path / "data")},
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and why in lines[0], done.stderr


def _worker_pids(manager: ManagerProc) -> list[int]:
    match = _PIDS.search(manager.output())
    assert match, manager.output()[-2000:]
    pids = [int(p) for p in match.group(2).split(",")]
    assert len(pids) == int(match.group(1))
    return pids


def _children(manager: ManagerProc) -> list[int]:
    """The worker processes (not multiprocessing's resource tracker)."""
    return [
        c.pid
        for c in psutil.Process(manager.pid).children()
        if c.is_running() and "resource_tracker" not in " ".join(c.cmdline())
    ]


def _list_nodes_total(manager: ManagerProc) -> float:
    _, text = http_get(f"{manager.http_url}/metrics")
    return metric_value(text, "fleet_manager_rpc_total", method="ListNodes", code="OK") or 0.0


def _online(certs: Path, port: int) -> set[str]:
    reply = manager_rpc(certs, port, "admin", "list_nodes", admin_pb.ListNodesRequest())
    return {n.node_id for n in reply.nodes if n.status == "online"}


@pytest.mark.postgres
@pytest.mark.slow
def test_two_workers_share_the_ports_add_up_metrics_and_survive_a_kill(
    tmp_path: Path, pg_url: str
) -> None:
    certs = fleet_certs(tmp_path / "certs", list(NODES))
    manager = start_manager(
        tmp_path, certs, db_url=pg_url, grace=6.0, extra_args=["--workers", "2"], timeout=60
    )
    daemons: list[DaemonProc] = []
    try:
        pids = _worker_pids(manager)
        assert sorted(pids) == sorted(_children(manager))
        # One duties lease among the workers (each a Manager of the database).
        _, text = http_get(f"{manager.http_url}/metrics")
        assert metric_value(text, "fleet_manager_lease_held", lease="duties") == 1.0
        for node_id in NODES:
            daemons.append(
                start_daemon(tmp_path, certs, node_id=node_id, manager_port=manager.grpc_port)
            )
        wait_until(
            lambda: _online(certs, manager.grpc_port) == set(NODES),
            timeout=60,
            what="every node online through the workers",
        )

        # 24 connections: the kernel spreads them over both workers' sockets.
        before = _list_nodes_total(manager)
        served: dict[int, int] = {}

        async def spread() -> None:
            channels = [_channel(certs, manager.grpc_port, "admin") for _ in range(24)]
            try:
                for channel in channels:
                    await admin_pb.AdminServiceStub(channel, timeout=15).list_nodes(
                        admin_pb.ListNodesRequest()
                    )
                # While they are open: which worker holds each?
                for pid in pids:
                    served[pid] = sum(
                        1
                        for c in psutil.Process(pid).net_connections("tcp")
                        if c.laddr and c.laddr.port == manager.grpc_port and c.raddr
                    )
            finally:
                for channel in channels:
                    channel.close()

        asyncio.run(spread())
        assert all(count > 0 for count in served.values()), served
        # Whichever worker answers the scrape, the 24 calls are all counted.
        for _ in range(6):
            assert _list_nodes_total(manager) - before >= 24

        # A worker dies: the parent starts another; nodes stay online; counters kept.
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: (
                "worker 1 is back" in manager.output() or "worker 2 is back" in manager.output()
            ),
            timeout=60,
            what="the killed worker restarted",
        )
        children = _children(manager)
        assert victim not in children and len(children) == 2, children
        assert "exited with code -9" in manager.output()
        wait_until(
            lambda: _online(certs, manager.grpc_port) == set(NODES),
            timeout=30,
            what="every node online after the kill",
        )
        assert _list_nodes_total(manager) - before >= 24
        assert "-> offline" not in manager.output()

        # SIGTERM stops every worker, gracefully, and the parent exits 0.
        children = _children(manager)
        manager.signal(signal.SIGTERM)
        manager.popen.wait(timeout=60)
        assert manager.popen.returncode == 0, manager.output()[-3000:]
        assert not any(
            psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in children
        )
        assert manager.output().count("manager stopped") >= 2
    finally:
        for daemon in daemons:
            daemon.stop()
        manager.stop()


@pytest.mark.postgres
def test_workers_stop_when_their_parent_is_killed(tmp_path: Path, pg_url: str) -> None:
    certs = fleet_certs(tmp_path / "certs", [])
    manager = start_manager(
        tmp_path, certs, db_url=pg_url, extra_args=["--workers", "2"], timeout=60
    )
    try:
        children = _children(manager)
        assert len(children) == 2
        manager.kill()
        wait_until(
            lambda: (
                not any(
                    psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                    for p in children
                )
            ),
            timeout=30,
            what="the orphaned workers stopped",
        )
        assert "is gone: stopping" in manager.output()
    finally:
        manager.stop()
