"""The shapes fleetctl prints: JSON objects (stable, documented in docs/fleetctl.md) and
table rows, built from the wire messages.

JSON rules: timestamps are ISO 8601 UTC strings (null when unset), sizes and counters
exact integers, keys always present (null when unknown), in a fixed order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .render import Cell, age, ago, human_size, iso, labels_text, status_cell


def node_json(n: Any) -> dict[str, Any]:
    return {
        "node_id": n.node_id,
        "hostname": n.hostname,
        "ip": n.ip,
        "os": n.os,
        "arch": n.arch,
        "status": n.status,
        "status_since": iso(n.status_since),
        "last_heartbeat": iso(n.last_heartbeat),
        "heartbeat_interval_seconds": n.heartbeat_interval_seconds,
        "labels": dict(sorted(n.labels.items())),
        "agent_count": n.agent_count,
        "daemon_version": n.daemon_version,
        "agent_version": n.agent_version,
        "daemon_address": n.daemon_address,
        "registered_at": iso(n.registered_at),
        "updated_at": iso(n.updated_at),
    }


NODE_HEADERS = ["NODE", "HOSTNAME", "IP", "OS/ARCH", "STATUS", "LAST HEARTBEAT", "LABELS"]
NODE_WIDE_HEADERS = [
    *NODE_HEADERS,
    "SINCE",
    "AGENTS",
    "DAEMON",
    "ADDRESS",
    "REGISTERED",
]


def node_row(n: Any, *, wide: bool = False) -> list[Cell]:
    row: list[Cell] = [
        n.node_id,
        n.hostname or "-",
        n.ip or "-",
        f"{n.os or '?'}/{n.arch or '?'}",
        status_cell(n.status),
        ago(n.last_heartbeat),
        labels_text(n.labels),
    ]
    if wide:
        row += [
            age(n.status_since),
            str(n.agent_count),
            n.daemon_version or "-",
            n.daemon_address or "-",
            ago(n.registered_at),
        ]
    return row


def agent_json(a: Any, *, node_id: str | None = None) -> dict[str, Any]:
    """An admin ``Agent`` or a daemon ``AgentInfo`` (``--daemon``) in one shape."""
    return {
        "node_id": getattr(a, "node_id", None) or node_id or None,
        "id": a.id,
        "type": a.type,
        "status": a.status,
        "status_reason": a.status_reason or None,
        "pid": a.pid or None,
        "version": a.version or None,
        "start_time": iso(a.start_time),
        "restart_count": a.restart_count,
        "last_heartbeat": iso(a.last_heartbeat),
        "config_hash": a.config_hash or None,
        "last_exit_code": getattr(a, "last_exit_code", None),
        "updated_at": iso(getattr(a, "updated_at", 0)),
        "node_status": getattr(a, "node_status", "") or None,
        # The central spec it comes from ("" and 0: the Daemon's own daemon.toml).
        "spec": a.spec,
        "spec_revision": a.spec_revision,
    }


AGENT_HEADERS = [
    "NODE",
    "AGENT",
    "TYPE",
    "STATUS",
    "PID",
    "RESTARTS",
    "UPTIME",
    "HEARTBEAT",
    "SPEC",
]
AGENT_WIDE_HEADERS = [*AGENT_HEADERS, "VERSION", "CONFIG", "REASON"]
AGENT_RIGHT = ("PID", "RESTARTS")


def agent_row(a: Any, *, node_id: str = "", wide: bool = False) -> list[Cell]:
    running = a.status in ("RUNNING", "STARTING", "STOPPING")
    status = status_cell(a.status)
    node_status = getattr(a, "node_status", "")
    if node_status in ("offline", "stopped"):
        # The Manager has not heard from this node within its grace (or its Daemon
        # stopped): the agent's state is the last one reported, not a live one.
        status = (f"{a.status} (node {node_status})", "dim")
    row: list[Cell] = [
        getattr(a, "node_id", "") or node_id or "-",
        a.id,
        a.type or "-",
        status,
        str(a.pid) if a.pid else "-",
        str(a.restart_count),
        age(a.start_time) if running else "-",
        ago(a.last_heartbeat) if a.last_heartbeat else "-",
        f"{a.spec}@{a.spec_revision}" if a.spec else "-",
    ]
    if wide:
        row += [a.version or "-", (a.config_hash or "-")[:12], a.status_reason or "-"]
    return row


def event_json(e: Any) -> dict[str, Any]:
    return {
        "timestamp": iso(e.timestamp),
        "old_status": e.old_status or None,
        "new_status": e.new_status,
        "reason": e.reason,
    }


def event_row(e: Any) -> list[Cell]:
    return [ago(e.timestamp), e.old_status or "-", status_cell(e.new_status), e.reason or "-"]


# ---- agent resource metrics --------------------------------------------------------------

# (json key, column label, is a byte size)
RESOURCE_FIELDS: Sequence[tuple[str, str, bool]] = (
    ("cpu", "cpu", False),
    ("memory_rss", "memory_rss", True),
    ("memory_vms", "memory_vms", True),
    ("disk_read_bytes", "disk_read_bytes", True),
    ("disk_write_bytes", "disk_write_bytes", True),
    ("open_files", "open_files", False),
)


def point_json(p: Any) -> dict[str, Any]:
    return {
        "timestamp": iso(p.timestamp),
        "cpu": p.cpu,
        "memory_rss": p.memory_rss,
        "memory_vms": p.memory_vms,
        "disk_read_bytes": p.disk_read_bytes,
        "disk_write_bytes": p.disk_write_bytes,
        "open_files": p.open_files,
    }


def size_or_number(value: float, is_size: bool) -> str:
    from .render import number

    return human_size(value) if is_size else number(value)
