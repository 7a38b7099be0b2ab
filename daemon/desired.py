"""What should run on this host, and the two ways it changes: reload and ApplySpecs.

Desired agents = the ``[[agents]]`` of ``daemon.toml`` + the agents of every accepted
central spec (:mod:`daemon.specs`). :class:`DesiredState` owns that composition and
serialises every change to it:

* :meth:`DesiredState.reload` (SIGHUP, ``DaemonService.ReloadConfig``) re-reads the
  config file the way ``__main__`` first read it (same environment, same flags). A file
  that does not parse or validate, or one that changes a setting only a restart applies,
  is refused as a whole and nothing changes. Otherwise the new agents, labels, ``[specs]``
  policy, log level and ``stop_agents_on_exit`` take effect, and central specs are
  checked again against the new labels and policy.
* :meth:`DesiredState.apply_specs` (``DaemonService.ApplySpecs``) takes the node's
  complete set of signed specs.

Each change runs as a task this object owns (a caller that goes away mid-change does not
leave it half done) and ends with an agent-state sync to the Manager.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from common.errors import FailedPrecondition, FleetError
from schema import manager_pb

from .agents import Agents
from .config import ConfigError, DaemonConfig, restart_needed
from .reconcile import Desired, Result
from .specs import Envelope, HostContext, SpecBook, SpecPlan

log = logging.getLogger(__name__)

T = TypeVar("T")

ConfigLoader = Callable[[], DaemonConfig]
Reloaded = Callable[[DaemonConfig, DaemonConfig], None]


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did (or, with ``dry_run``, would do), or why it was refused."""

    config_file: str
    error: str = ""
    result: Result = field(default_factory=Result)
    dry_run: bool = False

    @property
    def success(self) -> bool:
        return not self.error


def compose(config: DaemonConfig, plan: SpecPlan) -> list[Desired]:
    """daemon.toml's agents (in file order), then those of the specs that run."""
    return [Desired(agent) for agent in config.agents] + plan.desired()


def host_context(config: DaemonConfig, running_owner: dict[str, str]) -> HostContext:
    """What the spec checks need from ``config`` (and who runs which central agent now)."""
    return HostContext(
        node_id=config.node_id,
        labels=dict(config.labels),
        policy=config.specs,
        local_ids=frozenset(a.id for a in config.agents),
        running_owner=running_owner,
    )


def initial(config: DaemonConfig, specs: SpecBook) -> tuple[list[Desired], SpecPlan]:
    """The desired agents at Daemon start: daemon.toml + the stored specs that still pass
    (commit the plan with ``specs.commit(plan, {})`` once the agents exist)."""
    plan = specs.evaluate(None, host_context(config, {}))
    return compose(config, plan), plan


class DesiredState:
    """The one owner of what should run; lifecycle ``close`` / ``wait_closed``."""

    def __init__(
        self,
        *,
        config: DaemonConfig,
        agents: Agents,
        specs: SpecBook,
        load_config: ConfigLoader | None,
        config_file: Path | None,
        on_reload: Reloaded,
        request_sync: Callable[[], None],
    ) -> None:
        self._config = config
        self._agents = agents
        self._specs = specs
        self._load = load_config
        self._file = str(config_file) if config_file else ""
        self._on_reload = on_reload
        self._request_sync = request_sync
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[object]] = set()
        self._closing = False

    @property
    def config(self) -> DaemonConfig:
        """The configuration in effect (the last one a reload accepted)."""
        return self._config

    # ---- lifecycle ----

    def close(self) -> None:
        self._closing = True

    async def wait_closed(self) -> None:
        """Let a change under way finish (each step of it is bounded)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- changes ----

    async def reload(self, *, dry_run: bool = False) -> ReloadOutcome:
        """Re-read the config file and apply the difference; see the module docstring."""
        return await self._exclusive(lambda: self._reload(dry_run))

    async def apply_specs(
        self, envelopes: Sequence[Envelope]
    ) -> tuple[list[manager_pb.SpecState], Result]:
        """Take ``envelopes`` as the node's complete set of central specs."""
        return await self._exclusive(lambda: self._apply_specs(envelopes))

    async def _exclusive(self, work: Callable[[], Awaitable[T]]) -> T:
        if self._closing:
            raise FailedPrecondition("the Daemon is shutting down")

        async def locked() -> T:
            async with self._lock:
                return await work()

        task: asyncio.Task[T] = asyncio.create_task(locked(), name="desired-state-change")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        # Shielded: a caller cancelled mid-change (a deadline, a dropped connection) must
        # not leave agents half reconciled and the spec book uncommitted.
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, FleetError):
            log.error("changing the desired agents failed", exc_info=exc)

    async def _reload(self, dry_run: bool) -> ReloadOutcome:
        what = "reload dry run" if dry_run else "reload"
        if self._load is None:
            return self._refused(
                what, "no config file to reload: the Daemon was started without --config"
            )
        try:
            new = await asyncio.to_thread(self._load)
        except ConfigError as exc:
            return self._refused(what, str(exc))
        keys = restart_needed(self._config, new)
        if keys:
            return self._refused(
                what, f"{self._file}: needs a Daemon restart: {', '.join(keys)} (nothing applied)"
            )
        plan = self._specs.evaluate(None, host_context(new, self._agents.spec_owners()))
        desired = compose(new, plan)
        if dry_run:
            result = self._agents.plan(desired)
            log.info("%s of %s: would do: %s", what, self._file, result.summary())
            return ReloadOutcome(self._file, result=result, dry_run=True)
        result = await self._agents.reconcile(desired)
        self._specs.commit(plan, result.errors)
        old, self._config = self._config, new
        self._on_reload(old, new)
        self._request_sync()
        log.info("reloaded %s: %s", self._file, result.summary())
        return ReloadOutcome(self._file, result=result)

    def _refused(self, what: str, error: str) -> ReloadOutcome:
        log.error("%s refused, nothing changed: %s", what, error)
        return ReloadOutcome(self._file, error=error)

    async def _apply_specs(
        self, envelopes: Sequence[Envelope]
    ) -> tuple[list[manager_pb.SpecState], Result]:
        plan = self._specs.evaluate(
            envelopes, host_context(self._config, self._agents.spec_owners())
        )
        result = await self._agents.reconcile(compose(self._config, plan))
        states = self._specs.commit(plan, result.errors)
        self._request_sync()
        if not result.empty:
            log.info("applied central specs: %s", result.summary())
        return states, result
