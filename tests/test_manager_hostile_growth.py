"""Issue 11 item 10: valid input must not grow the Manager's database without bound.

Against a real Manager on SQLite:

* a node reporting metrics as fast as it is answered is held to its quota (samples per
  node per window): past it, ``RESOURCE_EXHAUSTED`` with a retry hint; it is visibly
  *throttled* (a node event at both ends, a log line, /metrics); another node is not
  affected; the rows stored stay within the quota;
* a node re-registering with a fresh instance id each time writes at most its event
  quota of node events; the next event written says how many were left out;
* node events older than ``events.retention`` are deleted, in batches, the young ones
  kept.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import wait_until
from harness.manager import (
    ManagerProc,
    admin_channel,
    http_get,
    metric_value,
    node_channel,
    start_manager,
    write_manager_config,
)

from schema import admin_pb, manager_pb


def _db(mgr: ManagerProc) -> sqlite3.Connection:
    return sqlite3.connect(mgr.db_url.split("://", 1)[1], timeout=10)


def _count(mgr: ManagerProc, sql: str, *params: object) -> int:
    with _db(mgr) as db:
        return int(db.execute(sql, params).fetchone()[0])


async def _register(certs: Path, port: int, node_id: str, instance: str = "i-1") -> None:
    channel = node_channel(certs, port, node_id)
    try:
        await manager_pb.ManagerServiceStub(channel, timeout=15).register_node(
            manager_pb.RegisterNodeRequest(
                node_id=node_id, daemon_address="127.0.0.1:1", instance_id=instance
            )
        )
    finally:
        channel.close()


async def _events(certs: Path, port: int, node_id: str) -> list[str]:
    channel = admin_channel(certs, port)
    try:
        reply = await admin_pb.AdminServiceStub(channel, timeout=15).get_node(
            admin_pb.GetNodeRequest(node_id=node_id)
        )
        return [e.reason for e in reply.events]
    finally:
        channel.close()


def _report(node_id: str, base: int, samples: int) -> manager_pb.ReportMetricsRequest:
    return manager_pb.ReportMetricsRequest(
        node_id=node_id,
        metrics=[
            manager_pb.MetricData(type="load", timestamp=base + i, values={"v": float(i)})
            for i in range(samples)
        ],
    )


@pytest.mark.slow
def test_metric_flood_is_held_to_the_node_quota(tmp_path: Path, certs: Path) -> None:
    quota, window = 2000, 100.0  # 20 samples/s once the burst is spent
    cfg = write_manager_config(
        tmp_path / "m.toml", {"metrics": {"node_quota": quota, "node_quota_window": window}}
    )
    mgr = start_manager(tmp_path, certs, extra_args=["--config", str(cfg)])
    try:
        port = mgr.grpc_port

        async def scenario() -> tuple[int, int, float, str]:
            for node_id in ("node-a", "node-b"):
                await _register(certs, port, node_id)
            channel = node_channel(certs, port, "node-a")
            stub = manager_pb.ManagerServiceStub(channel, timeout=15)
            accepted = refused = 0
            refusal = ""
            base = int(time.time()) - 50_000
            flood_until = time.monotonic() + 5.0
            try:
                # As fast as answered, 500 samples a report, for 5 s.
                while time.monotonic() < flood_until:
                    try:
                        reply = await stub.report_metrics(_report("node-a", base, 500))
                        accepted += reply.accepted
                        base += 500  # stored: the next report is new samples
                    except GRPCError as exc:
                        assert exc.status == Status.RESOURCE_EXHAUSTED, exc
                        refused += 1
                        refusal = exc.message or ""
                flood = time.monotonic() - flood_until + 5.0
                # Another node has its own quota.
                other = node_channel(certs, port, "node-b")
                try:
                    reply = await manager_pb.ManagerServiceStub(other, timeout=15).report_metrics(
                        _report("node-b", base, 500)
                    )
                    assert reply.accepted == 500
                finally:
                    other.close()
                events = await _events(certs, port, "node-a")
                assert events[0].startswith("metrics throttled: over its quota of 2000"), events
                # The hint is honest: a small report fits once that many seconds passed.
                hint = re.search(r"retry in (\d+) s", refusal)
                assert hint is not None, refusal
                wait = int(hint.group(1))
                assert 1 <= wait <= 30, refusal
                await asyncio.sleep(min(wait, 60 / 20 + 1))  # 60 samples' worth at least
                reply = await stub.report_metrics(_report("node-a", base, 50))
                assert reply.accepted == 50
                events = await _events(certs, port, "node-a")
                assert re.match(
                    r"metrics no longer throttled \(\d+ report\(s\) refused meanwhile\)",
                    events[0],
                ), events
                return accepted, refused, flood, refusal
            finally:
                channel.close()

        accepted, refused, flood, refusal = asyncio.run(scenario())
        # The burst, plus what the quota refilled during the flood (and a little slack).
        assert quota <= accepted <= quota + (flood + 2) * quota / window, accepted
        assert refused > 0
        assert "node node-a is over its metrics quota (2000 samples per 1m40s)" in refusal
        stored = _count(mgr, "SELECT COUNT(*) FROM fleet_metric_sample WHERE node_id = 'node-a'")
        assert stored == accepted + 50
        text = http_get(f"{mgr.http_url}/metrics")[1]
        assert metric_value(text, "fleet_manager_quota_refusals_total", quota="metrics") == refused
        assert "node node-a: metrics throttled" in mgr.output()
        print(
            f"\nmetric flood {flood:.1f} s: {accepted} samples stored, {refused} reports "
            f"refused; e.g. {refusal!r}"
        )
    finally:
        mgr.stop()


@pytest.mark.slow
def test_reregistration_flood_is_held_to_the_event_quota(tmp_path: Path, certs: Path) -> None:
    cfg = write_manager_config(
        tmp_path / "m.toml", {"events": {"node_quota": 5, "node_quota_window": 10}}
    )
    mgr = start_manager(tmp_path, certs, extra_args=["--config", str(cfg)])
    try:
        port = mgr.grpc_port
        flood = 300

        async def scenario() -> float:
            started = time.monotonic()
            for i in range(flood):  # each a new Daemon instance: each one an event
                await _register(certs, port, "node-a", instance=f"i-{i}")
            took = time.monotonic() - started
            rows = _count(mgr, "SELECT COUNT(*) FROM fleet_node_event WHERE node_id='node-a'")
            # 5 per 10 s, refilled at 0.5 a second while the flood ran.
            assert rows <= 5 + took * 0.5 + 1, (rows, took)
            # The quota refills; the next event written says what was left out.
            await asyncio.sleep(2.5)
            await _register(certs, port, "node-a", instance="i-last")
            newest = (await _events(certs, port, "node-a"))[0]
            assert newest.startswith(f"daemon instance i-last replaced i-{flood - 1} ("), newest
            assert "earlier event(s) not recorded: over the node event quota of 5 per 10s" in (
                newest
            )
            return took

        took = asyncio.run(scenario())
        rows = _count(mgr, "SELECT COUNT(*) FROM fleet_node_event WHERE node_id = 'node-a'")
        text = http_get(f"{mgr.http_url}/metrics")[1]
        dropped = metric_value(text, "fleet_manager_quota_refusals_total", quota="events")
        assert dropped is not None and dropped + rows == flood + 1
        assert "node node-a: over its event quota (5 per 10s)" in mgr.output()
        print(f"\n{flood + 1} registrations with new instance ids in {took:.1f} s: {rows} events")
    finally:
        mgr.stop()


def test_old_node_events_are_deleted_in_batches(tmp_path: Path, certs: Path) -> None:
    old = 12_000
    cfg = write_manager_config(
        tmp_path / "m.toml",
        {"metrics": {"retention_interval": 0.5, "retention_batch": 5000}},
    )
    mgr = start_manager(tmp_path, certs, extra_args=["--config", str(cfg)])
    try:
        now = time.time()
        with _db(mgr) as db:  # history written by an earlier life of this Manager
            db.executemany(
                "INSERT INTO fleet_node_event (node_id, timestamp, old_status, new_status, "
                "reason) VALUES (?, ?, 'online', 'offline', 'old')",
                [(f"n{i % 50}", now - 40 * 86400 + i) for i in range(old)],
            )
            db.executemany(
                "INSERT INTO fleet_node_event (node_id, timestamp, old_status, new_status, "
                "reason) VALUES (?, ?, 'offline', 'online', 'young')",
                [(f"n{i}", now - 86400 + i) for i in range(10)],
            )
        wait_until(
            lambda: _count(mgr, "SELECT COUNT(*) FROM fleet_node_event WHERE reason='old'") == 0,
            timeout=30,
            what="old events deleted",
        )
        assert _count(mgr, "SELECT COUNT(*) FROM fleet_node_event WHERE reason='young'") == 10
        text = http_get(f"{mgr.http_url}/metrics")[1]
        assert metric_value(text, "fleet_manager_node_events_deleted_total") == old
        assert "node events older than" in mgr.output()
    finally:
        mgr.stop()
