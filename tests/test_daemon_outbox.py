"""Store-and-forward of host metrics: a bounded on-disk queue replayed oldest-first when
the Manager returns, with drops counted (logged and on /metrics)."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness import free_port, wait_until
from harness.daemon import start_daemon
from harness.manager import admin_channel, start_manager

from daemon.outbox import Outbox
from schema import admin_pb


def test_outbox_is_fifo_bounded_and_persistent(tmp_path: Path) -> None:
    box = Outbox(directory=tmp_path / "outbox", max_reports=3)
    for i in range(5):
        box.put(f"report-{i}".encode())
    assert len(box) == 3 and box.dropped == 2
    # A new instance (a restarted Daemon) sees the same queue and drop count.
    box = Outbox(directory=tmp_path / "outbox", max_reports=3)
    assert len(box) == 3 and box.dropped == 2
    seen = []
    while (item := box.peek()) is not None:
        seq, payload = item
        seen.append(payload.decode())
        box.remove(seq)
    assert seen == ["report-2", "report-3", "report-4"]
    box.put(b"later")
    assert box.peek()[1] == b"later"  # type: ignore[index]
    # Lowering the bound on restart trims the oldest reports.
    for i in range(3):
        box.put(f"x{i}".encode())
    box = Outbox(directory=tmp_path / "outbox", max_reports=2)
    assert len(box) == 2 and box.dropped == 4


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _node_metrics(certs: Path, port: int, node_id: str) -> list[Any]:
    async def go() -> list[Any]:
        channel = admin_channel(certs, port)
        try:
            reply = await admin_pb.AdminServiceStub(channel).query_node_metrics(
                admin_pb.QueryNodeMetricsRequest(
                    node_id=node_id, type="cpu", since_seconds=3600, limit=1000
                ),
                timeout=5,
            )
        finally:
            channel.close()
        return list(reply.metrics)

    return asyncio.run(go())


def test_overflow_drops_oldest_and_counts(tmp_path: Path, certs: Path) -> None:
    http_port = free_port()
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-c",
        manager_port=free_port(),
        metrics_interval=0.2,
        config={"outbox": {"max_reports": 3}, "http": {"listen": f"127.0.0.1:{http_port}"}},
    )
    try:
        scraped = wait_until(
            lambda: (m := _scrape(http_port)) and m["fleet_daemon_outbox_dropped_total"] >= 2 and m,
            timeout=20,
            what="outbox overflowing while the Manager is down",
        )
        assert scraped["fleet_daemon_outbox_reports"] == 3
        assert scraped["fleet_daemon_manager_connected"] == 0
        assert "metrics outbox full" in daemon.output()
        queued = sorted((daemon.state_dir / "outbox").glob("*.pb"))
        assert len(queued) == 3
        assert int(queued[0].stem) > 1  # the oldest were dropped
    finally:
        daemon.stop()


def test_reports_queued_while_manager_down_arrive_in_order(tmp_path: Path, certs: Path) -> None:
    manager_port, http_port = free_port(), free_port()
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-c",
        manager_port=manager_port,
        metrics_interval=0.3,
        config={
            "outbox": {"max_reports": 1000},
            "http": {"listen": f"127.0.0.1:{http_port}"},
            "log": {"level": "debug"},
        },
    )
    try:
        wait_until(
            lambda: _scrape(http_port)["fleet_daemon_outbox_reports"] >= 5,
            timeout=20,
            what="reports queued while the Manager is down",
        )
        down_until = time.time()
        mgr = start_manager(tmp_path, certs, grpc_port=manager_port)
        try:
            wait_until(
                lambda: (
                    (m := _scrape(http_port))["fleet_daemon_manager_connected"] == 1
                    and m["fleet_daemon_outbox_reports"] <= 1
                ),
                timeout=20,
                what="queue drained after reconnecting",
            )
            stored = wait_until(
                lambda: (m := _node_metrics(certs, manager_port, "node-c")) and len(m) >= 5 and m,
                timeout=20,
                what="queued reports stored by the Manager",
            )
            # Samples taken during the outage made it to the Manager...
            assert min(m.timestamp for m in stored) <= down_until
            # ...sent oldest first: the send log's sequence numbers start at 1 and ascend.
            sent = [int(x) for x in re.findall(r"sent metrics report (\d+)", daemon.output())]
            assert sent[:5] == [1, 2, 3, 4, 5]
            assert sent == sorted(sent)
            assert _scrape(http_port)["fleet_daemon_outbox_dropped_total"] == 0
        finally:
            mgr.stop()
    finally:
        daemon.stop()
