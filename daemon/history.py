"""Resource history of agents: psutil samples over each agent's process group, kept in
a bounded in-memory ring per agent.

A ring stores its points column-wise in ``array`` buffers, 36 bytes per point (Unix
seconds as uint32, CPU as float32, RSS and VMS in KiB as uint32 — page-sized anyway —,
disk bytes as uint64, open files as int32), not as Python objects (~300 bytes each):
50 agents × 24 h at 10 s is 432,000 points ≈ 15 MB. ``bench/daemon_history_memory.py``
measures it.
"""

from __future__ import annotations

import contextlib
import math
import os
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psutil

from schema import daemon_pb


@dataclass(frozen=True)
class Point:
    """One sample of an agent's process group (the seed's ``ResourceDataPoint``)."""

    timestamp: int
    cpu: float
    memory_rss: int
    memory_vms: int
    disk_read_bytes: int
    disk_write_bytes: int
    open_files: int

    def to_pb(self) -> daemon_pb.ResourceDataPoint:
        return daemon_pb.ResourceDataPoint(
            timestamp=self.timestamp,
            cpu=self.cpu,
            memory_rss=self.memory_rss,
            memory_vms=self.memory_vms,
            disk_read_bytes=self.disk_read_bytes,
            disk_write_bytes=self.disk_write_bytes,
            open_files=self.open_files,
        )


_U32 = 2**32 - 1


class ResourceRing:
    """A fixed-capacity ring of points in typed arrays; grows lazily up to ``capacity``."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._ts = array("I")
        self._cpu = array("f")
        self._rss = array("I")  # KiB
        self._vms = array("I")  # KiB
        self._rd = array("Q")
        self._wr = array("Q")
        self._of = array("i")
        self._head = 0  # index of the oldest point once the ring is full

    def __len__(self) -> int:
        return len(self._ts)

    def append(self, p: Point) -> None:
        values = (
            min(max(p.timestamp, 0), _U32),
            p.cpu,
            min(p.memory_rss >> 10, _U32),
            min(p.memory_vms >> 10, _U32),
            p.disk_read_bytes,
            p.disk_write_bytes,
            p.open_files,
        )
        columns = self._columns()
        if len(self._ts) < self.capacity:
            for column, value in zip(columns, values, strict=True):
                column.append(value)
            return
        for column, value in zip(columns, values, strict=True):
            column[self._head] = value
        self._head = (self._head + 1) % self.capacity

    def _columns(self) -> tuple[array[Any], ...]:
        return (self._ts, self._cpu, self._rss, self._vms, self._rd, self._wr, self._of)

    def _ordered_indexes(self) -> Iterable[int]:
        n = len(self._ts)
        return ((self._head + i) % n for i in range(n)) if n else ()

    def _point(self, i: int) -> Point:
        return Point(
            self._ts[i],
            round(self._cpu[i], 3),
            self._rss[i] << 10,
            self._vms[i] << 10,
            self._rd[i],
            self._wr[i],
            self._of[i],
        )

    def since(self, timestamp: int) -> list[Point]:
        """Points with ``timestamp >= timestamp``, oldest first."""
        return [self._point(i) for i in self._ordered_indexes() if self._ts[i] >= timestamp]

    def latest(self) -> Point | None:
        n = len(self._ts)
        if not n:
            return None
        return self._point((self._head - 1) % n if n == self.capacity else n - 1)

    @property
    def nbytes(self) -> int:
        return sum(c.itemsize * c.buffer_info()[1] for c in self._columns())


class GroupSampler:
    """Measures process groups with psutil, keeping ``Process`` objects between samples
    so CPU percent is measured over the interval (psutil's ``cpu_percent(None)``)."""

    def __init__(self) -> None:
        self._procs: dict[tuple[int, float], psutil.Process] = {}

    def sample(self, groups: Mapping[str, int], now: float) -> dict[str, Point]:
        """One point per agent for ``groups`` (agent id → pgid); blocking, use a thread."""
        wanted = set(groups.values())
        members: dict[int, list[int]] = {pgid: [] for pgid in wanted}
        for pid in psutil.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                pgid = os.getpgid(pid)
                if pgid in members:
                    members[pgid].append(pid)
        seen: set[tuple[int, float]] = set()
        points = {}
        for agent_id, pgid in groups.items():
            cpu = 0.0
            rss = vms = rd = wr = fds = 0
            for pid in members.get(pgid, ()):
                try:
                    proc = psutil.Process(pid)
                    key = (pid, proc.create_time())
                    proc = self._procs.setdefault(key, proc)
                    seen.add(key)
                    with proc.oneshot():
                        if proc.status() == psutil.STATUS_ZOMBIE:
                            continue
                        pct = proc.cpu_percent(None)
                        cpu += pct if math.isfinite(pct) else 0.0
                        mem = proc.memory_info()
                        rss += mem.rss
                        vms += mem.vms
                        with contextlib.suppress(psutil.AccessDenied, AttributeError):
                            io = proc.io_counters()
                            rd += io.read_bytes
                            wr += io.write_bytes
                        with contextlib.suppress(psutil.AccessDenied):
                            fds += proc.num_fds()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            points[agent_id] = Point(int(now), round(cpu, 3), rss, vms, rd, wr, fds)
        for key in list(self._procs):
            if key not in seen:
                del self._procs[key]
        return points


class History:
    """Rings of all agents, sized for ``retention`` at ``interval``."""

    def __init__(self, *, retention: float, interval: float) -> None:
        self.retention = retention
        self.interval = interval
        self._capacity = max(1, math.ceil(retention / interval) + 1)
        self._rings: dict[str, ResourceRing] = {}

    def add(self, agent_id: str, point: Point) -> None:
        ring = self._rings.get(agent_id)
        if ring is None:
            ring = self._rings[agent_id] = ResourceRing(self._capacity)
        ring.append(point)

    def window(self, agent_id: str, seconds: float, now: float) -> list[Point]:
        """Points of the last ``seconds`` (capped by the retention), oldest first."""
        ring = self._rings.get(agent_id)
        if ring is None:
            return []
        return ring.since(math.floor(now - min(seconds, self.retention)))

    def latest(self, agent_id: str) -> Point | None:
        ring = self._rings.get(agent_id)
        return ring.latest() if ring is not None else None

    def forget(self, agent_id: str) -> None:
        """Drop an agent's points (it was removed from the node)."""
        self._rings.pop(agent_id, None)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self._rings.values())
