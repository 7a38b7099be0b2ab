"""Fleet simulator: N Daemons against one real Manager, from one process (or a few).

Each simulated Daemon has its own node certificate (issued once from the CA and cached)
and its own HTTP/2 connection, registers (RegisterNode), syncs its agents
(SyncAgentStates, full list), then heartbeats every ``--heartbeat-interval`` seconds and
reports host metrics (4 types x 8 values) every ``--metrics-interval`` seconds, each with
±``--jitter`` and a random phase, and re-syncs agents every ``--agents-interval``. The
start of the nodes is spread over ``--ramp`` seconds; figures are split into the ramp
and the steady phase that follows (the steady phase is what the targets are about).
``--heartbeat-max-skip N`` makes each node behave like a Daemon with
``manager.heartbeat_max_skip = N``: a heartbeat due within an interval of a report or
sync the Manager counted as liveness is skipped, at most N in a row (0, the default: a
heartbeat every interval, like a seed Daemon).

Reports per RPC: calls, achieved rate, errors by status code, latency p50/p99/max; and
the simulator's own CPU and event-loop lag, so one can see it is not the bottleneck.

    python -m bench.fleetsim --spawn-manager --nodes 1000 --ramp 20 --duration 60
    python -m bench.fleetsim --manager 127.0.0.1:50051 --ca-dir certs --nodes 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import resource
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python bench/fleetsim.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from bench._common import (
    DEFAULT_CACHE,
    emit_json,
    ensure_node_certs,
    fmt,
    fresh_postgres,
    latency_summary,
    machine_info,
    print_profile,
    print_table,
    process_cpu_seconds,
    process_rss_mb,
    profile_summary,
    py_spy,
    raise_fd_limit,
    spawn_manager,
)
from bench._rawh2 import RawConnection, RawStub
from common.backoff import Backoff
from common.tls import TLSFiles, client_context
from schema import manager_pb

RPCS = ("RegisterNode", "Heartbeat", "ReportMetrics", "SyncAgentStates")

METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "cpu": ("usage_percent", "user", "system", "iowait", "idle", "load1", "load5", "load15"),
    "memory": ("total", "used", "free", "available", "percent", "cached", "buffers", "swap_used"),
    "disk": (
        "total", "used", "free", "percent", "read_bytes", "write_bytes", "read_ops", "write_ops",
    ),
    "network": (
        "bytes_sent", "bytes_recv", "packets_sent", "packets_recv",
        "errin", "errout", "dropin", "dropout",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class SimConfig:
    """What to simulate; built once from the command line."""

    address: str
    cert_dir: Path  # holds ca.crt and NAME.crt/NAME.key for every node
    nodes: int
    duration: float
    ramp: float
    heartbeat_interval: float = 10.0
    metrics_interval: float = 30.0
    agents_interval: float = 60.0
    agents_per_node: int = 3
    jitter: float = 0.1
    timeout: float = 10.0
    prefix: str = "sim"
    first_index: int = 0
    client: str = "grpclib"  # or "raw": bench/_rawh2.py, the lean HTTP/2 client
    heartbeat_max_skip: int = 0  # as the Daemon's manager.heartbeat_max_skip

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("--nodes must be at least 1")
        if self.duration <= 0 or self.ramp < 0:
            raise ValueError("--duration must be > 0 and --ramp >= 0")
        if self.ramp >= self.duration:
            raise ValueError("--ramp must be shorter than --duration")
        if self.client not in ("grpclib", "raw"):
            raise ValueError("--client must be grpclib or raw")
        if not 0 <= self.jitter < 1:
            raise ValueError("--jitter must be in [0, 1)")
        if self.heartbeat_max_skip < 0:
            raise ValueError("--heartbeat-max-skip must be >= 0")
        for name in ("heartbeat_interval", "metrics_interval", "agents_interval", "timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")

    def node_id(self, index: int) -> str:
        return f"{self.prefix}-{index:05d}"

    @property
    def node_ids(self) -> list[str]:
        return [self.node_id(self.first_index + i) for i in range(self.nodes)]


@dataclass
class RpcStats:
    """Calls of one RPC, split by phase (a call belongs to the phase it started in)."""

    calls: dict[str, int] = field(default_factory=lambda: {"ramp": 0, "steady": 0})
    errors: dict[str, Counter[str]] = field(
        default_factory=lambda: {"ramp": Counter(), "steady": Counter()}
    )
    latencies: dict[str, array[float]] = field(
        default_factory=lambda: {"ramp": array("d"), "steady": array("d")}
    )
    # Heartbeats only: due but skipped (--heartbeat-max-skip).
    skipped: dict[str, int] = field(default_factory=lambda: {"ramp": 0, "steady": 0})

    def merge(self, other: RpcStats) -> None:
        for phase in ("ramp", "steady"):
            self.calls[phase] += other.calls[phase]
            self.skipped[phase] += other.skipped[phase]
            self.errors[phase].update(other.errors[phase])
            self.latencies[phase].extend(other.latencies[phase])


@dataclass
class WorkerResult:
    """What one simulator process measured."""

    rpcs: dict[str, RpcStats]
    cpu_seconds: float
    steady_cpu_seconds: float
    max_loop_lag_ms: float
    p99_loop_lag_ms: float
    registered: int
    error_samples: list[str]


class Phase:
    """Clock of a run: when the ramp ends and when everything stops (event-loop time)."""

    def __init__(self, start: float, ramp: float, duration: float) -> None:
        self.start = start
        self.steady_from = start + ramp
        self.end = start + duration

    def of(self, t: float) -> str:
        return "ramp" if t < self.steady_from else "steady"


def _metrics(now: int, rng: random.Random) -> list[manager_pb.MetricData]:
    return [
        manager_pb.MetricData(
            type=kind, timestamp=now, values={k: round(rng.random() * 100, 3) for k in keys}
        )
        for kind, keys in METRIC_KEYS.items()
    ]


class SimNode:
    """One simulated Daemon: its own certificate, channel and schedule."""

    def __init__(
        self,
        config: SimConfig,
        index: int,
        phase: Phase,
        stats: dict[str, RpcStats],
        samples: list[str],
    ) -> None:
        self.config = config
        self.node_id = config.node_id(index)
        self.phase = phase
        self.stats = stats
        self.samples = samples
        self.instance_id = uuid.uuid4().hex
        self.rng = random.Random(index)
        self.registered = False
        self.liveness_at: float | None = None  # loop time of the last report counted
        self.skipped = 0  # heartbeats skipped in a row
        self.channel: Channel | RawConnection | None = None
        self.stub: Any = None

    def _connect(self) -> None:
        d = self.config.cert_dir
        ctx = client_context(
            TLSFiles(d / f"{self.node_id}.crt", d / f"{self.node_id}.key", d / "ca.crt"),
            expect_role="manager",
        )
        host, _, port = self.config.address.rpartition(":")
        if self.config.client == "raw":
            self.channel = RawConnection(host, int(port), ssl_context=ctx)
            self.stub = RawStub(self.channel, timeout=self.config.timeout)
        else:
            self.channel = Channel(host, int(port), ssl=ctx)
            self.stub = manager_pb.ManagerServiceStub(self.channel, timeout=self.config.timeout)

    async def _call(self, rpc: str, coro_factory: Any) -> Any:
        loop = asyncio.get_running_loop()
        started = loop.time()
        phase = self.phase.of(started)
        stats = self.stats[rpc]
        stats.calls[phase] += 1
        t0 = time.perf_counter()
        try:
            response = await coro_factory()
        except asyncio.CancelledError:
            raise
        except GRPCError as exc:
            code = exc.status.name
            stats.errors[phase][code] += 1
            if len(self.samples) < 20:
                self.samples.append(f"{rpc} {self.node_id}: {code} {exc.message}")
            return exc
        except Exception as exc:  # transport trouble is a result here, not a crash
            code = type(exc).__name__
            stats.errors[phase][code] += 1
            if len(self.samples) < 20:
                self.samples.append(f"{rpc} {self.node_id}: {code} {exc}")
            return exc
        stats.latencies[phase].append(time.perf_counter() - t0)
        return response

    async def register(self) -> None:
        assert self.stub is not None
        c = self.config
        request = manager_pb.RegisterNodeRequest(
            node_id=self.node_id,
            hostname=f"{self.node_id}.sim.local",
            ip=f"10.{self.rng.randrange(256)}.{self.rng.randrange(256)}.{self.rng.randrange(256)}",
            os="linux",
            arch="x86_64",
            labels={"sim": "true", "rack": f"r{self.rng.randrange(40)}"},
            daemon_version="0.1.0",
            agent_version="0.1.0",
            daemon_address="127.0.0.1:9",  # never dialled by this benchmark
            heartbeat_interval_seconds=max(1, round(c.heartbeat_interval)),
            instance_id=self.instance_id,
        )
        result = await self._call("RegisterNode", lambda: self.stub.register_node(request))
        self.registered = not isinstance(result, BaseException)

    async def heartbeat(self) -> None:
        assert self.stub is not None
        request = manager_pb.HeartbeatRequest(
            node_id=self.node_id, timestamp=int(time.time()), instance_id=self.instance_id
        )
        result = await self._call("Heartbeat", lambda: self.stub.heartbeat(request))
        if isinstance(result, GRPCError) and result.status.name == "NOT_FOUND":
            await self.register()  # what a real Daemon does

    async def report_metrics(self) -> None:
        assert self.stub is not None
        request = manager_pb.ReportMetricsRequest(
            node_id=self.node_id, metrics=_metrics(int(time.time()), self.rng)
        )
        self._counted(await self._call("ReportMetrics", lambda: self.stub.report_metrics(request)))

    def _counted(self, reply: Any) -> None:
        """A report or sync the Manager counted as liveness (``liveness = true``)."""
        if not isinstance(reply, BaseException) and reply.liveness:
            self.liveness_at = asyncio.get_running_loop().time()

    def skip_heartbeat(self, due: float) -> bool:
        """Whether the heartbeat due at ``due`` is skipped, as the Daemon would."""
        counted, interval = self.liveness_at, self.config.heartbeat_interval
        if (
            self.skipped >= self.config.heartbeat_max_skip
            or counted is None
            or due - counted >= interval
        ):
            self.skipped = 0
            return False
        self.skipped += 1
        return True

    async def sync_agents(self) -> None:
        assert self.stub is not None
        now = int(time.time())
        states = [
            manager_pb.AgentState(
                agent_id=f"agent-{i}",
                status="RUNNING",
                pid=1000 + i,
                last_heartbeat=now,
                type="worker",
                version="1.0.0",
                start_time=now - 3600,
                restart_count=0,
            )
            for i in range(self.config.agents_per_node)
        ]
        request = manager_pb.SyncAgentStatesRequest(node_id=self.node_id, states=states, full=True)
        reply = await self._call("SyncAgentStates", lambda: self.stub.sync_agent_states(request))
        self._counted(reply)

    async def run(self, start_at: float) -> None:
        loop = asyncio.get_running_loop()
        c = self.config
        await asyncio.sleep(max(0.0, start_at - loop.time()))
        if loop.time() >= self.phase.end:
            return
        self._connect()
        try:
            # Like a real Daemon: register, retrying with the connection-backoff schedule.
            backoff = Backoff(initial=1.0, multiplier=1.6, jitter=0.2, maximum=30.0)
            await self.register()
            while not self.registered:
                delay = backoff.next_delay()
                if loop.time() + delay >= self.phase.end:
                    return
                await asyncio.sleep(delay)
                await self.register()
            await self.sync_agents()
            now = loop.time()
            rng = self.rng
            due = {
                "hb": now + rng.random() * c.heartbeat_interval,
                "metrics": now + rng.random() * c.metrics_interval,
                "agents": now + c.agents_interval * (0.5 + rng.random()),
            }
            intervals = {
                "hb": c.heartbeat_interval,
                "metrics": c.metrics_interval,
                "agents": c.agents_interval,
            }
            actions = {"hb": self.heartbeat, "metrics": self.report_metrics,
                       "agents": self.sync_agents}  # fmt: skip
            while True:
                what = min(due, key=due.__getitem__)
                at = due[what]
                if at >= self.phase.end:
                    return
                delay = at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if what == "hb" and self.registered and self.skip_heartbeat(at):
                    self.stats["Heartbeat"].skipped[self.phase.of(at)] += 1
                elif self.registered or what == "hb":  # unregistered: only heartbeat
                    await (actions[what] if self.registered else self.register)()
                due[what] = at + intervals[what] * rng.uniform(1 - c.jitter, 1 + c.jitter)
        finally:
            if self.channel is not None:
                self.channel.close()


async def _loop_lag_probe(phase: Phase, lags: array[float]) -> None:
    """Measure how late a 50 ms timer fires: a busy simulator shows up here."""
    loop = asyncio.get_running_loop()
    while loop.time() < phase.end:
        t = loop.time()
        await asyncio.sleep(0.05)
        if t >= phase.steady_from:
            lags.append(max(0.0, loop.time() - t - 0.05))


async def simulate(config: SimConfig, indexes: list[int], start_wall: float) -> WorkerResult:
    """Run the nodes ``indexes`` (positions in 0..nodes-1); the run starts at ``start_wall``."""
    loop = asyncio.get_running_loop()
    start = loop.time() + max(0.0, start_wall - time.time())
    phase = Phase(start, config.ramp, config.duration)
    stats = {rpc: RpcStats() for rpc in RPCS}
    samples: list[str] = []
    nodes = [SimNode(config, config.first_index + i, phase, stats, samples) for i in indexes]
    lags: array[float] = array("d")
    cpu0 = process_cpu_seconds()
    spacing = config.ramp / config.nodes
    tasks = [
        asyncio.create_task(node.run(start + i * spacing))
        for i, node in zip(indexes, nodes, strict=True)
    ]
    probe = asyncio.create_task(_loop_lag_probe(phase, lags))
    await asyncio.sleep(max(0.0, phase.steady_from - loop.time()))
    steady_cpu0 = process_cpu_seconds()
    try:
        # Calls in flight at the end get one timeout to finish, then are cancelled.
        await asyncio.wait(
            [*tasks, probe], timeout=max(0.0, phase.end - loop.time()) + config.timeout + 1
        )
    finally:
        for task in [*tasks, probe]:
            task.cancel()
        await asyncio.gather(*tasks, probe, return_exceptions=True)
    steady_cpu = process_cpu_seconds() - steady_cpu0
    ordered = sorted(lags)
    return WorkerResult(
        rpcs=stats,
        cpu_seconds=process_cpu_seconds() - cpu0,
        steady_cpu_seconds=steady_cpu,
        max_loop_lag_ms=(ordered[-1] * 1000) if ordered else 0.0,
        p99_loop_lag_ms=(ordered[int(len(ordered) * 0.99)] * 1000) if ordered else 0.0,
        registered=sum(1 for n in nodes if n.registered),
        error_samples=samples,
    )


def _run_worker(config: SimConfig, indexes: list[int], start_wall: float) -> WorkerResult:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(simulate(config, indexes, start_wall))


def _worker_main(config: SimConfig, indexes: list[int], start_wall: float, conn: Any) -> None:
    try:
        conn.send(_run_worker(config, indexes, start_wall))
    except BaseException as exc:  # report it to the parent, which prints it
        conn.send(exc)
    finally:
        conn.close()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop for this run when installed (without changing the process' policy)."""
    # asyncio's own TLS transport zero-fills a 256 KiB read buffer per connection (2.5 GB
    # for 10,000 nodes); records are at most 16 KiB, so a smaller chunk loses nothing.
    import asyncio.sslproto

    asyncio.sslproto.SSLProtocol.max_size = 64 * 1024
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(
    config: SimConfig,
    *,
    procs: int = 1,
    manager_pid: int | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Simulate the fleet (in ``procs`` processes) and return the report as a dict.

    With ``profile`` (and ``manager_pid``), py-spy records the Manager over the steady
    phase into that file and the report carries a summary of the busiest frames.
    """
    raise_fd_limit()
    if profile is not None and manager_pid is not None:
        lead = (1.0 if procs == 1 else 3.0) + config.ramp + 1.0
        with py_spy(manager_pid, profile, delay=lead,
                    duration=config.duration - config.ramp - 2.0):  # fmt: skip
            report = run(config, procs=procs, manager_pid=manager_pid)
        if profile.exists():
            report["manager_profile"] = profile_summary(profile)
        return report
    start_wall = time.time() + (1.0 if procs == 1 else 3.0)
    manager_cpu0 = manager_cpu1 = 0.0
    manager_rss = float("nan")
    all_indexes = list(range(config.nodes))
    results: list[WorkerResult] = []
    manager_probe = _ManagerProbe(manager_pid, start_wall + config.ramp)
    if procs <= 1:
        with manager_probe:
            results.append(_run_worker(config, all_indexes, start_wall))
    else:
        ctx = multiprocessing.get_context("fork")
        workers = []
        for k in range(procs):
            parent, child = ctx.Pipe(duplex=False)
            p = ctx.Process(
                target=_worker_main, args=(config, all_indexes[k::procs], start_wall, child)
            )
            p.start()
            child.close()
            workers.append((p, parent))
        with manager_probe:
            for p, conn in workers:
                try:
                    item = conn.recv()
                except EOFError:
                    item = RuntimeError(f"simulator worker {p.pid} died")
                p.join(10)
                if isinstance(item, BaseException):
                    raise item
                results.append(item)
    manager_cpu0, manager_cpu1, manager_rss = manager_probe.figures()
    return _report(config, procs, results, manager_cpu1 - manager_cpu0, manager_rss,
                   manager_pid is not None)  # fmt: skip


class _ManagerProbe:
    """CPU and RSS of the Manager over the steady phase (when its pid is known), its
    worker processes included."""

    def __init__(self, pid: int | None, steady_from_wall: float) -> None:
        self.pid = pid
        self.steady_from_wall = steady_from_wall
        self.cpu0 = self.cpu1 = 0.0
        self.rss = float("nan")
        self._timer: Any = None

    def __enter__(self) -> _ManagerProbe:
        if self.pid is not None:
            import threading

            def sample() -> None:
                with contextlib.suppress(Exception):
                    self.cpu0 = process_cpu_seconds(self.pid, tree=True)

            self._timer = threading.Timer(max(0.0, self.steady_from_wall - time.time()), sample)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pid is not None:
            self._timer.cancel()
            with contextlib.suppress(Exception):
                self.cpu1 = process_cpu_seconds(self.pid, tree=True)
                self.rss = process_rss_mb(self.pid, tree=True)

    def figures(self) -> tuple[float, float, float]:
        return self.cpu0, self.cpu1, self.rss


def _report(
    config: SimConfig,
    procs: int,
    results: list[WorkerResult],
    manager_cpu: float,
    manager_rss: float,
    manager_known: bool,
) -> dict[str, Any]:
    merged = {rpc: RpcStats() for rpc in RPCS}
    for result in results:
        for rpc, stats in result.rpcs.items():
            merged[rpc].merge(stats)
    steady_seconds = config.duration - config.ramp
    rpcs: dict[str, Any] = {}
    for rpc, stats in merged.items():
        entry: dict[str, Any] = {}
        for phase in ("ramp", "steady"):
            seconds = config.ramp if phase == "ramp" else steady_seconds
            entry[phase] = {
                "calls": stats.calls[phase],
                "skipped": stats.skipped[phase],
                "ok": len(stats.latencies[phase]),
                "rate_per_s": stats.calls[phase] / seconds if seconds else 0.0,
                "errors": dict(stats.errors[phase]),
                **latency_summary(stats.latencies[phase]),
            }
        rpcs[rpc] = entry
    sim_cpu = sum(r.steady_cpu_seconds for r in results)
    steady_calls = sum(e["steady"]["calls"] for e in rpcs.values())
    errors_total = sum(
        sum(e[p]["errors"].values()) for e in rpcs.values() for p in ("ramp", "steady")
    )
    return {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "procs": procs,
        "machine": machine_info(),
        "expected_heartbeat_rate_per_s": config.nodes / config.heartbeat_interval,
        "expected_metrics_rate_per_s": config.nodes / config.metrics_interval,
        "steady_seconds": steady_seconds,
        "steady_rpcs_per_node_per_minute": (
            60.0 * steady_calls / config.nodes / steady_seconds if steady_seconds else 0.0
        ),
        "registered": sum(r.registered for r in results),
        "errors_total": errors_total,
        "rpcs": rpcs,
        "simulator": {
            "cpu_seconds": sum(r.cpu_seconds for r in results),
            "steady_cpu_percent_of_core": 100.0 * sim_cpu / steady_seconds,
            "max_loop_lag_ms": max(r.max_loop_lag_ms for r in results),
            "p99_loop_lag_ms": max(r.p99_loop_lag_ms for r in results),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
        "manager": {
            "steady_cpu_percent_of_core": (100.0 * manager_cpu / steady_seconds)
            if manager_known
            else None,
            "rss_mb": manager_rss if manager_known else None,
        },
        "error_samples": [s for r in results for s in r.error_samples][:20],
    }


def print_report(report: dict[str, Any], *, file: Any = None) -> None:
    """The human-readable tables of a report."""
    out = file or sys.stdout
    c = report["config"]
    print(
        f"fleetsim: {c['nodes']:,} nodes -> {c['address']}, ramp {c['ramp']:g}s, "
        f"duration {c['duration']:g}s, heartbeat {c['heartbeat_interval']:g}s, "
        f"metrics {c['metrics_interval']:g}s, procs {report['procs']}, "
        f"registered {report['registered']:,}",
        file=out,
    )
    rows = []
    for rpc, entry in report["rpcs"].items():
        for phase in ("ramp", "steady"):
            e = entry[phase]
            if not e["calls"]:
                continue
            errors = ", ".join(f"{k}={v}" for k, v in sorted(e["errors"].items())) or "0"
            rows.append([rpc, phase, e["calls"], e["rate_per_s"], e["p50_ms"], e["p99_ms"],
                         e["max_ms"], errors])  # fmt: skip
    print_table(
        ["rpc", "phase", "calls", "rate/s", "p50 ms", "p99 ms", "max ms", "errors"], rows, file=out
    )
    sim, mgr = report["simulator"], report["manager"]
    skipped = report["rpcs"]["Heartbeat"]["steady"]["skipped"]
    print(
        f"expected steady heartbeat rate {fmt(report['expected_heartbeat_rate_per_s'])}/s, "
        f"metrics {fmt(report['expected_metrics_rate_per_s'])}/s; steady: "
        f"{fmt(report['steady_rpcs_per_node_per_minute'])} RPCs per node per minute"
        + (f", {skipped:,} heartbeats skipped" if skipped else ""),
        file=out,
    )
    print(
        f"simulator: {fmt(sim['steady_cpu_percent_of_core'])}% of a core in steady phase, "
        f"loop lag p99 {fmt(sim['p99_loop_lag_ms'])} ms / max {fmt(sim['max_loop_lag_ms'])} ms, "
        f"peak RSS {fmt(sim['peak_rss_mb'])} MB",
        file=out,
    )
    if mgr["steady_cpu_percent_of_core"] is not None:
        print(
            f"manager: {fmt(mgr['steady_cpu_percent_of_core'])}% of a core in steady phase, "
            f"RSS {fmt(mgr['rss_mb'])} MB",
            file=out,
        )
    for sample in report["error_samples"][:5]:
        print(f"  error: {sample}", file=out)
    if "manager_profile" in report:
        print_profile(report["manager_profile"], file=out, title="manager profile (steady)")


def steady(report: dict[str, Any], rpc: str) -> dict[str, Any]:
    """The steady-phase figures of one RPC."""
    return report["rpcs"][rpc]["steady"]


@contextlib.contextmanager
def target(args: argparse.Namespace) -> Iterator[tuple[str, Path, int | None]]:
    """Yield (manager address, CA dir, manager pid or None), spawning a Manager if asked."""
    if args.spawn_manager:
        db = args.db
        with contextlib.ExitStack() as stack:
            if db and db.startswith("postgres") and args.fresh_db:
                db = stack.enter_context(fresh_postgres(db))
            cert_dir = args.cache_dir / "ca"
            manager = stack.enter_context(
                spawn_manager(cert_dir=cert_dir, db_url=db, extra_args=args.manager_arg or ())
            )
            print(
                f"spawned fleet-manager pid {manager.pid} on {manager.address} ({manager.db_url})",
                file=sys.stderr,
            )
            yield manager.address, cert_dir, manager.pid
    else:
        if not args.manager or not args.ca_dir:
            raise SystemExit("give --manager HOST:PORT and --ca-dir DIR, or --spawn-manager")
        host = args.manager.rpartition(":")[0]
        if host not in ("127.0.0.1", "localhost"):
            raise SystemExit("the simulator only talks to 127.0.0.1")
        yield args.manager, args.ca_dir, args.manager_pid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's flags (shared with the scripts built on it)."""
    parser.add_argument("--manager", help="HOST:PORT of a running Manager (127.0.0.1 only)")
    parser.add_argument("--ca-dir", type=Path, help="directory with ca.crt and ca.key")
    parser.add_argument("--manager-pid", type=int, help="pid of that Manager, to report its CPU")
    parser.add_argument(
        "--spawn-manager", action="store_true", help="start a fleet-manager child process"
    )
    parser.add_argument("--db", help="database URL for --spawn-manager (default: SQLite)")
    parser.add_argument(
        "--no-fresh-db",
        dest="fresh_db",
        action="store_false",
        help="use the --db PostgreSQL database as is instead of a fresh one next to it",
    )
    parser.add_argument(
        "--manager-arg", action="append", help="extra fleet-manager argument (repeatable)"
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="cert cache")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds, ramp included")
    parser.add_argument("--ramp", type=float, default=None, help="seconds (default: duration/4)")
    parser.add_argument("--heartbeat-interval", type=float, default=10.0)
    parser.add_argument("--metrics-interval", type=float, default=30.0)
    parser.add_argument("--agents-interval", type=float, default=60.0)
    parser.add_argument("--agents", type=int, default=3, help="agents per node")
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--timeout", type=float, default=10.0, help="per-RPC deadline, seconds")
    parser.add_argument("--procs", type=int, default=1, help="simulator processes")
    parser.add_argument("--prefix", default="sim", help="node id prefix")
    parser.add_argument(
        "--heartbeat-max-skip",
        type=int,
        default=0,
        help="skip heartbeats like a Daemon with manager.heartbeat_max_skip = N (0: never)",
    )
    parser.add_argument(
        "--client",
        choices=("grpclib", "raw"),
        default="grpclib",
        help="grpclib Channel per node, or the lean hand-written HTTP/2 client (bench/_rawh2.py)",
    )
    parser.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    parser.add_argument(
        "--profile-manager",
        type=Path,
        help="py-spy the Manager over the steady phase into this file (raw stacks)",
    )


def config_from(args: argparse.Namespace, address: str, cert_dir: Path) -> SimConfig:
    ramp = args.ramp if args.ramp is not None else args.duration / 4
    return SimConfig(
        address=address,
        cert_dir=cert_dir,
        nodes=args.nodes,
        duration=args.duration,
        ramp=ramp,
        heartbeat_interval=args.heartbeat_interval,
        metrics_interval=args.metrics_interval,
        agents_interval=args.agents_interval,
        agents_per_node=args.agents,
        jitter=args.jitter,
        timeout=args.timeout,
        prefix=args.prefix,
        client=args.client,
        heartbeat_max_skip=args.heartbeat_max_skip,
    )


def simulate_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare certificates, start or reach the Manager, run, return the report."""
    with target(args) as (address, ca_dir, pid):
        names = [f"{args.prefix}-{i:05d}" for i in range(args.nodes)]
        t = time.perf_counter()
        cert_dir = ensure_node_certs(ca_dir, names, cache_dir=args.cache_dir)
        print(f"{len(names):,} node certificates ready in {time.perf_counter() - t:.1f}s "
              f"({cert_dir})", file=sys.stderr)  # fmt: skip
        config = config_from(args, address, cert_dir)
        return run(config, procs=args.procs, manager_pid=pid, profile=args.profile_manager)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetsim", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        report = simulate_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    print_report(report, file=sys.stderr if args.json else sys.stdout)
    if args.json:
        emit_json(report)
    return 1 if report["errors_total"] else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
