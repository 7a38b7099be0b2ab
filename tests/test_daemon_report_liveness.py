"""Fewer heartbeats (issue 14 item 4): a real Daemon whose reports the Manager counts as
liveness skips heartbeats (one real heartbeat every 1 + ``manager.heartbeat_max_skip``
intervals) and stays online; once its reports are refused (over the metrics quota) it
heartbeats every interval again. Counted with the Manager's /metrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from harness import wait_until
from harness.daemon import start_daemon
from harness.manager import (
    ManagerProc,
    admin_channel,
    http_get,
    metric_value,
    start_manager,
    write_manager_config,
)

from daemon.config import ConfigError, from_mapping
from schema import admin_pb

TLS = {"cert_file": "/c.crt", "key_file": "/c.key", "ca_file": "/ca.crt"}


def _scrape(mgr: ManagerProc, name: str, **labels: str) -> float:
    return metric_value(http_get(f"{mgr.http_url}/metrics")[1], name, **labels) or 0.0


def _node(certs: Path, port: int, node_id: str) -> admin_pb.GetNodeResponse:
    async def go() -> admin_pb.GetNodeResponse:
        channel = admin_channel(certs, port)
        try:
            stub = admin_pb.AdminServiceStub(channel, timeout=10)
            return await stub.get_node(admin_pb.GetNodeRequest(node_id=node_id))
        finally:
            channel.close()

    return asyncio.run(go())


def _heartbeats_over(mgr: ManagerProc, seconds: float) -> tuple[float, float]:
    """(Heartbeat calls the Manager served, seconds measured) over about ``seconds``."""
    before, started = _scrape(mgr, "fleet_manager_rpc_total", method="Heartbeat"), time.monotonic()
    time.sleep(seconds)  # a measuring window, not a wait for a condition
    after = _scrape(mgr, "fleet_manager_rpc_total", method="Heartbeat")
    return after - before, time.monotonic() - started


@pytest.mark.slow
def test_reports_replace_heartbeats_until_they_are_refused(tmp_path: Path, certs: Path) -> None:
    # 4 samples per report: the first 50 reports fit the quota, then every one is refused.
    cfg = write_manager_config(
        tmp_path / "m.toml",
        {
            "liveness": {"sweep_interval": 0.2},
            "heartbeats": {"flush_interval": 0.2},
            "metrics": {"max_samples_per_report": 10, "node_quota": 200},
        },
    )
    mgr = start_manager(tmp_path, certs, extra_args=["--config", str(cfg)])
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=mgr.grpc_port,
        heartbeat_interval=1.0,  # grace: 3 s (the default grace_factor)
        metrics_interval=0.25,
        config={"manager": {"sync_interval": 600.0}},  # reports are the only other signal
    )
    try:
        wait_until(
            lambda: _node(certs, mgr.grpc_port, "node-a").node.status == "online",
            timeout=20,
            what="node-a online",
        )
        wait_until(
            lambda: _scrape(mgr, "fleet_manager_liveness_by_report_total", method="ReportMetrics"),
            timeout=20,
            what="a report counted as liveness",
        )
        # Reports counted: one real heartbeat every 3 intervals (heartbeat_max_skip = 2)
        # where a seed Daemon sends one every interval.
        beats, window = _heartbeats_over(mgr, 6.0)
        assert 1 <= beats <= window / 2, (beats, window)
        assert _node(certs, mgr.grpc_port, "node-a").node.status == "online"

        # Over the quota: reports are refused, count for nothing, and the heartbeats
        # come every interval again.
        wait_until(
            lambda: _scrape(mgr, "fleet_manager_quota_refusals_total", quota="metrics"),
            timeout=60,
            what="reports refused over the quota",
        )
        beats, window = _heartbeats_over(mgr, 5.0)
        assert beats >= window * 0.6, (beats, window)
        got = _node(certs, mgr.grpc_port, "node-a")
        assert got.node.status == "online"
        assert [e for e in got.events if e.new_status == "offline"] == []
    finally:
        daemon.stop()
        assert mgr.stop() == 0


@pytest.mark.parametrize("value", [-1, 11, "2", 1.5, True])
def test_heartbeat_max_skip_is_validated(value: object) -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping({"node_id": "n1", "manager": {"tls": TLS, "heartbeat_max_skip": value}})
    assert "manager.heartbeat_max_skip" in str(err.value)


def test_heartbeat_max_skip_default_and_zero() -> None:
    base = {"node_id": "n1", "manager": {"tls": TLS}}
    assert from_mapping(base).manager.heartbeat_max_skip == 2
    zero = {"node_id": "n1", "manager": {"tls": TLS, "heartbeat_max_skip": 0}}
    assert from_mapping(zero).manager.heartbeat_max_skip == 0
