"""Several Managers on one database (issue 14, item 2).

* The duties lease (manager/leases.py) on a real PostgreSQL: one holder; a holder whose
  connection is cut stops at once and another takes it; a holder that leaves hands over.
* SQLite is one Manager per file: a second one is refused in one line.
* What one Manager changes reaches the other through LISTEN/NOTIFY (manager/notify.py),
  not its polling: a node removed through one is refused by the other at once.
* The kill -9 of the lease holder with three real Daemons reporting to both Managers:
  no node offline, every acknowledged metric report stored, the duties resumed on the
  survivor within the grace, fleetctl working, and the killed Manager rejoining.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import async_wait_until, console_script, free_port, run_cli, wait_until
from harness.daemon import DaemonProc, scrape_metrics, start_daemon
from harness.manager import (
    ManagerProc,
    fleet_certs,
    http_get,
    manager_rpc,
    manager_rpc_error,
    metric_value,
    start_manager,
    write_manager_config,
)

from daemon.manager_addresses import start_index
from manager.leases import Lease
from manager.metrics import ManagerMetrics
from schema import admin_pb, manager_pb

_QUEUED = re.compile(r"queued metrics report (\d+): (\d+) samples at (\d+)")
_SENT = re.compile(r"sent metrics report (\d+) to (\S+)")
_ACQUIRED = "lease 'duties' acquired by manager"


async def _fetch(db_url: str, query: str, *args: object) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(db_url.replace("postgres://", "postgresql://", 1))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def _sql(db_url: str, query: str, *args: object) -> list[Any]:
    return asyncio.run(_fetch(db_url, query, *args))


# ---- the lease itself ------------------------------------------------------------


@pytest.mark.postgres
def test_one_holder_a_cut_holder_stops_at_once_and_a_leaving_one_hands_over(
    pg_url: str,
) -> None:
    async def scenario() -> None:
        changes: dict[str, list[bool]] = {"a": [], "b": []}

        def lease(name: str) -> Lease:
            return Lease(
                name="duties",
                holder=name,
                url=pg_url,
                metrics=ManagerMetrics(),
                retry_interval=0.2,
                check_timeout=1.0,
                on_change=changes[name].append,
            )

        a, b = lease("a"), lease("b")
        async with a, b:
            assert a.held and not b.held  # a tried first
            assert metric_value(a._metrics.render().decode(), "fleet_manager_lease_held") == 1
            # b keeps trying and does not get it while a holds it.
            await asyncio.sleep(0.6)
            assert not b.held
            # The holder's session is killed under it (as when the database restarts or a
            # network cuts it): it gives the lease up, and b takes it.
            killed = await _fetch(
                pg_url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'fleet-manager a lease'",
            )
            assert killed == [(True,)], killed

            async def b_took_over() -> bool:
                return b.held and not a.held

            await async_wait_until(b_took_over, timeout=10, what="b holding the lease")
            assert b.acquired_at > a.acquired_at
            # a reconnects and waits its turn; b leaves: a has it at its next try.
            await asyncio.sleep(0.6)
            assert not a.held
            b.close()
            await b.wait_closed()

            async def a_again() -> bool:
                return a.held

            await async_wait_until(a_again, timeout=5, what="a holding the lease again")
        assert changes == {"a": [True, False, True, False], "b": [True, False]}

    asyncio.run(scenario())


def test_a_second_manager_on_one_sqlite_file_is_refused_in_one_line(
    tmp_path: Path, certs: Path
) -> None:
    first = start_manager(tmp_path, certs)
    try:
        second = run_cli(
            [
                console_script("fleet-manager"),
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "",
                "--enroll-listen",
                "",
                "--data-dir",
                str(first.data_dir),
                "--cert",
                str(certs / "manager.crt"),
                "--key",
                str(certs / "manager.key"),
                "--ca",
                str(certs / "ca.crt"),
            ],
            timeout=30,
        )
        assert second.returncode == 1
        assert "Traceback" not in second.stderr
        assert f"another Manager (pid {first.pid}) uses this SQLite database" in second.stderr, (
            second.stderr
        )
        assert "several Managers need PostgreSQL (docs/manager.md, Several Managers)" in (
            second.stderr
        )
        # The first one is untouched.
        listed = manager_rpc(
            certs, first.grpc_port, "admin", "list_nodes", admin_pb.ListNodesRequest()
        )
        assert listed.nodes == []
    finally:
        assert first.stop() == 0
    # Its lock went with it: the next Manager on the file starts.
    again = start_manager(tmp_path, certs, log_name="manager-again.log")
    assert again.stop() == 0


# ---- caches across Managers ------------------------------------------------------


@pytest.mark.postgres
def test_a_node_removed_through_one_manager_is_refused_by_the_other_at_once(
    tmp_path: Path, pg_url: str
) -> None:
    certs = fleet_certs(tmp_path / "certs", ["node-a"])
    # Polling alone would take a minute: only the change feed can be this quick.
    cfg = write_manager_config(
        tmp_path / "m.toml",
        {"grpc.tls": {"revocation_refresh": "60s"}, "heartbeats": {"flush_interval": 5}},
    )
    args = ["--config", str(cfg)]
    one = start_manager(tmp_path / "one", certs, db_url=pg_url, extra_args=args)
    two = start_manager(tmp_path / "two", certs, db_url=pg_url, extra_args=args)
    try:
        manager_rpc(
            certs,
            two.grpc_port,
            "node-a",
            "register_node",
            manager_pb.RegisterNodeRequest(node_id="node-a", daemon_address="127.0.0.1:1"),
        )

        def beat() -> Any:
            return manager_rpc(
                certs,
                two.grpc_port,
                "node-a",
                "heartbeat",
                manager_pb.HeartbeatRequest(node_id="node-a", timestamp=int(time.time())),
            )

        assert beat().success
        manager_rpc(
            certs,
            one.grpc_port,
            "admin",
            "remove_node",
            admin_pb.RemoveNodeRequest(node_id="node-a", force=True),
        )
        removed_at = time.monotonic()

        def refused() -> tuple[Status, str] | None:
            try:
                beat()
            except GRPCError as exc:
                return exc.status, exc.message or ""
            return None

        status, message = wait_until(refused, timeout=10, interval=0.02, what="refused by two")
        took = time.monotonic() - removed_at
        assert status is Status.UNAUTHENTICATED and "node removed" in message, message
        # Well under revocation_refresh (60 s) and the flush that would find the row gone.
        assert took < 3.0, took
        status, _ = manager_rpc_error(
            certs, two.grpc_port, "node-a", "get_revocations", manager_pb.GetRevocationsRequest()
        )
        assert status is Status.UNAUTHENTICATED
        print(f"removal on one refused by two after {took:.2f} s")
    finally:
        assert one.stop() == 0
        assert two.stop() == 0


# ---- kill -9 of the lease holder ---------------------------------------------------

NODES = ("node-a", "node-b", "node-c")
HEARTBEAT = 1.0
GRACE = 8.0  # the liveness grace (--grace): long enough for a Daemon to fail over


class _OnlineWatch:
    """Polls ListNodes on one Manager in a thread; remembers every node seen not online."""

    def __init__(self, certs: Path, port: int, nodes: set[str]) -> None:
        self.certs = certs
        self.port = port
        self.watched = set(nodes)
        self.not_online: list[tuple[float, str, str]] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _OnlineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                reply = manager_rpc(
                    self.certs, self.port, "admin", "list_nodes", admin_pb.ListNodesRequest()
                )
            except Exception:
                continue
            self.polls += 1
            for node in reply.nodes:
                if node.node_id in self.watched and node.status != "online":
                    self.not_online.append((time.time(), node.node_id, node.status))


def _sent_to(daemon: DaemonProc, manager: ManagerProc) -> int:
    """Metric reports ``manager`` acknowledged to ``daemon``."""
    return sum(1 for m in _SENT.finditer(daemon.output()) if m.group(2) == manager.address)


def _reached(daemon: DaemonProc, manager: ManagerProc, count: int) -> bool:
    return _sent_to(daemon, manager) >= count


def _drained(http_port: int) -> bool:
    return scrape_metrics(http_port)["fleet_daemon_outbox_reports"] == 0


def _holder(managers: list[ManagerProc]) -> ManagerProc:
    def held() -> list[ManagerProc]:
        return [
            m
            for m in managers
            if metric_value(
                http_get(f"{m.http_url}/metrics")[1], "fleet_manager_lease_held", lease="duties"
            )
            == 1
        ]

    (holder,) = wait_until(lambda: held() if len(held()) == 1 else None, what="one lease holder")
    return holder


def _node_status(certs: Path, port: int, node_id: str) -> str:
    reply = manager_rpc(certs, port, "admin", "get_node", admin_pb.GetNodeRequest(node_id=node_id))
    return str(reply.node.status)


def _check_acknowledged_reports_stored(db_url: str, daemon: DaemonProc) -> int:
    log = daemon.log_path.read_text()
    queued = {int(m.group(1)): int(m.group(3)) for m in _QUEUED.finditer(log)}
    acknowledged = {int(m.group(1)) for m in _SENT.finditer(log)}
    assert acknowledged and acknowledged <= set(queued)
    rows = _sql(
        db_url,
        "SELECT DISTINCT timestamp FROM fleet_metric_sample WHERE node_id = $1",
        daemon.node_id,
    )
    stored = {int(r["timestamp"]) for r in rows}
    lost = sorted(seq for seq in acknowledged if queued[seq] not in stored)
    assert not lost, f"{daemon.node_id}: acknowledged but not stored: {lost}"
    return len(acknowledged)


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_the_lease_holder_while_daemons_report(
    tmp_path: Path, certs: Path, pg_url: str
) -> None:
    cfg = write_manager_config(
        tmp_path / "manager.toml",
        {"heartbeats": {"flush_interval": 0.2}, "liveness": {"sweep_interval": 0.2}},
    )
    args = ["--config", str(cfg)]
    first = start_manager(tmp_path / "one", certs, db_url=pg_url, grace=GRACE, extra_args=args)
    second = start_manager(tmp_path / "two", certs, db_url=pg_url, grace=GRACE, extra_args=args)
    managers = [first, second]
    holder = _holder(managers)
    survivor = second if holder is first else first
    assert _ACQUIRED in holder.output() and _ACQUIRED not in survivor.output()
    daemons: dict[str, DaemonProc] = {}
    http_ports: dict[str, int] = {}
    try:
        for node_id in NODES:
            # node-a and node-b start at the lease holder (and must fail over), node-c at
            # the survivor.
            addresses = [survivor.address, survivor.address]
            addresses[start_index(node_id, 2)] = (
                survivor.address if node_id == "node-c" else holder.address
            )
            addresses[1 - start_index(node_id, 2)] = (
                holder.address if node_id == "node-c" else survivor.address
            )
            http_ports[node_id] = free_port()
            daemons[node_id] = start_daemon(
                tmp_path,
                certs,
                node_id=node_id,
                manager_port=0,
                manager_addresses=addresses,
                heartbeat_interval=HEARTBEAT,
                metrics_interval=0.5,
                config={
                    "http": {"listen": f"127.0.0.1:{http_ports[node_id]}"},
                    "log": {"level": "debug"},
                },
            )

        def all_online() -> bool:
            return all(_node_status(certs, survivor.grpc_port, n) == "online" for n in NODES)

        wait_until(all_online, timeout=30, what="every node online")
        with _OnlineWatch(certs, survivor.grpc_port, set(NODES)) as watch:
            # Reports flowing to both Managers.
            wait_until(
                lambda: all(
                    _sent_to(d, holder if n != "node-c" else survivor) >= 2
                    for n, d in daemons.items()
                ),
                timeout=30,
                what="every Daemon reporting to its first Manager",
            )
            holder.kill()  # SIGKILL: no goodbye to the database or the Daemons
            killed_at = time.monotonic()
            # The duties move: the survivor takes the lease at its next try.
            wait_until(
                lambda: _ACQUIRED in survivor.output(), timeout=GRACE, what="survivor takes lease"
            )
            took_over = time.monotonic() - killed_at
            assert _holder([survivor]) is survivor
            # Load goes on through the survivor; each Daemon's queue drains into it.
            for node_id, daemon in daemons.items():
                sent = _sent_to(daemon, survivor)
                wait_until(
                    partial(_reached, daemon, survivor, sent + 3),
                    timeout=30,
                    what=f"{node_id} reporting to the survivor after the kill",
                )
            for node_id, port in http_ports.items():
                wait_until(
                    partial(_drained, port),
                    timeout=30,
                    what=f"{node_id}'s queue drained",
                )
            # fleetctl is given both Managers, the dead one first: it moves on.
            env = {
                "FLEET_MANAGER": f"{holder.address},{survivor.address}",
                "FLEET_CA": str(certs / "ca.crt"),
                "FLEET_CERT": str(certs / "admin.crt"),
                "FLEET_KEY": str(certs / "admin.key"),
                "FLEET_CONFIG": "",
            }
            listed = run_cli([console_script("fleetctl"), "nodes", "list"], env=env)
            assert listed.returncode == 0, listed.stderr
            assert all(n in listed.stdout for n in NODES), listed.stdout
            # No node went offline through the kill, a grace after the survivor took over.
            wait_until(
                lambda: time.monotonic() - killed_at > took_over + GRACE + 1,
                timeout=GRACE + 10,
                what="a whole grace after the takeover",
            )
            assert watch.polls > 10 and watch.not_online == [], watch.not_online
            # The survivor runs the liveness sweep now: a Daemon killed is marked offline
            # within its grace (only the lease holder sweeps; the other Manager is dead).
            victim = daemons["node-c"]
            watch.watched.discard("node-c")
            victim.kill()
            daemon_killed = time.monotonic()
            wait_until(
                lambda: _node_status(certs, survivor.grpc_port, "node-c") == "offline",
                timeout=GRACE + 10,
                what="node-c offline",
            )
            offline_after = time.monotonic() - daemon_killed
            assert offline_after < GRACE + 3, offline_after
            # The killed Manager comes back on its port: it serves, does not take the
            # lease from the survivor, and the fleet does not notice.
            restarted = start_manager(
                holder.data_dir.parent,
                certs,
                db_url=pg_url,
                grace=GRACE,
                extra_args=args,
                grpc_port=holder.grpc_port,
                log_name="manager-restarted.log",
            )
            managers.append(restarted)
            assert _node_status(certs, restarted.grpc_port, "node-a") == "online"
            for _ in range(3):  # it keeps trying, and keeps not getting it
                assert _holder([survivor, restarted]) is survivor
                time.sleep(1.0)
            assert _ACQUIRED not in restarted.output()
            assert watch.not_online == [], watch.not_online
        for node_id in ("node-a", "node-b"):
            assert _node_status(certs, restarted.grpc_port, node_id) == "online"
        for node_id in ("node-a", "node-b"):
            assert daemons[node_id].stop() == 0
        counts = {n: _check_acknowledged_reports_stored(pg_url, d) for n, d in daemons.items()}
        offline = _sql(
            pg_url,
            "SELECT node_id, reason FROM fleet_node_event WHERE new_status = 'offline'",
        )
        assert [r["node_id"] for r in offline] == ["node-c"], offline
        print(
            f"lease taken over {took_over:.1f} s after the kill; node-c offline "
            f"{offline_after:.1f} s after its Daemon died (grace {GRACE:g} s); {counts}",
            file=sys.stderr,
        )
    finally:
        for daemon in daemons.values():
            daemon.kill()
        for mgr in managers:
            if mgr.alive():
                mgr.stop()
