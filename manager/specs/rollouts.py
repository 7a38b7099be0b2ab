"""RolloutDriver: moves a spec's nodes to its new revision in waves, and stops on failures.

Every apply starts a rollout of the new revision R (from the previous revision P). Its
state, policy and per-node progress live in the database (``fleet_rollout``,
``fleet_rollout_node``), so a restarted Manager picks it up where it was; deadlines
count from the persisted push times. One step, for each running or paused rollout:

1. **Judge the nodes in progress.** Done: the node reports R ``APPLIED`` and running,
   and every agent of R on it is synced ``RUNNING`` at R (an agent with
   ``autostart = false`` only has to be there). Failed: it reports R ``REFUSED`` or
   ``FAILED``, or it is not done ``healthy_deadline`` after its push.
2. **Stop** when more than ``max_failures`` nodes failed: with ``auto_rollback`` and
   the rollback revision fleetctl pre-signed, that revision becomes current and goes to
   every node at once (``rolled_back``); otherwise ``failed``, and the nodes not moved
   keep the revision they run.
3. **Move nodes at once** that R targets, are online and run no older revision of the
   spec (new nodes, nodes that never had it): they are tracked as wave 0.
4. **Start the next wave** (only while ``running``, not ``paused``): online nodes that
   still hold an older revision, in node-id order, as many as keep the nodes in
   progress within ``max_unavailable`` ("N" or "N%" of the nodes the waves cover,
   rounded up, at least 1).
5. **Finish**: nothing in progress and no online node left to move → ``succeeded``.
   Offline nodes are not waited for: they get R when they come back.

Steps run every ``interval`` while a rollout is active, and at once when something it
waits for happens (a SyncAgentStates or ApplySpecs reply from a node in progress, an
apply, a resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from common.specdoc import SpecDoc, SpecError, parse_payload

from ..leases import Lease
from ..store import ONLINE
from ..store.models import (
    ACTIVE_ROLLOUT_STATES,
    FAILED,
    INTERRUPTED,
    NODE_DONE,
    NODE_FAILED,
    NODE_IN_PROGRESS,
    RUNNING,
    SUCCEEDED,
    Rollout,
)
from ..store.specs import AgentAtRevision, NodeFacts, RolloutNodeRow, SpecStateRow, SpecStore
from .catalog import RevisionCatalog
from .controller import SpecController
from .desired import STATUS_APPLIED, STATUS_FAILED, STATUS_REFUSED, kept_revision
from .policy import Policy

log = logging.getLogger(__name__)

# When no rollout is active, look again this often anyway (another Manager may start one).
IDLE_INTERVAL = 30.0
# A step reads every node of the rollout: when news keeps arriving (a thousand nodes
# reporting), steps are spaced by at least this much, or by twice the last step's
# duration if that is longer, so that they do not hold the database back to back.
MIN_STEP_GAP = 0.25
_LISTED = 10  # failed nodes named in a rollout's reason


@dataclass
class Progress:
    """Where a rollout stands: the nodes it moved, and the targeted nodes it has not."""

    rows: dict[str, RolloutNodeRow]
    # Targeted nodes not moved yet that still hold an older revision (wave candidates).
    pending_online: list[str]
    pending_offline: list[str]
    # Targeted online nodes not moved yet that hold no older revision: moved at once.
    at_once: list[str]

    def count(self, state: str) -> int:
        return sum(1 for row in self.rows.values() if row.state == state)

    @property
    def failed_nodes(self) -> list[str]:
        return sorted(n for n, row in self.rows.items() if row.state == NODE_FAILED)


async def load_progress(
    store: SpecStore, catalog: RevisionCatalog, rollout: Rollout, doc: SpecDoc
) -> tuple[Progress, dict[str, NodeFacts], dict[str, SpecStateRow]]:
    """A rollout's :class:`Progress`, with the node facts and spec states it was built on."""
    facts = {f.node_id: f for f in await store.node_facts()}
    states = {s.node_id: s for s in await store.spec_states(name=rollout.spec)}
    rows = {row.node_id: row for row in await store.rollout_nodes([rollout.id])}
    targets = await catalog.targets_of((rollout.spec, s.revision) for s in states.values())
    progress = Progress(rows=rows, pending_online=[], pending_offline=[], at_once=[])
    for node in facts.values():
        if node.node_id in rows or not doc.target.matches(node.node_id, node.labels):
            continue
        state = states.get(node.node_id)
        seen = state.revision if state is not None else 0
        target = targets.get((rollout.spec, seen))
        if kept_revision(rollout.revision, node.node_id, node.labels, seen, target):
            if node.status == ONLINE:
                progress.pending_online.append(node.node_id)
            else:
                progress.pending_offline.append(node.node_id)
        elif node.status == ONLINE:
            progress.at_once.append(node.node_id)
    progress.pending_online.sort()
    progress.pending_offline.sort()
    progress.at_once.sort()
    return progress, facts, states


def unhealthy_agents(
    doc: SpecDoc, revision: int, agents: Mapping[str, AgentAtRevision]
) -> list[str]:
    """Why the agents of ``doc`` on a node do not count as up at ``revision`` yet."""
    problems = []
    for agent in doc.agents:
        synced = agents.get(agent.id)
        if synced is None or synced.spec_revision != revision:
            problems.append(f"agent {agent.id} not reported at revision {revision}")
        elif agent.autostart and synced.status != "RUNNING":
            problems.append(f"agent {agent.id} is {synced.status}")
    return problems


def judge(
    row: RolloutNodeRow,
    *,
    revision: int,
    doc: SpecDoc,
    state: SpecStateRow | None,
    agents: Mapping[str, AgentAtRevision],
    node_status: str,
    deadline: float,
    now: float,
) -> tuple[str, str] | None:
    """(NODE_DONE or NODE_FAILED, reason) for a node in progress, or None: not yet."""
    problems: list[str] = []
    if state is not None and state.revision == revision:
        if state.status in (STATUS_REFUSED, STATUS_FAILED):
            return NODE_FAILED, f"{state.status}: {state.reason or 'no reason given'}"
        if state.status == STATUS_APPLIED and state.running_revision == revision:
            problems = unhealthy_agents(doc, revision, agents)
            if not problems:
                return NODE_DONE, ""
    if now < row.pushed_at + deadline:
        return None
    if node_status != ONLINE:
        problems = ["node is offline"]
    elif state is None or state.revision != revision:
        problems = [f"it reports revision {state.revision if state else 0}"]
    return NODE_FAILED, f"not healthy within {deadline:g} s: {'; '.join(problems[:3])}"


class RolloutDriver:
    """Drives every active rollout (see module doc); owned by the ManagerApp."""

    def __init__(
        self,
        *,
        store: SpecStore,
        catalog: RevisionCatalog,
        controller: SpecController,
        interval: float = 1.0,
        lease: Lease | None = None,
        elsewhere: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._lease = lease
        self._elsewhere = elsewhere
        self._catalog = catalog
        self._controller = controller
        self._interval = interval
        self._clock = clock
        self._wake = asyncio.Event()
        self._watching: set[str] = set()  # nodes in progress in some rollout
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def poke(self) -> None:
        """Step soon (an apply, a resume, or news from a node); without the duties
        lease, ask the Manager that holds it (``elsewhere``)."""
        if self._lease is not None and not self._lease.held:
            self._elsewhere()
        self._wake.set()

    def node_reported(self, node_id: str) -> None:
        """A node synced or answered ApplySpecs: step if a rollout waits for it."""
        if node_id in self._watching:
            self._wake.set()

    # ---- lifecycle ----

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("rollout driver already started")
        self._task = asyncio.create_task(self._run(), name="rollout-driver")

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    async def wait_closed(self) -> None:
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            active = True
            started = loop.time()
            try:
                active = await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("rollouts: step failed (%s); retrying", exc)
            took = loop.time() - started
            gap = max(MIN_STEP_GAP, 2 * took) if active else 0.0
            if gap and not self._closing:
                await asyncio.sleep(gap)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), self._interval if active else IDLE_INTERVAL
                )
            self._wake.clear()

    # ---- one step ----

    async def step(self) -> bool:
        """Advance every active rollout once; True if any is still active."""
        if self._lease is not None and not self._lease.held:
            # The duties lease holder drives; it is poked when this Manager gets it.
            self._watching = set()
            return False
        watching: set[str] = set()
        active = False
        for rollout in await self._store.active_rollouts():
            if self._closing:
                break
            in_progress = await self._advance(rollout)
            if in_progress is not None:
                active = True
                watching |= in_progress
        self._watching = watching
        return active

    async def _advance(self, rollout: Rollout) -> set[str] | None:
        """One step of one rollout: the nodes it now waits for, or None once it ended."""
        now = self._clock()
        spec = await self._store.get_spec(rollout.spec)
        current = await self._catalog.get(rollout.spec, rollout.revision)
        if spec is None or spec.deleted or spec.revision != rollout.revision or current is None:
            # The spec moved on without this rollout being told (e.g. another Manager).
            await self._store.set_rollout_state(
                rollout.id,
                state=INTERRUPTED,
                reason="the spec changed meanwhile",
                now=now,
                only_from=ACTIVE_ROLLOUT_STATES,
            )
            return None
        doc = current.doc
        policy = Policy.from_json(rollout.policy)
        progress, facts, states = await load_progress(self._store, self._catalog, rollout, doc)
        rows = progress.rows

        # 1. Judge the nodes in progress.
        busy = [row for row in rows.values() if row.state == NODE_IN_PROGRESS]
        agents = await self._store.spec_agents(rollout.spec, [r.node_id for r in busy])
        outcomes: list[tuple[str, str, str]] = []
        for row in busy:
            node = facts.get(row.node_id)
            verdict: tuple[str, str] | None
            if node is None or not doc.target.matches(node.node_id, node.labels):
                verdict = NODE_DONE, "no longer targeted"
            else:
                verdict = judge(
                    row,
                    revision=rollout.revision,
                    doc=doc,
                    state=states.get(row.node_id),
                    agents=agents.get(row.node_id, {}),
                    node_status=node.status,
                    deadline=policy.healthy_deadline,
                    now=now,
                )
            if verdict is not None:
                outcomes.append((row.node_id, *verdict))
                row.state, row.reason = verdict
                log.info(
                    "rollout of %s revision %d: node %s %s%s",
                    rollout.spec,
                    rollout.revision,
                    row.node_id,
                    verdict[0],
                    f" ({verdict[1]})" if verdict[1] else "",
                )
        if outcomes:
            await self._store.finish_nodes(rollout.id, outcomes, now)

        # 2. Stop on too many failures.
        failed = progress.failed_nodes
        if len(failed) > policy.max_failures:
            await self._stop(rollout, policy, [rows[n] for n in failed], now)
            return None

        # 3. Nodes that hold no older revision move at once.
        if progress.at_once:
            await self._move(rollout, 0, progress.at_once, now)
            for node_id in progress.at_once:
                rows[node_id] = RolloutNodeRow(rollout.id, node_id, 0, NODE_IN_PROGRESS, now)

        # 4. The next wave.
        wave_rows = [row for row in rows.values() if row.wave > 0]
        if rollout.state == RUNNING and progress.pending_online:
            covered = len(wave_rows) + len(progress.pending_online) + len(progress.pending_offline)
            changing = sum(1 for row in wave_rows if row.state == NODE_IN_PROGRESS)
            room = policy.wave_size(covered) - changing
            if room > 0:
                chosen = progress.pending_online[:room]
                rollout.wave += 1
                await self._move(rollout, rollout.wave, chosen, now)
                for node_id in chosen:
                    rows[node_id] = RolloutNodeRow(
                        rollout.id, node_id, rollout.wave, NODE_IN_PROGRESS, now
                    )
                progress.pending_online = progress.pending_online[room:]

        # 5. Finished?
        in_progress = {n for n, row in rows.items() if row.state == NODE_IN_PROGRESS}
        if in_progress or progress.pending_online:
            return in_progress
        reason = f"{progress.count(NODE_DONE)} node(s) done"
        if failed:
            reason += f", {len(failed)} failed (tolerated: max_failures {policy.max_failures})"
        if progress.pending_offline:
            reason += (
                f"; {len(progress.pending_offline)} offline node(s) get revision "
                f"{rollout.revision} when they return"
            )
        if await self._store.set_rollout_state(
            rollout.id, state=SUCCEEDED, reason=reason, now=now, only_from=ACTIVE_ROLLOUT_STATES
        ):
            log.info(
                "rollout of %s revision %d succeeded: %s", rollout.spec, rollout.revision, reason
            )
        return None

    async def _move(self, rollout: Rollout, wave: int, node_ids: Sequence[str], now: float) -> None:
        await self._store.start_nodes(rollout.id, wave=wave, node_ids=node_ids, now=now)
        log.info(
            "rollout of %s revision %d: %s %s",
            rollout.spec,
            rollout.revision,
            f"wave {wave}:" if wave else "at once:",
            ", ".join(node_ids),
        )
        self._controller.reconcile_nodes(node_ids)

    async def _stop(
        self, rollout: Rollout, policy: Policy, failed: Sequence[RolloutNodeRow], now: float
    ) -> None:
        """Too many failures: roll back when asked and possible, else fail."""
        named = "; ".join(f"{row.node_id}: {row.reason}" for row in failed[:_LISTED])
        if len(failed) > _LISTED:
            named += f"; and {len(failed) - _LISTED} more"
        reason = f"{len(failed)} node(s) failed (max_failures {policy.max_failures}): {named}"
        if policy.auto_rollback:
            why_not = self._cannot_roll_back(rollout, now)
            if why_not:
                reason += f"; not rolled back: {why_not}"
            else:
                reason += (
                    f"; rolled back to revision {rollout.rollback_revision} "
                    f"(the content of revision {rollout.from_revision})"
                )
                if await self._store.roll_back(rollout, reason=reason, now=now):
                    log.warning(
                        "rollout of %s revision %d: %s", rollout.spec, rollout.revision, reason
                    )
                    self._controller.reconcile_all()
                    return
                reason += " failed: the spec changed meanwhile"
        if await self._store.set_rollout_state(
            rollout.id, state=FAILED, reason=reason, now=now, only_from=ACTIVE_ROLLOUT_STATES
        ):
            log.warning(
                "rollout of %s revision %d failed: %s", rollout.spec, rollout.revision, reason
            )

    @staticmethod
    def _cannot_roll_back(rollout: Rollout, now: float) -> str:
        if not rollout.rollback_revision or not rollout.rollback_payload:
            return "no rollback revision was sent with the apply"
        try:
            doc = parse_payload(bytes(rollout.rollback_payload))
        except SpecError as exc:
            return f"the rollback revision is not valid: {exc}"
        if doc.expired(now):
            return f"the rollback revision {rollout.rollback_revision} expired"
        return ""
