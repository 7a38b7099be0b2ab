"""ReportMetrics past capacity: does the Manager keep serving at capacity, or collapse?

An independent load generator — Google's grpcio (C core), 200 node certificates, mTLS —
against a real ``fleet-manager`` on SQLite, as the issue that asked for overload
protection measured it:

1. **capacity**: a closed loop (``--concurrency`` calls always in flight) for
   ``--capacity-seconds``; completions per second is the capacity C;
2. **overload**: an open loop offering 1.5 × C, then 3 × C, calls a second for
   ``--seconds`` each, every call with a 10 s deadline, none waiting for another (the
   callers do not back off: the worst case for the server);
3. **recovery**: 0.5 × C for ``--recovery-seconds``, to see how fast it serves normally.

Per phase: offered and completed calls a second, goodput as a share of C, refusals
(RESOURCE_EXHAUSTED / UNAVAILABLE), deadline misses, p99 of the calls that succeeded,
and the Manager's CPU. Each call is ReportMetrics with 100 samples × 10 values, encoded
once with upb and sent as bytes. The per-node metrics quota is off (200 nodes at this
rate are far over it; the quota is not what is measured).

    python -m bench.overload
    python -m bench.overload --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc

from bench._common import (
    DEFAULT_CACHE,
    dev_certs,
    emit_json,
    ensure_node_certs,
    latency_summary,
    machine_info,
    print_profile,
    print_table,
    process_cpu_seconds,
    profile_summary,
    py_spy,
    raise_fd_limit,
    spawn_manager,
)
from schema.gen.pb2.fleet.manager.v1 import manager_pb2

METHOD = "/fleet.manager.v1.ManagerService/"
DEADLINE = 10.0
SAMPLES, VALUES = 100, 10
TYPES = ("cpu", "memory", "disk", "network")


@dataclass
class Phase:
    name: str
    offered_per_s: float
    seconds: float
    ok: int = 0
    refused: int = 0
    deadline: int = 0
    other: int = 0
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    first_other: str = ""
    manager_cpu_s: float = 0.0
    generator_cpu_s: float = 0.0
    machine_idle: float = 0.0  # share of both cores' time no process used


class Node:
    """One simulated node: its channel and its next sample timestamp."""

    def __init__(self, node_id: str, channel: Any) -> None:
        self.node_id = node_id
        self.channel = channel
        self.report = channel.unary_unary(
            METHOD + "ReportMetrics",
            request_serializer=lambda b: b,
            response_deserializer=manager_pb2.ReportMetricsResponse.FromString,
        )
        self.register = channel.unary_unary(
            METHOD + "RegisterNode",
            request_serializer=manager_pb2.RegisterNodeRequest.SerializeToString,
            response_deserializer=manager_pb2.RegisterNodeResponse.FromString,
        )
        # Unique (type, timestamp) per sample, within retention: a day ago onwards.
        self.next_ts = int(time.time()) - 86400
        # Built once; each call only moves the timestamps (cheap: the generator must
        # leave the CPU to the Manager it measures).
        self.template = manager_pb2.ReportMetricsRequest(node_id=node_id)
        for i in range(SAMPLES):
            sample = self.template.metrics.add()
            sample.type = TYPES[i % len(TYPES)]
            for v in range(VALUES):
                sample.values[f"v{v}"] = float(i * v)

    def payload(self) -> bytes:
        base = self.next_ts
        for i, sample in enumerate(self.template.metrics):
            sample.timestamp = base + i // len(TYPES)
        self.next_ts += SAMPLES // len(TYPES)
        return self.template.SerializeToString()


@contextmanager
def _measure(phase: Phase, pid: int) -> Iterator[None]:
    """CPU of the Manager and of this generator, and the machine's idle share, over the
    block: a phase whose idle share is near 0 ran on a machine busy with something else
    too, and its numbers are not comparable."""
    import psutil

    manager, generator = process_cpu_seconds(pid), process_cpu_seconds()
    idle = psutil.cpu_times().idle
    started = time.perf_counter()
    yield
    elapsed = time.perf_counter() - started
    phase.manager_cpu_s = process_cpu_seconds(pid) - manager
    phase.generator_cpu_s = process_cpu_seconds() - generator
    phase.machine_idle = (psutil.cpu_times().idle - idle) / (elapsed * (os.cpu_count() or 1))


def _channel(certs: Path, node: str, address: str) -> Any:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=(certs / f"{node}.key").read_bytes(),
        certificate_chain=(certs / f"{node}.crt").read_bytes(),
    )
    # The dev manager certificate names localhost; grpcio matches host names.
    return grpc.aio.secure_channel(
        address, creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


async def _call(node: Node, phase: Phase) -> None:
    phase.sent += 1
    started = time.perf_counter()
    try:
        await node.report(node.payload(), timeout=DEADLINE)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
            phase.refused += 1
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            phase.deadline += 1
        else:
            phase.other += 1
            phase.first_other = phase.first_other or f"{code.name}: {exc.details()}"
        return
    phase.ok += 1
    phase.latencies.append(time.perf_counter() - started)


async def _closed_loop(nodes: list[Node], phase: Phase, concurrency: int) -> None:
    deadline = time.perf_counter() + phase.seconds

    async def worker(k: int) -> None:
        i = k
        while time.perf_counter() < deadline:
            await _call(nodes[i % len(nodes)], phase)
            i += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))


async def _open_loop(nodes: list[Node], phase: Phase) -> None:
    """Start calls at a fixed rate, whatever happens to earlier ones."""
    interval = 1.0 / phase.offered_per_s
    started = time.perf_counter()
    tasks: set[asyncio.Task[None]] = set()
    i = 0
    while True:
        due = started + i * interval
        if due - started >= phase.seconds:
            break
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(_call(nodes[i % len(nodes)], phase))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        i += 1
    if tasks:  # the stragglers' outcomes belong to this phase
        await asyncio.gather(*tasks)


async def _run(args: argparse.Namespace, address: str, certs: Path, pid: int) -> list[Phase]:
    names = [f"ovl-{i:04d}" for i in range(args.nodes)]
    node_certs = ensure_node_certs(certs, names, cache_dir=DEFAULT_CACHE)
    nodes = [Node(n, _channel(node_certs, n, address)) for n in names]
    try:
        for node in nodes:
            await node.register(
                manager_pb2.RegisterNodeRequest(node_id=node.node_id, daemon_address="127.0.0.1:1"),
                timeout=30,
            )
        phases: list[Phase] = []
        capacity = Phase("capacity (closed loop)", 0.0, args.capacity_seconds)
        with _measure(capacity, pid):
            await _closed_loop(nodes, capacity, args.concurrency)
        capacity.offered_per_s = capacity.sent / capacity.seconds
        phases.append(capacity)
        rate = capacity.ok / capacity.seconds
        for name, factor, seconds in (
            ("1.5x capacity", 1.5, args.seconds),
            ("3x capacity", 3.0, args.seconds),
            ("recovery 0.5x", 0.5, args.recovery_seconds),
        ):
            phase = Phase(name, rate * factor, seconds)
            profile = args.profile if factor == 3.0 else None
            # py-spy samples the Manager in the middle of the 3x phase (its start and
            # end are ramps).
            with (
                _measure(phase, pid),
                py_spy(pid, profile, delay=2.0, duration=max(1.0, seconds - 4.0)),
            ):
                await _open_loop(nodes, phase)
            phases.append(phase)
        return phases
    finally:
        for node in nodes:
            await node.channel.close()


def _cpu_per_call(phases: list[Phase]) -> tuple[float, float]:
    """Manager CPU milliseconds per served call and per refusal: the least-squares fit of
    ``cpu = a * served + b * refused`` over the phases. Less sensitive to a busy machine
    than goodput (a process waiting for a core uses no CPU time)."""
    rows = [(float(ph.ok), float(ph.refused), ph.manager_cpu_s) for ph in phases]
    saa = sum(a * a for a, _, _ in rows)
    sab = sum(a * b for a, b, _ in rows)
    sbb = sum(b * b for _, b, _ in rows)
    sac = sum(a * c for a, _, c in rows)
    sbc = sum(b * c for _, b, c in rows)
    det = saa * sbb - sab * sab
    if not det:
        return (1000.0 * sac / saa if saa else 0.0), 0.0
    return 1000.0 * (sac * sbb - sbc * sab) / det, 1000.0 * (saa * sbc - sab * sac) / det


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument(
        "--concurrency",
        type=int,
        default=24,
        help="closed-loop calls in flight (under the Manager's ReportMetrics budget, 32)",
    )
    p.add_argument("--capacity-seconds", type=float, default=15.0)
    p.add_argument("--seconds", type=float, default=60.0, help="each overload phase")
    p.add_argument("--recovery-seconds", type=float, default=15.0)
    p.add_argument("--db", help="Manager database URL (default: SQLite in a temp dir)")
    p.add_argument(
        "--manager-arg",
        action="append",
        default=[],
        help="extra fleet-manager argument (repeat), e.g. to compare settings",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--profile",
        type=Path,
        help="record the Manager with py-spy during the 3x phase (raw stacks to this file) "
        "and print its busiest frames",
    )
    args = p.parse_args(argv)
    raise_fd_limit()
    certs = dev_certs(DEFAULT_CACHE / "overload-ca")
    os.environ["FLEET_MANAGER_METRICS_NODE_QUOTA"] = "0"
    os.environ.setdefault("FLEET_MANAGER_ENROLL_LISTEN", "")
    with spawn_manager(cert_dir=certs, db_url=args.db, extra_args=args.manager_arg) as mgr:
        phases = asyncio.run(_run(args, mgr.address, certs, mgr.pid))
    capacity = phases[0].ok / phases[0].seconds
    rows = []
    for ph in phases:
        lat = latency_summary(ph.latencies)
        rows.append(
            [
                ph.name,
                ph.offered_per_s,
                ph.ok / ph.seconds,
                100.0 * ph.ok / ph.seconds / capacity if capacity else 0.0,
                ph.refused,
                ph.deadline,
                ph.other,
                lat["p99_ms"],
                100.0 * ph.manager_cpu_s / ph.seconds,
                100.0 * ph.generator_cpu_s / ph.seconds,
                100.0 * ph.machine_idle,
            ]
        )
    if args.json:
        emit_json(
            {
                "machine": machine_info(),
                "capacity_per_s": capacity,
                "phases": [
                    {
                        **{k: v for k, v in vars(ph).items() if k != "latencies"},
                        **latency_summary(ph.latencies),
                    }
                    for ph in phases
                ],
            }
        )
    else:
        print_table(
            [
                "phase",
                "offered/s",
                "served/s",
                "goodput %",
                "refused",
                "deadline",
                "other",
                "p99 ok ms",
                "mgr CPU %",
                "gen CPU %",
                "idle %",
            ],
            rows,
        )
        for ph in phases:
            if ph.first_other:
                print(f"{ph.name}: first other error: {ph.first_other}")
        served_ms, refused_ms = _cpu_per_call(phases)
        print(
            f"Manager CPU per call (least squares over the phases): served {served_ms:.2f} ms, "
            f"refused {refused_ms:.3f} ms"
        )
        if args.profile is not None and args.profile.exists():
            print_profile(profile_summary(args.profile, top=25), title="Manager at 3x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
