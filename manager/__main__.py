"""``fleet-manager`` / ``python -m manager``: configuration, logging, signals, run.

The only place that reads the environment, the config file and flags, and the only
place that installs signal handlers: the first SIGINT/SIGTERM starts a graceful
shutdown (pending heartbeats are written, waiting calls answered), a second one forces
the process out. SIGHUP reloads the Manager's certificate, key and CA file
(``ManagerApp.reload_tls``): new connections get the new certificate, open ones go on.
With ``manager.workers`` above 1 this process becomes the workers' parent
(manager/workers.py) and each worker runs :func:`run_worker`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.conns import quiet_accept_errors, raise_fd_limit

from .app import ManagerApp
from .config import ManagerConfig, load_config
from .workers import WorkerSupervisor, watch_parent

log = logging.getLogger("manager")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet-manager",
        description="Fleet Manager: node registry, liveness, metrics store and admin API "
        "over mutual-TLS gRPC.",
    )
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument("--listen", help="gRPC HOST:PORT (grpc.listen, default 0.0.0.0:50051)")
    p.add_argument(
        "--http-listen",
        help="HTTP HOST:PORT for /healthz /readyz /metrics (server.listen, default "
        "127.0.0.1:8080; empty disables)",
    )
    p.add_argument(
        "--name", help="this Manager's name in logs and leases (manager.name, default HOST:PORT)"
    )
    p.add_argument("--db", help="database URL: sqlite:///path or postgres://… (database.url)")
    p.add_argument(
        "--data-dir",
        help="data directory (manager.data_dir; default /var/lib/fleet/manager as root, "
        "else $XDG_STATE_HOME/fleet/manager)",
    )
    p.add_argument("--cert", help="server certificate (grpc.tls.cert_file)")
    p.add_argument("--key", help="server key (grpc.tls.key_file)")
    p.add_argument("--ca", help="CA certificate verifying clients (grpc.tls.ca_file)")
    p.add_argument("--insecure", action="store_true", help="serve without TLS (development only)")
    p.add_argument(
        "--enroll-listen",
        help="enrollment HOST:PORT where hosts join with a token (enroll.listen, default "
        "0.0.0.0:50053; empty disables)",
    )
    p.add_argument(
        "--enroll-ca-cert", help="issuing CA certificate signing node certificates (enroll.ca_cert)"
    )
    p.add_argument("--enroll-ca-key", help="the issuing CA's key (enroll.ca_key)")
    p.add_argument("--grace", help="liveness grace override, e.g. 30s (liveness.grace)")
    p.add_argument(
        "--heartbeat-flush-interval", help="heartbeat flush interval (heartbeats.flush_interval)"
    )
    p.add_argument(
        "--workers",
        help='worker processes sharing the ports, a number or "auto" (manager.workers, '
        "default 1; more than one needs PostgreSQL)",
    )
    p.add_argument(
        "--event-loop",
        choices=("auto", "asyncio", "uvloop"),
        help="event loop (manager.event_loop, default auto: uvloop when installed)",
    )
    p.add_argument("--log-level", help="debug, info, warning or error (log.level)")
    return p


def config_from_args(args: argparse.Namespace) -> ManagerConfig:
    overrides: dict[str, Any] = {}
    for flag, key in (
        ("listen", "grpc.listen"),
        ("http_listen", "server.listen"),
        ("name", "manager.name"),
        ("db", "database.url"),
        ("data_dir", "manager.data_dir"),
        ("cert", "grpc.tls.cert_file"),
        ("key", "grpc.tls.key_file"),
        ("ca", "grpc.tls.ca_file"),
        ("enroll_listen", "enroll.listen"),
        ("enroll_ca_cert", "enroll.ca_cert"),
        ("enroll_ca_key", "enroll.ca_key"),
        ("grace", "liveness.grace"),
        ("heartbeat_flush_interval", "heartbeats.flush_interval"),
        ("workers", "manager.workers"),
        ("event_loop", "manager.event_loop"),
        ("log_level", "log.level"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.insecure:
        overrides["grpc.tls.enabled"] = False
    return load_config(config_file=args.config, environ=os.environ, overrides=overrides)


async def serve(
    config: ManagerConfig,
    *,
    worker: int | None = None,
    parent_pid: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Run one Manager until a signal. As worker ``worker`` of ``parent_pid``: SIGINT
    is the parent's to handle, the parent's death stops it too, and ``on_ready`` gets
    the ready line once the Manager serves."""
    loop = asyncio.get_running_loop()
    # An accept out of file descriptors: one line per 10 s, not a traceback per
    # pending connection (common/conns.py).
    quiet_accept_errors(loop)
    stop = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("received %s: shutting down (again to force)", signal.Signals(signum).name)
            stop.set()
        else:
            log.warning("second signal: forcing exit")
            os._exit(1)

    for sig in (signal.SIGTERM,) if worker is not None else (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    app = ManagerApp(config=config, worker=worker)
    started = False

    def on_hup() -> None:
        if not started:  # the files are being read for the first time right now
            log.info("received SIGHUP while starting: nothing to reload yet")
            return
        log.info("received SIGHUP: reloading the TLS certificate")
        app.reload_tls()

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await app.start()
    except BaseException:
        app.close()
        await app.wait_closed()
        raise
    started = True
    # What start-up made lives as long as the process: out of the collector's way, so
    # a full collection (common/h2shield.py, after an attack) costs only what came after.
    gc.freeze()
    if on_ready is not None:
        on_ready(app.ready_line())
    watch = asyncio.create_task(watch_parent(parent_pid, stop)) if worker is not None else None
    await stop.wait()
    if watch is not None:
        watch.cancel()
    app.close()
    await app.wait_closed()
    return 0


def _tune_asyncio_tls() -> None:
    """Shrink asyncio's per-connection TLS read buffer from 256 KiB to 16 KiB.

    ``asyncio.sslproto.SSLProtocol`` allocates (and zero-fills) a ``max_size`` buffer
    for every TLS connection: with one long-lived connection per Daemon that is 256 KiB
    of RSS per node (2.5 GB for 10,000 nodes). 16 KiB is one TLS record, the most a
    single ``SSLObject.read`` returns anyway. Process-wide, so it is set here, at the
    entry point, and nowhere else.
    """
    import asyncio.sslproto

    asyncio.sslproto.SSLProtocol.max_size = 16 * 1024


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when asked for, or when installed and ``auto``; else asyncio's own loop.

    uvloop (a dependency on Linux and macOS) roughly halves the CPU per TLS/HTTP-2 request.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise OSError("manager.event_loop is uvloop but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def _logging(config: ManagerConfig, worker: int | None = None) -> None:
    tag = f" w{worker}" if worker is not None else ""
    logging.basicConfig(
        level=config.log_level.upper(),
        format=f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s",
    )


def _run(
    config: ManagerConfig, *, report: Callable[[str, str], None] | None = None, **worker: Any
) -> int:
    """Run one Manager (or one worker) on its event loop; 1 when it cannot start."""
    _tune_asyncio_tls()
    try:
        with asyncio.Runner(loop_factory=_loop_factory(config.event_loop)) as runner:
            return runner.run(serve(config, **worker))
    except OSError as exc:
        reason = str(exc)
    except Exception as exc:
        from common.errors import FleetError

        if not isinstance(exc, FleetError):
            raise
        reason = str(exc)
    log.error("cannot start: %s", reason)
    if report is not None:
        report("failed", reason)
    return 1


def run_worker(
    config: ManagerConfig,
    *,
    index: int,
    parent_pid: int,
    report: Callable[[str, str], None],
) -> int:
    """Entry point of worker ``index`` (manager/workers.py), in its own process."""
    _logging(config, worker=index)
    return _run(
        config,
        worker=index,
        parent_pid=parent_pid,
        on_ready=lambda line: report("ready", line),
        report=report,
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"fleet-manager: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    _logging(config)
    # Every Daemon is a connection: use all the hard limit allows (workers inherit it).
    raise_fd_limit()
    if not config.database_url:
        try:
            Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("cannot start: %s", exc)
            sys.exit(1)
    if config.worker_count > 1:
        try:
            supervisor = WorkerSupervisor(config)
        except OSError as exc:
            log.error("cannot start: %s", exc)
            sys.exit(1)
        sys.exit(supervisor.run())
    sys.exit(_run(config))


if __name__ == "__main__":
    main()
