"""Regression guard for the fleet benchmark: a small fleet against a real Manager.

500 simulated Daemons (each its own node certificate and mTLS connection) register,
heartbeat every 5 s, report metrics and sync agents against a real ``fleet-manager`` on
SQLite for ~25 s. The guard fails when any RPC errors, when a node fails to register, or
when the acknowledged heartbeat rate falls below half the theoretical rate: the
signature of a Manager that stopped keeping up. The full-size figures are in
docs/performance.md (``python -m bench.fleet_load``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from harness import REPO
from harness.manager import start_manager

if str(REPO) not in sys.path:  # bench/ is a directory of scripts, not an installed package
    sys.path.insert(0, str(REPO))

from bench._common import ensure_node_certs
from bench.fleetsim import SimConfig, print_report, run, steady

pytestmark = pytest.mark.slow

NODES = 500
HEARTBEAT = 5.0


def test_small_fleet_keeps_up(tmp_path: Path, certs: Path) -> None:
    names = [f"guard-{i:05d}" for i in range(NODES)]
    cert_dir = ensure_node_certs(certs, names, cache_dir=tmp_path / "node-certs")
    manager = start_manager(tmp_path, certs, db_url=f"sqlite://{tmp_path / 'fleet.db'}")
    try:
        config = SimConfig(
            address=manager.address,
            cert_dir=cert_dir,
            nodes=NODES,
            ramp=5.0,
            duration=25.0,
            heartbeat_interval=HEARTBEAT,
            metrics_interval=15.0,
            agents_interval=15.0,
            prefix="guard",
        )
        report = run(config, manager_pid=manager.pid)
    finally:
        manager.stop()
    print_report(report)
    heartbeats = steady(report, "Heartbeat")
    expected = NODES / HEARTBEAT
    achieved = heartbeats["ok"] / report["steady_seconds"]
    errors = {rpc: e[phase]["errors"] for rpc, e in report["rpcs"].items()
              for phase in ("ramp", "steady") if e[phase]["errors"]}  # fmt: skip
    assert not errors, f"RPC errors: {errors}; samples: {report['error_samples'][:5]}"
    assert report["registered"] == NODES
    assert achieved >= 0.5 * expected, (
        f"heartbeats acknowledged at {achieved:.0f}/s, expected ~{expected:.0f}/s"
    )
    assert steady(report, "ReportMetrics")["ok"] > 0
