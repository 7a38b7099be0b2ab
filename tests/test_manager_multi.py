"""Two Managers sharing one PostgreSQL database: nothing only one process could hold.

(One Manager per SQLite file: a second one is refused, see test_manager_replicas.py.)"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import wait_until
from harness.manager import (
    manager_rpc,
    start_manager,
    write_manager_config,
)

from schema import admin_pb, manager_pb


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
def test_two_managers_share_one_database(tmp_path: Path, certs: Path, db_url: str) -> None:
    cfg = write_manager_config(
        tmp_path / "m.toml",
        {"liveness": {"sweep_interval": 0.2}, "heartbeats": {"flush_interval": 0.2}},
    )
    args = ["--config", str(cfg)]
    one = start_manager(tmp_path / "one", certs, db_url=db_url, grace=1.5, extra_args=args)
    two = start_manager(tmp_path / "two", certs, db_url=db_url, grace=1.5, extra_args=args)
    try:

        def beat(port: int) -> object:
            return manager_rpc(
                certs,
                port,
                "node-a",
                "heartbeat",
                manager_pb.HeartbeatRequest(node_id="node-a", timestamp=int(time.time())),
            )

        # Registered through one, heartbeating through the other.
        manager_rpc(
            certs,
            one.grpc_port,
            "node-a",
            "register_node",
            manager_pb.RegisterNodeRequest(node_id="node-a", daemon_address="127.0.0.1:1"),
        )
        assert beat(two.grpc_port).success  # type: ignore[attr-defined]

        # The duties lease holder sweeps: the node going offline is recorded exactly once.
        def status(port: int) -> str:
            reply = manager_rpc(
                certs, port, "admin", "get_node", admin_pb.GetNodeRequest(node_id="node-a")
            )
            return reply.node.status

        wait_until(lambda: status(one.grpc_port) == "offline", timeout=10, what="offline")
        assert beat(two.grpc_port).success  # type: ignore[attr-defined]

        def reasons_seen_by_one() -> list[str]:
            events = manager_rpc(
                certs, one.grpc_port, "admin", "get_node", admin_pb.GetNodeRequest(node_id="node-a")
            ).events
            return [e.reason for e in events]

        # Buffered acknowledgement: the resumption is written by two's next flush.
        wait_until(
            lambda: reasons_seen_by_one()[0] == "heartbeat resumed", timeout=5, what="resumed"
        )
        reasons = reasons_seen_by_one()
        assert sum(r.startswith("no heartbeat for") for r in reasons) == 1, reasons

        # Removed through one: two hears of it (the change feed) and refuses the node's
        # next heartbeat: its certificate is revoked (or, without one, NOT_FOUND).
        manager_rpc(
            certs,
            one.grpc_port,
            "admin",
            "remove_node",
            admin_pb.RemoveNodeRequest(node_id="node-a", force=True),
        )

        def refused_by_two() -> bool:
            try:
                beat(two.grpc_port)  # may still be accepted once (cached), not stored
            except GRPCError as exc:
                return exc.status in (Status.NOT_FOUND, Status.UNAUTHENTICATED)
            return False

        wait_until(refused_by_two, timeout=10, what="NOT_FOUND from the second Manager")
    finally:
        assert one.stop() == 0
        assert two.stop() == 0
