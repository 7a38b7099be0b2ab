"""Supervision of one agent: supervisord's state machine with exponential backoff.

States (the wire's ``status``)::

    STOPPED ──start──▶ STARTING ──up start_seconds──▶ RUNNING ──exit──▶ BACKOFF ──delay──▶ STARTING
                          │ exit (fast failure)          │                 ▲
                          └──────────────▶ BACKOFF ───────┘─────────────────┘
    RUNNING ──exit, no restart wanted──▶ EXITED      any ──stop──▶ STOPPING ──▶ STOPPED
    BACKOFF ──start_retries fast failures, or > max_restarts in restart_window──▶ FATAL

* A run counts as *started* once it stays up ``start_seconds``; ``start_retries``
  consecutive failures to get there end in ``FATAL`` (supervisord's ``startretries``).
* After an exit, ``autorestart`` decides: ``always``; ``on-failure`` (exit code not in
  ``exit_codes``, or killed by a signal); ``never`` (→ ``EXITED``).
* Restart delays grow exponentially (``backoff_initial`` × ``backoff_multiplier``ⁿ, capped
  at ``backoff_max``) and start over after a run that lasted ``backoff_reset``. When an
  agent that had started properly crashes, the first restart is immediate (then
  ``backoff_initial``, ×``backoff_multiplier`` …); failures to start back off from the first.
* Flapping: more than ``max_restarts`` automatic restarts within ``restart_window`` →
  ``FATAL``. A manual ``start`` clears ``FATAL`` and the counters.
* Operations (start, stop, restart, update) on one agent are serialised by its ``lock``;
  the caller holds it (see :class:`daemon.agents.Agents`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from schema import daemon_pb, manager_pb

from .adoption import MARK_ENV, Marker
from .config import AgentSpec
from .process import LogFile, ManagedProcess, SpawnError, user_env
from .reconcile import LOCAL, Origin
from .state import AgentRecord
from .textsafe import MAX_LABEL_LEN, clean

log = logging.getLogger(__name__)

STOPPED = "STOPPED"
STARTING = "STARTING"
RUNNING = "RUNNING"
BACKOFF = "BACKOFF"
STOPPING = "STOPPING"
EXITED = "EXITED"
FATAL = "FATAL"
ACTIVE = frozenset({STARTING, RUNNING, BACKOFF, STOPPING})


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces), hex."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def last_stderr_line(log: LogFile, since: int) -> str:
    """The last non-empty line written to ``log`` from byte ``since`` on ("" if none).

    Blocking (reads at most 4 KiB): call from a thread. Put in a failed agent's reason so
    ``fleetctl nodes show`` says *why* it died, not only its exit code."""
    try:
        with open(log.path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < since:  # rotated (truncated) since the spawn
                since = 0
            f.seek(max(since, size - 4096))
            data = f.read()
    except OSError:
        return ""
    # Agents write what they like there (colour codes, terminal titles, bidi overrides):
    # only a clean, bounded copy is reported, never raw bytes (textsafe).
    # Lines end at "\n" only (splitlines would also cut at U+0085, U+2028 and friends).
    lines = [clean(line, 200) for line in data.decode(errors="replace").split("\n")]
    lines = [line for line in lines if line]
    return lines[-1] if lines else ""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown (adopted process)"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit code {code}"


class AgentRunner:
    """One agent's process and supervision state."""

    def __init__(
        self,
        *,
        spec: AgentSpec,
        record: AgentRecord,
        log_dir: Path,
        base_env: Mapping[str, str],
        on_change: Callable[[AgentRunner], None],
        marker: Marker,
        origin: Origin = LOCAL,
    ) -> None:
        self.spec = spec
        self._marker = marker
        self.origin = origin
        # Set once a reconcile removed the agent: an operation that was waiting for the
        # lock must not bring it back.
        self.forgotten = False
        self.record = record
        self.lock = asyncio.Lock()
        self._log_dir = log_dir
        self._base_env = base_env
        self._on_change = on_change
        self.state = STOPPED
        self.status_reason = "not started"
        self.last_exit_code = 0
        self.last_heartbeat = 0
        # Since when we watch the current process (spawn or adoption): the heartbeat
        # watchdog counts silence from here, not from an adopted process' old start.
        self.watched_since = 0.0
        self.registered = False
        self.health = ""
        self.reported_version = ""
        self.info: dict[str, str] = {}
        self.custom_metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._proc: ManagedProcess | None = None
        self._task: asyncio.Task[None] | None = None
        self._hung_task: asyncio.Task[int | None] | None = None
        self._hung_reason = ""
        self._start_outcome: asyncio.Future[str | None] | None = None
        self._stopping = False
        self._restarts: deque[float] = deque()
        self._prompt_first = False  # the current backoff sequence began with a prompt restart
        # config_hash of the config object it was computed from (configs can be large).
        self._hash_of: tuple[object, str] | None = None

    # ---- views ----

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None and not self._proc.exited else 0

    @property
    def pgid(self) -> int:
        return self.pid

    @property
    def spec_hash(self) -> str:
        """Hash of what a spawn runs: command, env, cwd, user (not config or version)."""
        s = self.spec
        return config_hash(
            {"command": list(s.command), "env": dict(s.env), "cwd": s.cwd, "user": s.user}
        )

    @property
    def config(self) -> dict[str, Any]:
        pushed = self.record.pushed_config
        return dict(pushed) if pushed is not None else dict(self.spec.config)

    @property
    def version(self) -> str:
        pushed = self.record.pushed_version
        return pushed if pushed is not None else self.spec.version

    @property
    def config_hash(self) -> str:
        pushed = self.record.pushed_config
        source = pushed if pushed is not None else self.spec.config
        if self._hash_of is None or self._hash_of[0] is not source:
            self._hash_of = (source, config_hash(source))
        return self._hash_of[1]

    @property
    def log_files(self) -> tuple[LogFile, LogFile]:
        return (
            LogFile(
                self._log_dir / f"{self.id}.stdout.log",
                self.spec.log_max_bytes,
                self.spec.log_backups,
            ),
            LogFile(
                self._log_dir / f"{self.id}.stderr.log",
                self.spec.log_max_bytes,
                self.spec.log_backups,
            ),
        )

    def to_info(self) -> daemon_pb.AgentInfo:
        """What ListAgents shows and (as AgentState) the Manager stores: free text made
        clean and cut to the Manager's bounds, so one agent can never get a whole sync
        refused."""
        return daemon_pb.AgentInfo(
            id=self.id,
            type=clean(self.spec.type, MAX_LABEL_LEN),
            status=self.state,
            pid=self.pid,
            version=clean(self.version, MAX_LABEL_LEN),
            start_time=self.record.start_time if self.pid else 0,
            restart_count=self.record.restart_count,
            last_heartbeat=self.last_heartbeat,
            status_reason=clean(self.status_reason),
            config_hash=self.config_hash,
            last_exit_code=self.last_exit_code,
            spec=self.origin.spec,
            spec_revision=self.origin.revision,
        )

    def to_state(self) -> manager_pb.AgentState:
        info = self.to_info()
        return manager_pb.AgentState(
            agent_id=info.id,
            status=info.status,
            pid=info.pid,
            last_heartbeat=info.last_heartbeat,
            type=info.type,
            version=info.version,
            start_time=info.start_time,
            restart_count=info.restart_count,
            status_reason=info.status_reason,
            config_hash=info.config_hash,
            spec=info.spec,
            spec_revision=info.spec_revision,
        )

    # ---- transitions ----

    def _set(self, state: str, reason: str) -> None:
        if state != self.state or reason != self.status_reason:
            log.info(
                "agent %s: %s -> %s%s", self.id, self.state, state, f" ({reason})" if reason else ""
            )
        self.state = state
        self.status_reason = reason
        self._changed()

    def _changed(self) -> None:
        # Supervision must go on whatever the listeners do (persisting may fail: a full
        # disk, an unwritable state directory): a failure there is logged, never raised
        # into the supervision loop, which would leave the agent unsupervised.
        try:
            self._on_change(self)
        except Exception:
            log.exception("agent %s: recording a state change failed", self.id)

    def _resolve_start(self, error: str | None) -> None:
        if self._start_outcome is not None and not self._start_outcome.done():
            self._start_outcome.set_result(error)

    def _env(self) -> dict[str, str]:
        env = dict(self._base_env)
        if self.spec.user:
            env.update(user_env(self.spec.user))
        env.update(self.spec.env)
        env["FLEET_AGENT_ID"] = self.id
        env["FLEET_AGENT_TOKEN"] = self.record.token
        # So that a Daemon finds this process again even if agents.json could not say.
        env[MARK_ENV] = self._marker.stamp(self.id, self.record.token, self.spec_hash)
        return env

    # ---- operations (the caller holds self.lock) ----

    async def start(self) -> str | None:
        """Start unless running; wait until RUNNING (None) or the first failure (reason)."""
        if self._task is not None and not self._task.done() and self.state in (STARTING, RUNNING):
            return None
        await self._cancel_task()
        self._stopping = False
        self._restarts.clear()
        self._start_outcome = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(None), name=f"agent-{self.id}")
        return await self._start_outcome

    def adopt(self, proc: ManagedProcess) -> None:
        """Take over a process that survived a Daemon restart."""
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(proc), name=f"agent-{self.id}")

    async def stop(self, reason: str = "stopped") -> None:
        """Stop the group (stop_signal, stop_timeout, SIGKILL) and end in STOPPED."""
        self._stopping = True
        proc = self._proc
        if proc is not None and not proc.exited:
            self._set(STOPPING, f"{reason}: sent SIG{self.spec.stop_signal}")
            code = await proc.stop(self.spec.stop_signum, self.spec.stop_timeout)
            if code is not None:
                self.last_exit_code = code
        await self._cancel_task()
        self._proc = None
        self.record.pid = 0
        self.record.create_time = 0.0
        self._set(STOPPED, reason)
        self._resolve_start(reason)

    async def restart(self) -> str | None:
        await self.stop("restarting")
        self.record.restart_count += 1
        return await self.start()

    def detach(self) -> None:
        """Stop supervising but leave the process running (graceful Daemon exit)."""
        if self._task is not None:
            self._task.cancel()
        if self._proc is not None:
            self._proc.release()

    async def wait_detached(self) -> None:
        await self._cancel_task()

    async def _cancel_task(self) -> None:
        for task in (self._task, self._hung_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = None
        self._hung_task = None

    def kill_hung(self, silent_for: float) -> None:
        """The agent stopped heartbeating: stop its group; the loop restarts it by policy."""
        proc = self._proc
        if proc is None or proc.exited or (self._hung_task and not self._hung_task.done()):
            return
        self._hung_reason = f"hung: no heartbeat for {silent_for:.0f}s"
        log.warning("agent %s %s: stopping it", self.id, self._hung_reason)
        self._hung_task = asyncio.create_task(
            proc.stop(self.spec.stop_signum, self.spec.stop_timeout), name=f"hung-{self.id}"
        )

    # ---- the supervision loop ----

    async def _supervise(self, adopted: ManagedProcess | None) -> None:
        spec = self.spec
        fast_failures = 0
        backoff_step = 0
        proc = adopted
        stdout, stderr = self.log_files
        while True:
            stderr_since = -1  # an adopted process: its output predates us
            started_at = time.monotonic()
            exited_early = False
            code: int | None = None
            if proc is None:
                self.record.token = secrets.token_urlsafe(32)
                self.registered = False
                self.last_heartbeat = 0
                self._hung_reason = ""
                self._set(STARTING, "")
                stdout, stderr = self.log_files
                stderr_since = await asyncio.to_thread(_size, stderr.path)
                try:
                    proc = await ManagedProcess.spawn(
                        spec.command,
                        env=self._env(),
                        cwd=spec.cwd or None,
                        user=spec.user or None,
                        stdout=stdout,
                        stderr=stderr,
                    )
                except SpawnError as exc:
                    reason = f"spawn failed: {exc}"
                    fast_failures += 1
                    self._resolve_start(reason)
                    if fast_failures > spec.start_retries:
                        self._set(FATAL, f"{reason} (gave up after {fast_failures} attempts)")
                        return
                    backoff_step = await self._backoff(reason, backoff_step, ran=0.0)
                    if backoff_step < 0:
                        return
                    continue
                self._proc = proc
                self.record.pid = proc.pid
                self.record.create_time = proc.create_time
                self.record.start_time = int(time.time())
                self.record.spec_hash = self.spec_hash
                self.watched_since = time.time()
                self._changed()
                try:
                    code = await asyncio.wait_for(proc.wait(), spec.start_seconds)
                    exited_early = True
                except TimeoutError:
                    pass
                if not exited_early:
                    fast_failures = 0
                    self._set(RUNNING, "")
                    self._resolve_start(None)
            else:
                self._proc = proc
                self.watched_since = time.time()
                self._set(RUNNING, f"re-adopted pid {proc.pid} after a Daemon restart")
            if not exited_early:
                code = await proc.wait()
            ran = time.monotonic() - started_at
            await asyncio.to_thread(proc.kill_leftovers)
            if self._stopping:
                return  # stop() owns the final state
            self._proc = None
            proc = None
            self.record.pid = 0
            self.record.create_time = 0.0
            if code is not None:
                self.last_exit_code = code
            reason = self._hung_reason or describe_exit(code)
            if stderr_since >= 0 and (exited_early or code not in spec.exit_codes):
                said = await asyncio.to_thread(last_stderr_line, stderr, stderr_since)
                if said:
                    reason = f"{reason}; stderr: {said}"
            if exited_early:
                fast_failures += 1
                reason = f"exited within start_seconds: {reason}"
                self._resolve_start(reason)
                if fast_failures > spec.start_retries:
                    self._set(FATAL, f"{reason} (gave up after {fast_failures} attempts)")
                    return
            else:
                failed = code is None or code not in spec.exit_codes or bool(self._hung_reason)
                if spec.autorestart == "never" or (spec.autorestart == "on-failure" and not failed):
                    self._set(EXITED, reason)
                    return
            backoff_step = await self._backoff(reason, backoff_step, ran=ran)
            if backoff_step < 0:
                return

    async def _backoff(self, reason: str, step: int, *, ran: float) -> int:
        """Wait before an automatic restart; -1 when flapping made the agent FATAL."""
        spec = self.spec
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - spec.restart_window:
            self._restarts.popleft()
        if len(self._restarts) > spec.max_restarts:
            self._set(
                FATAL,
                f"{reason}; flapping: {len(self._restarts)} restarts within "
                f"{spec.restart_window:.0f}s (max_restarts {spec.max_restarts})",
            )
            return -1
        if ran >= spec.backoff_reset:
            step = 0
        if step == 0:
            # A new sequence. An agent that had started properly and then crashed is
            # restarted at once (the crash is news, not a loop yet); one that failed to
            # start backs off from the first retry, as supervisord does.
            self._prompt_first = ran >= spec.start_seconds
        if self._prompt_first:
            exponent = step - 1
            delay = 0.0 if step == 0 else spec.backoff_initial * spec.backoff_multiplier**exponent
        else:
            delay = spec.backoff_initial * spec.backoff_multiplier**step
        delay = min(delay, spec.backoff_max)
        self._set(BACKOFF, f"{reason}; restarting in {delay:.1f}s")
        if delay:
            await asyncio.sleep(delay)
        self.record.restart_count += 1
        return step + 1

    # ---- the agent's own calls ----

    def token_matches(self, token: str) -> bool:
        return bool(self.record.token) and secrets.compare_digest(self.record.token, token)

    def heard_from(self) -> None:
        self.last_heartbeat = int(time.time())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
