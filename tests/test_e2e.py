"""The walking skeleton end to end: real ``fleet-manager``, ``fleet-daemon`` and ``fleetctl``
processes on free 127.0.0.1 ports with fresh certificates."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import console_script, free_port, run_cli, wait_until
from harness.daemon import start_daemon
from harness.manager import start_manager


def _env(certs: Path, port: int) -> dict[str, str]:
    return {
        "FLEET_MANAGER": f"127.0.0.1:{port}",
        "FLEET_CA": str(certs / "ca.crt"),
        "FLEET_CERT": str(certs / "admin.crt"),
        "FLEET_KEY": str(certs / "admin.key"),
        "NO_COLOR": "1",
    }


def _nodes(certs: Path, port: int) -> dict[str, dict[str, Any]]:
    result = run_cli(
        [console_script("fleetctl"), "nodes", "list", "-o", "json"], env=_env(certs, port)
    )
    assert result.returncode == 0, result.stderr
    return {node["node_id"]: node for node in json.loads(result.stdout)}


def test_daemon_registers_and_is_listed_online(certs: Path, tmp_path: Path) -> None:
    manager = start_manager(tmp_path, certs)
    daemon = start_daemon(tmp_path, certs, node_id="node-a", manager_port=manager.grpc_port)
    try:
        node = wait_until(
            lambda: (
                _nodes(certs, manager.grpc_port).get("node-a", {}).get("status") == "online"
                and _nodes(certs, manager.grpc_port)["node-a"]
            ),
            timeout=20,
            what="node-a online in fleetctl nodes list",
        )
        # Real host facts from the Daemon, not placeholders.
        assert node["hostname"] == socket.gethostname()
        assert node["os"] and node["arch"] and node["ip"]
        assert node["daemon_address"] == daemon.address

        table = run_cli(
            [console_script("fleetctl"), "nodes", "list"], env=_env(certs, manager.grpc_port)
        )
        assert table.returncode == 0 and "node-a" in table.stdout and "online" in table.stdout
    finally:
        daemon.stop()
        manager.stop()


def test_daemon_outlives_a_manager_outage(certs: Path, tmp_path: Path) -> None:
    """Manager down at Daemon start and again later: the Daemon retries, then comes back online."""
    port = free_port()
    daemon = start_daemon(tmp_path, certs, node_id="node-b", manager_port=port)
    manager = None
    try:
        assert daemon.alive()
        manager = start_manager(tmp_path, certs, grpc_port=port)
        wait_until(
            lambda: _nodes(certs, port).get("node-b", {}).get("status") == "online",
            timeout=30,
            what="node-b online after the Manager came up",
        )
        manager.stop()
        assert daemon.alive()
        restarted_at = datetime.now(UTC).replace(microsecond=0)
        manager = start_manager(tmp_path, certs, grpc_port=port, log_name="manager-2.log")

        def heartbeat_after_restart() -> bool:
            last = _nodes(certs, port)["node-b"]["last_heartbeat"]
            return bool(last) and datetime.fromisoformat(last) >= restarted_at

        wait_until(heartbeat_after_restart, timeout=30, what="node-b heartbeating again")
        assert _nodes(certs, port)["node-b"]["status"] == "online"
    finally:
        daemon.stop()
        if manager is not None:
            manager.stop()


def test_unreachable_manager_is_one_line_exit_5(certs: Path) -> None:
    result = run_cli(
        [console_script("fleetctl"), "nodes", "list"], env=_env(certs, free_port()), timeout=30
    )
    assert result.returncode == 5
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot reach manager" in result.stderr
