"""``fleetctl nodes remove`` against a real Manager."""

from __future__ import annotations

import json
from pathlib import Path

from harness import console_script, run_cli
from harness.manager import manager_rpc, start_manager

from schema import manager_pb


def test_remove_refuses_online_node_then_forces_and_forgets(certs: Path, tmp_path: Path) -> None:
    manager = start_manager(tmp_path, certs)
    env = {
        "FLEET_MANAGER": manager.address,
        "FLEET_CA": str(certs / "ca.crt"),
        "FLEET_CERT": str(certs / "admin.crt"),
        "FLEET_KEY": str(certs / "admin.key"),
        "NO_COLOR": "1",
    }
    fleetctl = console_script("fleetctl")
    try:
        manager_rpc(
            certs,
            manager.grpc_port,
            "node-c",
            "register_node",
            manager_pb.RegisterNodeRequest(node_id="node-c", daemon_address="127.0.0.1:1"),
        )
        refused = run_cli([fleetctl, "nodes", "remove", "node-c"], env=env)
        assert refused.returncode == 1, refused
        assert "is online" in refused.stderr and "Traceback" not in refused.stderr

        forced = run_cli([fleetctl, "nodes", "remove", "node-c", "--force", "-o", "json"], env=env)
        assert forced.returncode == 0, forced.stderr
        assert json.loads(forced.stdout) == {
            "node_id": "node-c",
            "removed": True,
            "message": "node node-c removed",
            "certificates_revoked": True,
        }
        listed = run_cli([fleetctl, "nodes", "list", "-o", "json"], env=env)
        assert json.loads(listed.stdout) == []

        again = run_cli([fleetctl, "nodes", "remove", "node-c"], env=env)
        assert again.returncode == 3, again
        assert "node-c" in again.stderr
    finally:
        manager.stop()
