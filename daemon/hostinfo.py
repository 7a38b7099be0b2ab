"""Facts about this host (for ``RegisterNode``) and its metrics (for ``ReportMetrics``)."""

from __future__ import annotations

import platform
import socket
import time
from dataclasses import dataclass
from importlib import metadata

import psutil

from schema import manager_pb

from .textsafe import MAX_LABEL_LEN, clean


@dataclass(frozen=True)
class HostFacts:
    """What the Manager is told about this host at registration."""

    hostname: str
    ip: str
    os: str
    arch: str
    daemon_version: str


def fleet_version() -> str:
    try:
        return metadata.version("fleet")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def primary_ip(towards: tuple[str, int]) -> str:
    """The local address the kernel would use to reach ``towards`` (no packet is sent)."""
    host, port = towards
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, port or 9))
            return str(s.getsockname()[0])
    except OSError:
        pass
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def host_facts(manager_address: tuple[str, int]) -> HostFacts:
    """Hostname, the IP used to reach the Manager, OS (with kernel release) and arch,
    each within what the Manager stores (a long custom kernel release must not make
    every registration fail)."""
    uname = platform.uname()
    return HostFacts(
        hostname=clean(socket.gethostname(), 255),
        ip=primary_ip(manager_address),
        os=clean(f"{uname.system.lower()} {uname.release}".strip(), MAX_LABEL_LEN),
        arch=clean(uname.machine, MAX_LABEL_LEN) or "unknown",
        daemon_version=clean(fleet_version(), MAX_LABEL_LEN),
    )


class HostMetrics:
    """Samples cpu, memory, disk and network in the seed's ``MetricData`` shape.

    CPU percent is measured between two calls, so the first sample after construction
    covers the time since construction.
    """

    def __init__(self, *, disk_path: str = "/") -> None:
        self._disk_path = disk_path
        psutil.cpu_percent(interval=None)

    def sample(self, now: float | None = None) -> list[manager_pb.MetricData]:
        ts = int(now if now is not None else time.time())
        load1, load5, load15 = psutil.getloadavg()
        cpu = {
            "usage_percent": psutil.cpu_percent(interval=None),
            "count": float(psutil.cpu_count() or 0),
            "load1": load1,
            "load5": load5,
            "load15": load15,
        }
        vm = psutil.virtual_memory()
        swap = psutil.swap_memory()
        memory = {
            "total": float(vm.total),
            "available": float(vm.available),
            "used": float(vm.used),
            "usage_percent": vm.percent,
            "swap_total": float(swap.total),
            "swap_used": float(swap.used),
        }
        du = psutil.disk_usage(self._disk_path)
        disk = {
            "total": float(du.total),
            "used": float(du.used),
            "free": float(du.free),
            "usage_percent": du.percent,
        }
        io = psutil.disk_io_counters()
        if io is not None:
            disk["read_bytes"] = float(io.read_bytes)
            disk["write_bytes"] = float(io.write_bytes)
        net = psutil.net_io_counters()
        network = {
            "bytes_sent": float(net.bytes_sent),
            "bytes_recv": float(net.bytes_recv),
            "packets_sent": float(net.packets_sent),
            "packets_recv": float(net.packets_recv),
            "errin": float(net.errin),
            "errout": float(net.errout),
        }
        return [
            manager_pb.MetricData(type=kind, timestamp=ts, values=values)
            for kind, values in (
                ("cpu", cpu),
                ("memory", memory),
                ("disk", disk),
                ("network", network),
            )
        ]
