"""Resource history: psutil samples over the agent's whole process group, answered by
GetAgentMetrics for a window, bounded by the retention."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import wait_until
from harness.daemon import agent, call_daemon, lone_daemon

from daemon.history import History, Point, ResourceRing
from schema import daemon_pb


def _points(certs: Path, daemon: Any, seconds: int) -> list[daemon_pb.ResourceDataPoint]:
    reply = call_daemon(
        certs,
        daemon,
        "get_agent_metrics",
        daemon_pb.AgentMetricsRequest(agent_id="hog", duration_seconds=seconds),
    )
    assert reply.agent_id == "hog"
    return list(reply.data_points)


def test_metric_history_window_and_retention(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(
        tmp_path,
        certs,
        agents=[agent("hog", "hog", "30", start_seconds=0.2)],
        config={"history": {"interval": 0.5, "retention": 4}},
    ) as daemon:
        points = wait_until(
            lambda: (p := _points(certs, daemon, 3600)) and len(p) >= 6 and p,
            timeout=20,
            what="history filling up",
        )
        # The whole group is measured: the agent's 30 MB plus its child process.
        assert max(p.memory_rss for p in points) >= 30 * 1024 * 1024
        assert all(p.memory_vms >= p.memory_rss for p in points)
        assert max(p.open_files for p in points) >= 5
        assert any(p.cpu > 0 for p in points)
        assert max(p.disk_write_bytes for p in points) >= 0
        stamps = [p.timestamp for p in points]
        assert stamps == sorted(stamps)

        # Retention bounds what is kept and returned: 4 s at 0.5 s is at most 9 points,
        # however long the agent has been running.
        first_seen = points[0].timestamp
        full = wait_until(
            lambda: (p := _points(certs, daemon, 3600)) and p[0].timestamp > first_seen + 1 and p,
            timeout=20,
            what="old points aged out",
        )
        assert len(full) <= 9
        assert full[-1].timestamp - full[0].timestamp <= 4

        # A shorter window returns only recent points.
        now = time.time()
        recent = _points(certs, daemon, 1)
        assert recent and len(recent) < len(full)
        assert all(p.timestamp >= int(now) - 2 for p in recent)

        for bad in (0, -5):
            with pytest.raises(GRPCError) as exc:
                _points(certs, daemon, bad)
            assert exc.value.status is Status.INVALID_ARGUMENT
        with pytest.raises(GRPCError) as exc:
            call_daemon(
                certs,
                daemon,
                "get_agent_metrics",
                daemon_pb.AgentMetricsRequest(agent_id="ghost", duration_seconds=60),
            )
        assert exc.value.status is Status.NOT_FOUND


def test_ring_keeps_newest_points_in_order() -> None:
    ring = ResourceRing(5)
    for t in range(1, 13):
        ring.append(Point(t, float(t), t * 1024, t * 1024, t, t, t))
    assert len(ring) == 5
    assert [p.timestamp for p in ring.since(0)] == [8, 9, 10, 11, 12]
    assert [p.timestamp for p in ring.since(11)] == [11, 12]
    assert ring.latest() == Point(12, 12.0, 12 * 1024, 12 * 1024, 12, 12, 12)
    assert ring.nbytes <= 5 * 36 + 7 * 64  # typed arrays, not Python objects


def test_history_window_is_capped_by_retention() -> None:
    history = History(retention=10, interval=1)
    for t in range(100, 130):
        history.add("a", Point(t, 0.0, 0, 0, 0, 0, 0))
    assert [p.timestamp for p in history.window("a", 3600, now=129)] == list(range(119, 130))
    assert [p.timestamp for p in history.window("a", 2, now=129)] == [127, 128, 129]
    assert history.window("b", 60, now=129) == []
