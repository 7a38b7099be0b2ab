"""Pieces every benchmark shares: certificates, a spawned Manager, statistics, tables.

Benchmarks only talk to 127.0.0.1 and bound every loop in time; a spawned Manager is
always stopped (SIGTERM, then SIGKILL) when its ``with`` block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fleet-bench"


# --------------------------------------------------------------------------- certificates


def load_certgen() -> ModuleType:
    """Import ``tools/certgen.py`` (``tools`` is not a package)."""
    name = "fleet_certgen"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "certgen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def dev_certs(directory: Path) -> Path:
    """A dev CA with manager and admin certs in ``directory`` (reused when already there)."""
    load_certgen().dev(directory, [], echo=lambda _line: None)
    return directory


def node_cert_dir(ca_dir: Path, cache_dir: Path) -> Path:
    """Where leaf certificates issued by the CA in ``ca_dir`` are cached (keyed by the CA)."""
    fingerprint = hashlib.sha256((ca_dir / "ca.crt").read_bytes()).hexdigest()[:16]
    return cache_dir / f"nodes-{fingerprint}"


def ensure_node_certs(
    ca_dir: Path, names: Sequence[str], *, cache_dir: Path = DEFAULT_CACHE, role: str = "node"
) -> Path:
    """Issue (once) a leaf per name from the CA in ``ca_dir``; return the directory holding
    ``NAME.crt``/``NAME.key`` and a copy of ``ca.crt``.

    Issued in memory from one loaded CA (~0.4 ms each) and cached on disk, so a rerun
    with the same CA finds them all and issues nothing.
    """
    out = node_cert_dir(ca_dir, cache_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_copy = out / "ca.crt"
    if not ca_copy.exists():
        ca_copy.write_bytes((ca_dir / "ca.crt").read_bytes())
    missing = [n for n in names if not (out / f"{n}.key").exists()]
    if missing:
        ca = load_certgen().CertificateAuthority.load(ca_dir)
        for name in missing:
            cert_pem, key_pem = ca.issue(role, name, ())
            key_path = out / f"{name}.key"
            # Cert first, key last: the key's presence marks a complete pair.
            (out / f"{name}.crt").write_bytes(cert_pem)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key_pem)
    return out


# --------------------------------------------------------------------------- processes


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (children inherit it); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def console_script(name: str) -> str:
    """Path of a console script installed next to this interpreter (fleet-manager, …)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def fleetctl_env(manager_address: str, cert_dir: Path) -> dict[str, str]:
    """The environment for running the real ``fleetctl`` as the dev admin against a
    Manager (no user config file)."""
    return {
        **os.environ,
        "FLEET_MANAGER": manager_address,
        "FLEET_CA": str(cert_dir / "ca.crt"),
        "FLEET_CERT": str(cert_dir / "admin.crt"),
        "FLEET_KEY": str(cert_dir / "admin.key"),
        "FLEET_CONFIG": "/dev/null",
    }


@dataclass
class SpawnedManager:
    """A ``fleet-manager`` child process on 127.0.0.1."""

    address: str
    ca_dir: Path
    pid: int
    log_path: Path
    db_url: str
    popen: subprocess.Popen[bytes] = field(repr=False)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def spawn_manager(
    *,
    cert_dir: Path,
    db_url: str | None = None,
    work_dir: Path | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 60.0,
    log_level: str = "info",
) -> Iterator[SpawnedManager]:
    """Run a real ``fleet-manager`` (SQLite in a temp dir unless ``db_url``) for the block."""
    dev_certs(cert_dir)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-mgr-") as tmp:
        work = work_dir or Path(tmp)
        db = db_url or f"sqlite://{work / 'manager.db'}"
        port = free_port()
        log_path = work / "manager.log"
        argv = [
            console_script("fleet-manager"),
            "--listen",
            f"127.0.0.1:{port}",
            "--http-listen",
            "",
            "--db",
            db,
            "--data-dir",
            str(work / "data"),
            "--cert",
            str(cert_dir / "manager.crt"),
            "--key",
            str(cert_dir / "manager.key"),
            "--ca",
            str(cert_dir / "ca.crt"),
            "--log-level",
            log_level,
            *extra_args,
        ]
        # Every simulated node dials from 127.0.0.1: one address, like a load balancer.
        env = {"FLEET_MANAGER_GRPC_LIMITS_MAX_CONNECTIONS_PER_PEER": "1000000", **os.environ}
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        manager = SpawnedManager(
            address=f"127.0.0.1:{port}",
            ca_dir=cert_dir,
            pid=popen.pid,
            log_path=log_path,
            db_url=db,
            popen=popen,
        )
        try:
            deadline = time.monotonic() + ready_timeout
            while "manager ready" not in manager.output():
                if popen.poll() is not None:
                    raise RuntimeError(f"fleet-manager exited early:\n{manager.output()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fleet-manager not ready:\n{manager.output()[-3000:]}")
                time.sleep(0.05)
            yield manager
        finally:
            stop_process(popen)


def stop_process(popen: subprocess.Popen[Any], timeout: float = 15.0) -> int | None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL; return the exit code."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)
    return popen.returncode


async def _pg_admin(base_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base_url.replace("postgres://", "postgresql://", 1))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_postgres(base_url: str) -> Iterator[str]:
    """A new empty database next to ``base_url``'s, dropped afterwards; yields its URL."""
    name = f"fleet_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(base_url, f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(urlsplit(base_url)._replace(path=f"/{name}"))
    finally:
        asyncio.run(_pg_admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def process_cpu_seconds(pid: int | None = None, *, tree: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (default: this process); with ``tree``, of
    its live child processes too (a Manager with ``manager.workers``)."""
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for each in [process, *process.children(recursive=True)] if tree else [process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = each.cpu_times()
            total += times.user + times.system
    return total


def process_rss_mb(pid: int | None = None, *, tree: bool = False) -> float:
    """RSS of ``pid`` in MiB; with ``tree``, summed over its live child processes too."""
    import psutil

    process = psutil.Process(pid)
    total = 0
    for each in [process, *process.children(recursive=True)] if tree else [process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += each.memory_info().rss
    return total / 2**20


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds of latencies given in seconds."""
    ordered = sorted(values)
    return {
        "p50_ms": percentile(ordered, 50) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "max_ms": (ordered[-1] * 1000) if ordered else math.nan,
    }


# --------------------------------------------------------------------------- output


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, file: TextIO | None = None
) -> None:
    """A plain aligned text table (numbers right-aligned)."""
    out = file or sys.stdout
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    numeric = [
        all(isinstance(row[i], int | float) for row in rows) if rows else False
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    print(line(list(headers)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print(line(row), file=out)


def emit_json(data: Any, *, file: TextIO | None = None) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str), file=file or sys.stdout)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    import psutil

    model = ""
    try:
        for text_line in Path("/proc/cpuinfo").read_text().splitlines():
            if text_line.startswith("model name"):
                model = text_line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from schema import rust_codec_active

        rust = rust_codec_active()
    except ImportError:
        rust = False
    try:
        import uvloop  # noqa: F401

        has_uvloop = True
    except ImportError:
        has_uvloop = False
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "rust_codec_active": rust,
        "uvloop_installed": has_uvloop,
    }


# --------------------------------------------------------------------------- profiles


@contextmanager
def py_spy(pid: int, out: Path | None, *, delay: float, duration: float) -> Iterator[None]:
    """Record ``pid`` with py-spy (raw collapsed stacks in ``out``) from ``delay`` seconds
    on for ``duration`` seconds, while the block runs; nothing when ``out`` is None."""
    if out is None:
        yield
        return
    exe = Path(sys.executable).with_name("py-spy")
    cmd = (
        f"sleep {delay:.1f} && exec {exe if exe.exists() else 'py-spy'} record -p {pid} "
        f"-d {max(1, int(duration))} -r 100 -f raw -o {out} --nonblocking"
    )
    popen = subprocess.Popen(
        ["sh", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield
    finally:
        try:
            popen.wait(delay + duration + 30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)


_IDLE = ("EpollSelector.select", "_connection_worker_thread", "Thread.wait", "select (")


def profile_summary(path: Path, *, top: int = 15) -> dict[str, list[tuple[float, str]]]:
    """Busiest frames of a py-spy raw profile: self time and inclusive time, in percent
    of the non-idle samples (event-loop waits and idle worker threads left out)."""
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    busy = 0
    for text_line in path.read_text().splitlines():
        stack, _, count_text = text_line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if any(marker in frames[-1] for marker in _IDLE) or not frames[-1].strip():
            continue
        count = int(count_text)
        busy += count
        self_time[frames[-1]] = self_time.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def ranked(table: dict[str, int], skip: tuple[str, ...] = ()) -> list[tuple[float, str]]:
        rows = [(100.0 * n / busy, f) for f, n in table.items() if not f.startswith(skip)]
        return sorted(rows, reverse=True)[:top]

    frame_noise = ("<module>", "main (", "_run_module", "_run_code", "BaseEventLoop.",
                   "Handle._run", "Runner.run", "run (asyncio", "Thread.")  # fmt: skip
    return {"busy_samples": [(float(busy), "")], "self": ranked(self_time),
            "inclusive": ranked(inclusive, frame_noise)}  # fmt: skip


def print_profile(summary: dict[str, list[tuple[float, str]]], *, file: TextIO | None = None,
                  title: str = "profile") -> None:  # fmt: skip
    out = file or sys.stdout
    print(f"{title}: {int(summary['busy_samples'][0][0])} busy samples (100 Hz)", file=out)
    for kind in ("self", "inclusive"):
        print(f"  top {kind}:", file=out)
        for pct, frame in summary[kind]:
            print(f"    {pct:5.1f}%  {frame[:140]}", file=out)
