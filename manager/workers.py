"""``manager.workers``: several Manager processes on one host sharing its ports.

One Manager process is one core of TLS + HTTP/2 in Python (docs/performance.md). With
``workers = N`` (or ``"auto"``, one per core) ``fleet-manager`` becomes a small parent
that starts N worker processes and supervises them; each worker is a whole
:class:`~manager.app.ManagerApp`, exactly like a replica on another host (PostgreSQL only:
the duties lease, the change feed and every cache work across processes as they do
across hosts, docs/manager.md "Several Managers").

* **Ports**: every worker binds the gRPC, enrollment and HTTP ports with ``SO_REUSEPORT``;
  the kernel spreads new connections over the workers by their addresses, so the
  long-lived Daemon connections end up evenly spread. A port of 0 is resolved once, in
  the parent, which holds a bound (never listening) socket on it for its whole life so
  that every worker, and every restarted worker, gets the same port.
* **Metrics**: the parent gives the workers a fresh ``PROMETHEUS_MULTIPROC_DIR``; any
  worker's ``/metrics`` renders every worker's figures combined (manager/metrics.py).
  A dead worker's live gauges are dropped (``mark_process_dead``), its counters kept.
* **Signals**: SIGTERM or SIGINT stops every worker gracefully (a second one kills them);
  SIGHUP is passed on (each worker reloads its certificates). Workers ignore SIGINT, so a
  Ctrl-C that reaches the whole process group stops them once, through the parent.
* **Failures**: a worker that fails to start stops the whole Manager with its reason (a
  busy port, a bad certificate: restarting would not help). A worker that dies later is
  restarted with backoff, and the others go on serving meanwhile. A worker whose parent
  died stops by itself within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from common.backoff import Backoff

from .config import ManagerConfig, split_host_port
from .metrics import MULTIPROC_ENV

log = logging.getLogger(__name__)

# How long the parent waits for workers to finish a graceful stop before killing them.
STOP_TIMEOUT = 30.0
# A worker that ran this long before it died restarts at once (backoff forgotten).
HEALTHY_RUN = 60.0


def reserve_ports(config: ManagerConfig) -> tuple[ManagerConfig, list[socket.socket]]:
    """Resolve every listen address with port 0 to one free port, shared by the workers.

    Returns the config with concrete ports and the sockets holding them: bound with
    ``SO_REUSEPORT`` but never listening, so they take no connection of their own.
    """
    held: list[socket.socket] = []
    changes: dict[str, Any] = {}
    for name, key in (
        ("grpc_listen", "grpc.listen"),
        ("http_listen", "server.listen"),
        ("enroll_listen", "enroll.listen"),
    ):
        listen = getattr(config, name)
        if not listen:
            continue
        host, port = split_host_port(listen, key)
        if port:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host or "0.0.0.0", 0))
        except OSError as exc:
            sock.close()
            for other in held:
                other.close()
            raise OSError(f"cannot reserve a port on {host} ({key}): {exc.strerror}") from None
        held.append(sock)
        bound = sock.getsockname()[1]
        changes[name] = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    return (replace(config, **changes) if changes else config), held


@dataclass
class _Worker:
    index: int
    process: BaseProcess | None = None
    conn: multiprocessing.connection.Connection | None = None
    started: float = 0.0
    ready: bool = False
    ever_ready: bool = False
    restart_at: float | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=1.0, maximum=30.0))


class WorkerSupervisor:
    """The parent of ``config.worker_count`` worker processes (see module doc)."""

    def __init__(self, config: ManagerConfig) -> None:
        self.count = config.worker_count
        self.config, self._held = reserve_ports(config)
        self._context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(index=i) for i in range(1, self.count + 1)]
        self._metrics_dir = ""
        self._stopping = False
        self._signals = 0
        self._announced = False
        self._ready_line = ""  # the first worker's "manager ready: …", for the parent's line

    # -- signals -----------------------------------------------------------------

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info(
                "received %s: stopping %d workers (again to force)",
                signal.Signals(signum).name,
                self.count,
            )
            self._stopping = True
        else:
            log.warning("second signal: killing the workers")
            self._send(signal.SIGKILL)
            os._exit(1)

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        log.info("received SIGHUP: passing it on to the workers")
        self._send(signal.SIGHUP)

    def _send(self, signum: int) -> None:
        for worker in self._workers:
            process = worker.process
            if process is not None and process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    # -- workers -----------------------------------------------------------------

    def _start(self, worker: _Worker) -> None:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker_main,
            args=(self.config, worker.index, send, os.getpid()),
            name=f"fleet-manager-w{worker.index}",
            daemon=False,
        )
        process.start()
        send.close()  # the child holds its end
        worker.process, worker.conn = process, receive
        worker.started = time.monotonic()
        worker.ready = False
        worker.restart_at = None

    def _exited(self, worker: _Worker) -> str | None:
        """A worker's process ended: forget its live gauges; the reason to stop, if any."""
        process = worker.process
        assert process is not None
        process.join()
        code = process.exitcode
        if process.pid is not None:
            mark_process_dead(process.pid, self._metrics_dir)
        failure = ""
        if worker.conn is not None:
            failure = self._drain(worker)
            worker.conn.close()
        worker.process, worker.conn = None, None
        if self._stopping:
            return None
        if not worker.ever_ready:
            return failure or f"worker {worker.index} exited with code {code} while starting"
        ran = time.monotonic() - worker.started
        if ran >= HEALTHY_RUN:
            worker.backoff.reset()
        delay = worker.backoff.next_delay()
        worker.restart_at = time.monotonic() + delay
        log.warning(
            "worker %d (pid %s) exited with code %s after %.0f s: restarting it in %.1f s",
            worker.index,
            process.pid,
            code,
            ran,
            delay,
        )
        return None

    def _drain(self, worker: _Worker) -> str:
        """Read what a worker said since — one message per start: ``("ready", line)`` or
        ``("failed", why)`` — and return why it could not start ("" if it did not say)."""
        failure = ""
        assert worker.conn is not None
        try:
            while worker.conn.poll():
                kind, text = worker.conn.recv()
                if kind == "ready":
                    worker.ready = worker.ever_ready = True
                    self._ready_line = self._ready_line or text
                    if self._announced:
                        log.info("worker %d is back", worker.index)
                elif kind == "failed":
                    failure = text
        except (EOFError, OSError):
            pass
        return failure

    def _announce(self) -> None:
        if self._announced or not all(w.ready for w in self._workers):
            return
        self._announced = True
        log.info("%s workers=%d pids=%s", self._ready_line, self.count, self.pids())

    def pids(self) -> str:
        return ",".join(
            str(w.process.pid) for w in self._workers if w.process is not None and w.process.pid
        )

    # -- run ---------------------------------------------------------------------

    def run(self) -> int:
        """Start the workers and supervise them until a signal; the exit code."""
        self._metrics_dir = tempfile.mkdtemp(prefix="fleet-manager-metrics-")
        os.environ[MULTIPROC_ENV] = self._metrics_dir  # inherited by every worker
        previous: dict[int, Any] = {}
        for signum, handler in (
            (signal.SIGINT, self._on_stop_signal),
            (signal.SIGTERM, self._on_stop_signal),
            (signal.SIGHUP, self._on_hup),
        ):
            previous[signum] = signal.signal(signum, handler)
        failure: str | None = None
        try:
            log.info("starting %d Manager workers sharing their ports", self.count)
            for worker in self._workers:
                self._start(worker)
            while not self._stopping and failure is None:
                waitables: list[Any] = []
                for worker in self._workers:
                    if worker.process is not None:
                        waitables.append(worker.process.sentinel)
                    if worker.conn is not None:
                        waitables.append(worker.conn)
                multiprocessing.connection.wait(waitables, timeout=0.5)
                now = time.monotonic()
                for worker in self._workers:
                    if worker.conn is not None:
                        failure = self._drain(worker) or failure
                    process = worker.process
                    if process is not None and not process.is_alive():
                        failure = self._exited(worker) or failure
                    due = worker.restart_at is not None and now >= worker.restart_at
                    if worker.process is None and due and not self._stopping:
                        self._start(worker)
                self._announce()
            if failure is not None:
                log.error("cannot start: %s", failure)
            return self._stop(1 if failure is not None else 0)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
            for sock in self._held:
                sock.close()
            os.environ.pop(MULTIPROC_ENV, None)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _stop(self, code: int) -> int:
        self._stopping = True
        self._send(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning(
                    "worker %d did not stop in %.0f s: killing it", worker.index, STOP_TIMEOUT
                )
                process.kill()
                process.join()
        log.info("manager stopped (%d workers)", self.count)
        return code


def worker_main(
    config: ManagerConfig,
    index: int,
    conn: multiprocessing.connection.Connection,
    parent_pid: int,
) -> None:
    """A worker process: one whole Manager on the shared ports (runs in the child)."""
    # Lazy: manager.__main__ is the process entry point (logging, loop, serve).
    from .__main__ import run_worker

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (module doc)
    code = run_worker(config, index=index, parent_pid=parent_pid, report=_reporter(conn))
    conn.close()
    sys.exit(code)


def _reporter(conn: multiprocessing.connection.Connection) -> Callable[[str, str], None]:
    def report(kind: str, text: str) -> None:
        with contextlib.suppress(OSError):
            conn.send((kind, text))

    return report


async def watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Set ``stop`` when the parent is gone (the worker was re-parented)."""
    while not stop.is_set():
        if os.getppid() != parent_pid:
            log.warning("the parent process %d is gone: stopping", parent_pid)
            stop.set()
            return
        await asyncio.sleep(1.0)
