"""All agents of this Daemon: start-up (adopt or autostart), reconciling to a new desired
set, serialised operations, config updates with rollback, heartbeat watchdog, log
rotation, resource sampling, and persistence of what must survive a Daemon restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)

from .adoption import Found, Marker, find_marked, reckon
from .history import GroupSampler, History
from .jsonlimits import JSONLimits, parse_object
from .process import LogFile, ManagedProcess, same_process
from .reconcile import ADDED, REMOVED, Change, Desired, Result, plan
from .state import AgentRecord, StateStore
from .supervisor import ACTIVE, RUNNING, AgentRunner
from .textsafe import MAX_REASON_LEN, check_label

log = logging.getLogger(__name__)

OPERATIONS = ("start", "stop", "restart")
_HOUSEKEEPING_SECONDS = 1.0
_ROTATE_EVERY = 2
_SAVE_ERROR_LOG_EVERY = 60.0  # seconds between "cannot write agent state" lines


class UpdateFailed(Exception):
    """A pushed update could not be applied (and was rolled back)."""


class Agents:
    """The supervised agents; lifecycle ``start`` / ``close`` / ``wait_closed``."""

    def __init__(
        self,
        *,
        desired: Sequence[Desired],
        state_dir: Path,
        base_env: Mapping[str, str],
        history: History,
        marker: Marker,
        update_limits: JSONLimits | None = None,
        stop_on_exit: bool = True,
        check_peer: bool = True,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._desired = tuple(desired)
        self._store = StateStore(path=state_dir / "agents.json")
        self._marker = marker
        self._update_limits = update_limits or JSONLimits()
        # Whether saving fails, when that was last logged and how many failures since (a
        # full disk fails every save: one line a minute, not one per state change).
        self._save_failing = False
        self._save_logged = 0.0
        self._save_unlogged = 0
        self._log_dir = state_dir / "logs"
        self._base_env = dict(base_env)
        self.history = history
        self._stop_on_exit = stop_on_exit
        self._check_peer = check_peer
        self._notify = on_change
        self._sampler = GroupSampler()
        self.runners: dict[str, AgentRunner] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._reconcile_lock = asyncio.Lock()
        self._started = False
        self._closing = False

    # ---- lifecycle ----

    async def start(self) -> None:
        """Re-adopt agents that outlived the last Daemon, autostart the others.

        The processes to re-adopt are found both from ``agents.json`` and by the mark
        every spawn carries (:mod:`daemon.adoption`), so a stale or missing state file
        never makes a second copy of an agent: a marked process is adopted even when the
        file names another pid (or nothing), other copies of it are stopped, and so are
        marked agents no longer configured.
        """
        if self._started:
            raise RuntimeError("Agents already started")
        self._started = True
        self._log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        records = self._store.load()
        found = await asyncio.to_thread(find_marked, self._marker)
        for desired in self._desired:
            self.runners[desired.id] = self._runner(desired, records.get(desired.id))
        reckoning = reckon(found, wanted=set(self.runners), recorded=records)
        for stale in set(records) - set(self.runners):
            self._stop_orphan(stale, records[stale])
        for extra in reckoning.unconfigured:
            self._stop_orphan(extra.agent_id, _record_of(extra))
        starting = []
        changed = []
        for runner in self.runners.values():
            hit = reckoning.adopt.get(runner.id)
            if hit is not None:
                proc = ManagedProcess.adopt(hit.pid, hit.create_time)
                if proc is not None:
                    self._take_over(runner, hit)
            else:
                proc = ManagedProcess.adopt(runner.record.pid, runner.record.create_time)
            if proc is not None:
                log.info("agent %s: re-adopting pid %d", runner.id, proc.pid)
                runner.adopt(proc)
                if runner.record.spec_hash and runner.record.spec_hash != runner.spec_hash:
                    changed.append(runner)
            else:
                if runner.record.pid:
                    log.info(
                        "agent %s: recorded pid %d is gone (or reused): not adopting",
                        runner.id,
                        runner.record.pid,
                    )
                runner.record.pid = 0
                runner.record.create_time = 0.0
                if runner.record.held_stopped:
                    runner.status_reason = "stopped by request (before the Daemon restarted)"
                elif runner.spec.autostart:
                    starting.append(runner)
        self._save()
        self._tasks = [
            asyncio.create_task(self._stop_duplicate(d), name=f"duplicate-{d.agent_id}-{d.pid}")
            for d in reckoning.duplicates
        ]
        self._tasks += [
            asyncio.create_task(self._autostart(r), name=f"autostart-{r.id}") for r in starting
        ]
        self._tasks += [
            asyncio.create_task(self._apply_changed(r), name=f"respawn-{r.id}") for r in changed
        ]
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="agents-housekeeping"))
        self._tasks.append(asyncio.create_task(self._sampling(), name="agents-sampling"))

    @staticmethod
    def _take_over(runner: AgentRunner, hit: Found) -> None:
        """Make ``runner``'s record describe the marked process ``hit`` it adopts."""
        record = runner.record
        if (record.pid, record.token) != (hit.pid, hit.token):
            log.warning(
                "agent %s: agents.json names pid %d, but its process is pid %d (found by "
                "its mark; the state file was stale): adopting pid %d",
                runner.id,
                record.pid,
                hit.pid,
                hit.pid,
            )
            record.start_time = int(hit.create_time)
        record.pid, record.create_time = hit.pid, hit.create_time
        record.token, record.spec_hash = hit.token, hit.spec_hash
        record.held_stopped = False  # it runs: the last word was to run it

    async def _stop_duplicate(self, found: Found) -> None:
        # A copy of an agent the Daemon had lost track of, beside the one it adopted.
        proc = ManagedProcess.adopt(found.pid, found.create_time)
        runner = self.runners.get(found.agent_id)
        if proc is None or runner is None:
            return
        log.warning(
            "agent %s: pid %d is a second copy (an earlier spawn the Daemon lost track of): "
            "stopping it",
            found.agent_id,
            found.pid,
        )
        await proc.stop(runner.spec.stop_signum, runner.spec.stop_timeout)

    def _stop_orphan(self, agent_id: str, record: AgentRecord) -> None:
        # An agent removed from the config while the Daemon was down: it must not run on
        # unsupervised. It is killed right away (its stop settings are gone with it).
        if not record.pid:
            return
        if same_process(record.pid, record.create_time):
            log.warning(
                "agent %s is no longer configured: killing its group %d", agent_id, record.pid
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record.pid, signal.SIGKILL)

    def _runner(self, desired: Desired, record: AgentRecord | None) -> AgentRunner:
        return AgentRunner(
            spec=desired.spec,
            record=record or AgentRecord(),
            log_dir=self._log_dir,
            base_env=self._base_env,
            on_change=self._changed,
            marker=self._marker,
            origin=desired.origin,
        )

    async def _autostart(self, runner: AgentRunner) -> None:
        async with runner.lock:
            if runner.forgotten:
                return
            error = await runner.start()
        if error:
            log.warning("agent %s did not start: %s", runner.id, error)

    async def _apply_changed(self, runner: AgentRunner) -> None:
        log.info("agent %s: its command, env, cwd or user changed: restarting it", runner.id)
        async with runner.lock:
            if runner.forgotten:
                return
            error = await runner.restart()
        if error:
            log.warning("agent %s did not restart with its new definition: %s", runner.id, error)

    def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()

    async def wait_closed(self) -> None:
        if not self._started:
            return  # never touch the persisted state of agents we did not take over
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        async with self._reconcile_lock:
            pass  # a reconcile under way finishes first; new ones are refused (closing)
        if self._stop_on_exit:
            await asyncio.gather(*(self._stop_for_exit(r) for r in self.runners.values()))
        else:
            for runner in self.runners.values():
                runner.detach()
            for runner in self.runners.values():
                await runner.wait_detached()
            log.info(
                "leaving %d agent(s) running", sum(1 for r in self.runners.values() if r.record.pid)
            )
        self._save()

    async def _stop_for_exit(self, runner: AgentRunner) -> None:
        async with runner.lock:
            await runner.stop("Daemon shutting down")

    async def __aenter__(self) -> Agents:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # ---- change tracking ----

    def _changed(self, runner: AgentRunner) -> None:
        self._save()
        self._notify()

    def _save(self) -> None:
        """Persist the records; never raises. Supervision does not depend on it: what
        runs is tracked in memory, and a Daemon restarted after failed saves finds its
        agents by their marks (:mod:`daemon.adoption`)."""
        try:
            self._store.save({r.id: r.record for r in self.runners.values()})
        except Exception as exc:
            now = time.monotonic()
            if self._save_failing and now - self._save_logged < _SAVE_ERROR_LOG_EVERY:
                self._save_unlogged += 1
                return
            log.error(
                "cannot write agent state (agents are still supervised%s): %s",
                f"; {self._save_unlogged} more failed save(s) since the last line"
                if self._save_unlogged
                else "",
                exc,
            )
            self._save_failing, self._save_logged, self._save_unlogged = True, now, 0
        else:
            if self._save_failing:
                log.info("agent state written again after failed saves")
                self._save_failing, self._save_unlogged = False, 0

    # ---- queries ----

    def get(self, agent_id: str) -> AgentRunner:
        runner = self.runners.get(agent_id)
        if runner is None:
            raise NotFound(f"agent {agent_id!r} is not configured on this node")
        return runner

    def current(self) -> dict[str, Desired]:
        """What runs now: agent id → its definition and origin."""
        return {r.id: Desired(r.spec, r.origin) for r in self.runners.values()}

    def spec_owners(self) -> dict[str, str]:
        """Agent id → the central spec it runs from (agents of daemon.toml left out)."""
        return {r.id: r.origin.spec for r in self.runners.values() if r.origin.spec}

    def set_stop_on_exit(self, value: bool) -> None:
        self._stop_on_exit = value

    def set_update_limits(self, limits: JSONLimits) -> None:
        self._update_limits = limits

    # ---- reconciling ----

    def plan(self, desired: Sequence[Desired]) -> Result:
        """What :meth:`reconcile` would do, touching nothing (a dry run)."""
        return plan(self.current(), desired)

    async def reconcile(self, desired: Sequence[Desired]) -> Result:
        """Make ``desired`` the running set (see :mod:`daemon.reconcile`); one at a time.

        Removed agents stop first, then changed and added ones are applied in parallel,
        each under its runner's lock. The result carries, per agent, the error of a
        start that failed (the agent is then in BACKOFF or FATAL, as after any start).
        """
        async with self._reconcile_lock:
            if self._closing:
                raise FailedPrecondition("the Daemon is shutting down")
            if not self._started:
                raise Unavailable("the Daemon is still starting")
            result = self.plan(desired)
            wanted = {d.id: d for d in desired}
            await asyncio.gather(
                *(self._remove(self.runners[c.agent_id]) for c in result.of(REMOVED))
            )
            outcomes = await asyncio.gather(
                *(self._apply(c, wanted[c.agent_id]) for c in result.changes if c.action != REMOVED)
            )
            errors = {agent_id: error for agent_id, error in outcomes if error}
            for d in desired:  # a new revision of an unchanged agent: same process
                self.runners[d.id].origin = d.origin
            # ListAgents lists agents in the desired order (daemon.toml, then specs).
            self.runners = {d.id: self.runners[d.id] for d in desired}
            self._save()
            self._notify()
            return result.with_errors(errors)

    async def _remove(self, runner: AgentRunner) -> None:
        async with runner.lock:
            await runner.stop("removed from the configuration")
            runner.forgotten = True
            self.runners.pop(runner.id, None)
            self.history.forget(runner.id)
        log.info("agent %s: removed (stopped and forgotten; its logs are kept)", runner.id)

    async def _apply(self, change: Change, desired: Desired) -> tuple[str, str | None]:
        if change.action == ADDED:
            runner = self._runner(desired, None)
            self.runners[runner.id] = runner
            log.info("agent %s: added (%s)", runner.id, desired.origin.label)
            if not desired.spec.autostart:
                return runner.id, None
            async with runner.lock:
                return runner.id, await runner.start()
        runner = self.runners[change.agent_id]
        fields_ = set(change.field_names)
        async with runner.lock:
            if not change.needs_restart:
                self._redefine(runner, desired, fields_)
                log.info(
                    "agent %s: %s updated in place (no restart)",
                    runner.id,
                    ", ".join(change.field_names),
                )
                return runner.id, None
            was_active = runner.state in ACTIVE
            if was_active:
                await runner.stop("definition changed: restarting")
            self._redefine(runner, desired, fields_)
            log.info(
                "agent %s: definition changed (%s)%s",
                runner.id,
                ", ".join(change.field_names),
                ": restarting" if was_active else "",
            )
            if was_active or (desired.spec.autostart and not runner.record.held_stopped):
                return runner.id, await runner.start()
            return runner.id, None

    def _redefine(self, runner: AgentRunner, desired: Desired, fields_: set[str]) -> None:
        runner.spec = desired.spec
        runner.origin = desired.origin
        # A new config or version in the file replaces whatever PushUpdate set before.
        if "config" in fields_:
            runner.record.pushed_config = None
        if "version" in fields_:
            runner.record.pushed_version = None
        self._changed(runner)

    # ---- operations ----

    async def operate(self, agent_id: str, operation: str) -> tuple[AgentRunner, str | None]:
        """Run start/stop/restart to completion; (runner, error or None)."""
        if operation not in OPERATIONS:
            raise InvalidArgument(f"operation {operation!r} is not one of {', '.join(OPERATIONS)}")
        runner = self.get(agent_id)
        async with runner.lock:
            if runner.forgotten:
                raise NotFound(f"agent {agent_id!r} was removed from this node")
            runner.record.held_stopped = operation == "stop"
            if operation == "start":
                error = await runner.start()
            elif operation == "stop":
                await runner.stop("stopped by request")
                error = None
            else:
                error = await runner.restart()
        return runner, error

    async def push_update(
        self, agent_id: str, *, config_json: str, version: str, restart: bool
    ) -> AgentRunner:
        """Store a new config and/or version; restart if asked; roll back on failure.

        Raises :class:`UpdateFailed` (after rolling back) when the restart fails.
        """
        runner = self.get(agent_id)
        new_config: dict[str, Any] | None = None
        if config_json:
            new_config = parse_object("config_json", config_json, self._update_limits)
        if version:
            # Refused when no report could carry it; stored when only longer than what
            # the Manager keeps (64, the Manager's own PushUpdate bound): reported cut.
            check_label("version", version, max_len=MAX_REASON_LEN)
        if new_config is None and not version and not restart:
            raise InvalidArgument("update carries no config, no version and no restart")
        async with runner.lock:
            if runner.forgotten:
                raise NotFound(f"agent {agent_id!r} was removed from this node")
            record = runner.record
            previous = (record.pushed_config, record.pushed_version)
            was_active = runner.state in ACTIVE
            if new_config is not None:
                record.pushed_config = new_config
                # The label belongs to the config it came with: a new config without one
                # has none (it must not keep showing the old config's label).
                record.pushed_version = version
            elif version:
                record.pushed_version = version
            self._changed(runner)
            log.info(
                "agent %s: update stored (config hash %s, version %s)",
                runner.id,
                runner.config_hash[:12],
                runner.version or "-",
            )
            if not restart:
                return runner
            error = await runner.restart()
            if error is None:
                return runner
            record.pushed_config, record.pushed_version = previous
            log.warning(
                "agent %s: restart after update failed (%s): rolling back", runner.id, error
            )
            await runner.stop("rolling back a failed update")
            self._changed(runner)
            rollback_error = await runner.start() if was_active else None
            detail = f"; rollback restart failed too: {rollback_error}" if rollback_error else ""
            raise UpdateFailed(f"restart with the new config failed: {error}{detail}")

    # ---- the agent's own calls ----

    def authenticate(self, agent_id: str, token: str, *, peer_pid: int = 0) -> AgentRunner:
        """The runner of ``agent_id`` if ``token`` is its current secret and, when
        ``peer_pid`` is known and ``check_peer`` is on, the caller is in its process group.

        The group check stops a process that read another agent's token (e.g. from
        ``/proc/<pid>/environ``, readable by the same user) from using it.
        """
        runner = self.runners.get(agent_id)
        if runner is None or not token or not runner.token_matches(token):
            raise PermissionDenied(f"agent {agent_id!r}: unknown agent or wrong token")
        if runner.state not in ACTIVE:
            raise FailedPrecondition(f"agent {agent_id!r} is {runner.state}")
        if self._check_peer and peer_pid and runner.pgid and _pgid(peer_pid) != runner.pgid:
            raise PermissionDenied(
                f"agent {agent_id!r}: calling process {peer_pid} is not in the agent's "
                "process group"
            )
        return runner

    # ---- periodic work ----

    async def _housekeeping(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(_HOUSEKEEPING_SECONDS)
            tick += 1
            now = time.time()
            for runner in self.runners.values():
                timeout = runner.spec.heartbeat_timeout
                if timeout and runner.state == RUNNING and runner.pid:
                    last = max(runner.last_heartbeat, runner.watched_since)
                    if now - last > timeout:
                        runner.kill_hung(now - last)
            if tick % _ROTATE_EVERY == 0:
                files = [f for r in self.runners.values() for f in r.log_files]
                try:
                    await asyncio.to_thread(_rotate_all, files)
                except OSError as exc:
                    log.warning("log rotation failed: %s", exc)

    async def _sampling(self) -> None:
        interval = self.history.interval
        while True:
            await asyncio.sleep(interval)
            groups = {r.id: r.pgid for r in self.runners.values() if r.pgid}
            if not groups:
                continue
            try:
                points = await asyncio.to_thread(self._sampler.sample, groups, time.time())
            except Exception:
                log.exception("resource sampling failed")
                continue
            for agent_id, point in points.items():
                if agent_id in self.runners:  # not removed while we sampled
                    self.history.add(agent_id, point)


def _rotate_all(files: list[LogFile]) -> None:
    for f in files:
        f.rotate_if_needed()


def _record_of(found: Found) -> AgentRecord:
    return AgentRecord(pid=found.pid, create_time=found.create_time, token=found.token)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1
