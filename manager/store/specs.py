"""The desired-state store: specs, signed revisions, per-node spec states and rollouts.

Every query the spec RPCs, the controller and the rollout driver make (manager/specs),
on either backend. Changes that must not interleave are conditional updates inside one
transaction: an apply moves ``next_revision`` only from the value the signer saw
(``WHERE next_revision = …``), and a rollout changes state only from an active one, so
two Managers sharing one PostgreSQL cannot both store revision 5, and a rollout that an
apply interrupted cannot later be marked succeeded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.functions import Max
from tortoise.transactions import in_transaction

from common.errors import FailedPrecondition, Unavailable

from .database import Database, as_db_error, db_errors_unavailable
from .group_commit import GroupCommit
from .models import (
    ACTIVE_ROLLOUT_STATES,
    DELETE,
    INTERRUPTED,
    NODE_IN_PROGRESS,
    ROLLBACK,
    ROLLED_BACK,
    RUNNING,
    Agent,
    Rollout,
    RolloutNode,
    Spec,
    SpecRevision,
)
from .spec_rows import (
    CHUNK,
    NODE_FACTS_SQL,
    ROLLOUT_NODES_SQL,
    STATES_SQL,
    AgentAtRevision,
    NewRevision,
    NodeFacts,
    RolloutNodeRow,
    SpecStateRecord,
    SpecStateRow,
    StatesWrite,
    chunks,
    insert_states_sql,
    select_rows,
)

log = logging.getLogger(__name__)


def stale_message(spec: Spec | None, name: str, signed: int) -> str:
    """Why a signed revision is not the one to apply, and what to do."""
    revision = spec.revision if spec is not None else 0
    following = spec.next_revision if spec is not None else 1
    return f"spec {name} is at revision {revision} (next {following}); you signed {signed}: re-run"


class SpecStore:
    """Queries and updates over the desired-state tables (see module doc)."""

    def __init__(self, *, database: Database) -> None:
        self._db = database
        self._pg = database.backend == "postgres"
        self._state_writes: GroupCommit[StatesWrite, None] = GroupCommit(
            self._write_states,
            key=lambda item: item.node_id,
            max_batch=CHUNK,
            name="spec-state-writer",
        )

    async def _rows(
        self,
        sql: str,
        conditions: Sequence[tuple[str, Any]],
        *,
        within: tuple[str, Sequence[Any]] | None = None,
        order: str = "",
    ) -> list[Any]:
        return await select_rows(
            self._db.connection(), self._pg, sql, conditions, within=within, order=order
        )

    # ---- specs and revisions ----

    @db_errors_unavailable
    async def get_spec(self, name: str) -> Spec | None:
        return await Spec.get_or_none(name=name)

    @db_errors_unavailable
    async def list_specs(self, *, include_deleted: bool = False) -> list[Spec]:
        query = Spec.filter(revision__gt=0).order_by("name")
        if not include_deleted:
            query = query.filter(deleted=False)
        return await query

    @db_errors_unavailable
    async def get_revision(self, name: str, revision: int) -> SpecRevision | None:
        return await SpecRevision.get_or_none(name=name, revision=revision)

    @db_errors_unavailable
    async def history(self, name: str, limit: int) -> list[SpecRevision]:
        """Revisions of ``name``, newest first."""
        return await SpecRevision.filter(name=name).order_by("-revision").limit(limit)

    @db_errors_unavailable
    async def apply_revision(
        self,
        *,
        new: NewRevision,
        policy: Mapping[str, Any],
        from_revision: int,
        rollback: NewRevision | None,
        now: float,
    ) -> tuple[Spec, Rollout, list[Rollout]]:
        """Store ``new`` as the spec's current revision and start its rollout.

        One transaction: the spec's ``next_revision`` moves from ``new.revision`` only
        (else ``FailedPrecondition``: somebody applied in between), an active rollout of
        the spec is marked interrupted, and a running rollout is created. Returns the
        spec, the new rollout and the rollouts it interrupted.
        """
        try:
            async with in_transaction():
                spec = await Spec.get_or_none(name=new.name)
                if spec is None:
                    spec = await Spec.create(name=new.name, revision=0, next_revision=1)
                moved = await Spec.filter(name=new.name, next_revision=new.revision).update(
                    revision=new.revision,
                    next_revision=new.revision + 1,
                    deleted=False,
                    updated_at=now,
                    updated_by=new.applied_by,
                )
                if not moved:
                    raise FailedPrecondition(stale_message(spec, new.name, new.revision))
                await self._insert_revision(new, now)
                interrupted = await self._interrupt(
                    new.name, f"superseded by revision {new.revision}", now
                )
                rollout = await Rollout.create(
                    spec=new.name,
                    revision=new.revision,
                    from_revision=from_revision,
                    state=RUNNING,
                    policy=dict(policy),
                    rollback_revision=rollback.revision if rollback else 0,
                    rollback_payload=rollback.payload if rollback else None,
                    rollback_signature=rollback.signature if rollback else None,
                    rollback_signer_cert=rollback.signer_cert if rollback else None,
                    rollback_signed_by=rollback.signed_by if rollback else "",
                    started_at=now,
                    updated_at=now,
                    started_by=new.applied_by,
                )
                spec = await Spec.get(name=new.name)
        except IntegrityError:
            # Another Manager created the spec or stored this revision first.
            raise FailedPrecondition(
                stale_message(await Spec.get_or_none(name=new.name), new.name, new.revision)
            ) from None
        return spec, rollout, interrupted

    @db_errors_unavailable
    async def delete_spec(
        self, *, name: str, expected_next: int, applied_by: str, now: float
    ) -> tuple[Spec, list[Rollout]]:
        """Record a ``delete`` revision (the spec's next one) and mark the spec deleted."""
        try:
            async with in_transaction():
                moved = await Spec.filter(
                    name=name, next_revision=expected_next, deleted=False
                ).update(
                    revision=expected_next,
                    next_revision=expected_next + 1,
                    deleted=True,
                    updated_at=now,
                    updated_by=applied_by,
                )
                if not moved:
                    raise FailedPrecondition(f"spec {name} changed meanwhile: re-run")
                await self._insert_revision(
                    NewRevision(name, expected_next, DELETE, b"", b"", b"", "", applied_by), now
                )
                interrupted = await self._interrupt(name, "spec deleted", now)
                spec = await Spec.get(name=name)
        except IntegrityError:
            raise FailedPrecondition(f"spec {name} changed meanwhile: re-run") from None
        return spec, interrupted

    async def _insert_revision(self, new: NewRevision, now: float) -> None:
        await SpecRevision.create(
            name=new.name,
            revision=new.revision,
            kind=new.kind,
            payload=new.payload,
            signature=new.signature,
            signer_cert=new.signer_cert,
            signed_by=new.signed_by,
            applied_by=new.applied_by,
            created_at=now,
        )

    async def _interrupt(self, name: str, reason: str, now: float) -> list[Rollout]:
        active = await Rollout.filter(spec=name, state__in=ACTIVE_ROLLOUT_STATES)
        for rollout in active:
            await Rollout.filter(id=rollout.id, state__in=ACTIVE_ROLLOUT_STATES).update(
                state=INTERRUPTED, reason=reason, updated_at=now
            )
            rollout.state, rollout.reason, rollout.updated_at = INTERRUPTED, reason, now
        return list(active)

    # ---- rollouts ----

    @db_errors_unavailable
    async def latest_rollout(self, name: str) -> Rollout | None:
        return await Rollout.filter(spec=name).order_by("-id").first()

    @db_errors_unavailable
    async def latest_rollouts(self, names: Sequence[str]) -> dict[str, Rollout]:
        """The latest rollout of each spec named (specs without one are absent)."""
        latest: dict[str, Rollout] = {}
        for chunk in chunks(list(names)):
            ids = (
                await Rollout.filter(spec__in=list(chunk))
                .annotate(last=Max("id"))
                .group_by("spec")
                .values_list("last", flat=True)
            )
            for rollout in await Rollout.filter(id__in=list(ids)):
                latest[rollout.spec] = rollout
        return latest

    @db_errors_unavailable
    async def active_rollouts(self) -> list[Rollout]:
        return await Rollout.filter(state__in=ACTIVE_ROLLOUT_STATES).order_by("id")

    @db_errors_unavailable
    async def get_rollout(self, rollout_id: int) -> Rollout | None:
        return await Rollout.get_or_none(id=rollout_id)

    @db_errors_unavailable
    async def rollout_nodes(
        self, rollout_ids: Sequence[int], node_ids: Sequence[str] | None = None
    ) -> list[RolloutNodeRow]:
        """The nodes these rollouts moved (only those of ``node_ids`` when given)."""
        rows: list[Any] = []
        for rollout_id in rollout_ids:
            rows += await self._rows(
                ROLLOUT_NODES_SQL,
                [("rollout_id", rollout_id)],
                within=None if node_ids is None else ("node_id", node_ids),
            )
        return [RolloutNodeRow(*row) for row in rows]

    @db_errors_unavailable
    async def start_nodes(
        self, rollout_id: int, *, wave: int, node_ids: Sequence[str], now: float
    ) -> None:
        """Record that these nodes move now, in ``wave`` (0: at once, not a wave)."""
        async with in_transaction():
            await RolloutNode.bulk_create(
                [
                    RolloutNode(
                        rollout_id=rollout_id,
                        node_id=node_id,
                        wave=wave,
                        state=NODE_IN_PROGRESS,
                        pushed_at=now,
                    )
                    for node_id in node_ids
                ]
            )
            changes: dict[str, Any] = {"updated_at": now}
            if wave:
                changes["wave"] = wave
            await Rollout.filter(id=rollout_id).update(**changes)

    @db_errors_unavailable
    async def finish_nodes(
        self, rollout_id: int, outcomes: Sequence[tuple[str, str, str]], now: float
    ) -> None:
        """Set (node, state, reason) of nodes still in progress (one executemany)."""
        marks = [f"${i}" if self._pg else "?" for i in range(1, 7)]
        sql = (
            f"UPDATE fleet_rollout_node SET state={marks[0]}, reason={marks[1]}, "
            f"finished_at={marks[2]} WHERE rollout_id={marks[3]} AND node_id={marks[4]} "
            f"AND state={marks[5]}"
        )
        params = [
            [state, reason[:1024], now, rollout_id, node_id, NODE_IN_PROGRESS]
            for node_id, state, reason in outcomes
        ]
        async with in_transaction() as tx:
            await tx.execute_many(sql, params)
            await Rollout.filter(id=rollout_id).update(updated_at=now)

    @db_errors_unavailable
    async def set_rollout_state(
        self, rollout_id: int, *, state: str, reason: str, now: float, only_from: Sequence[str]
    ) -> bool:
        """Move a rollout to ``state`` if it is in one of ``only_from``; True if it moved."""
        changed = await Rollout.filter(id=rollout_id, state__in=list(only_from)).update(
            state=state, reason=reason, updated_at=now
        )
        return bool(changed)

    @db_errors_unavailable
    async def roll_back(self, rollout: Rollout, *, reason: str, now: float) -> bool:
        """Make the rollout's pre-signed rollback revision current; the rollout is then
        ``rolled_back``. False (nothing changed) when the spec moved on meanwhile."""
        assert rollout.rollback_payload is not None
        async with in_transaction():
            moved = await Spec.filter(
                name=rollout.spec,
                revision=rollout.revision,
                next_revision=rollout.rollback_revision,
                deleted=False,
            ).update(
                revision=rollout.rollback_revision,
                next_revision=rollout.rollback_revision + 1,
                updated_at=now,
                updated_by="auto-rollback",
            )
            if not moved:
                return False
            await self._insert_revision(
                NewRevision(
                    name=rollout.spec,
                    revision=rollout.rollback_revision,
                    kind=ROLLBACK,
                    payload=bytes(rollout.rollback_payload),
                    signature=bytes(rollout.rollback_signature or b""),
                    signer_cert=bytes(rollout.rollback_signer_cert or b""),
                    signed_by=rollout.rollback_signed_by,
                    applied_by="auto-rollback",
                ),
                now,
            )
            await Rollout.filter(id=rollout.id, state__in=ACTIVE_ROLLOUT_STATES).update(
                state=ROLLED_BACK, reason=reason, updated_at=now
            )
        return True

    # ---- nodes, spec states, agents ----

    @db_errors_unavailable
    async def node_facts(self, node_ids: Sequence[str] | None = None) -> list[NodeFacts]:
        """Every node (or those of ``node_ids``) with labels, status and address."""
        within = None if node_ids is None else ("node_id", node_ids)
        rows = await self._rows(NODE_FACTS_SQL, [], within=within, order=" ORDER BY node_id")
        parsed: dict[str, dict[str, str]] = {}  # label sets repeat across a fleet: read-only
        out = []
        for node_id, raw, status, address in rows:
            if isinstance(raw, str):
                labels = parsed.get(raw)
                if labels is None:
                    labels = parsed[raw] = dict(json.loads(raw) or {})
            else:
                labels = dict(raw or {})
            out.append(NodeFacts(node_id, labels, status, address))
        return out

    @db_errors_unavailable
    async def spec_states(
        self, *, node_ids: Sequence[str] | None = None, name: str = ""
    ) -> list[SpecStateRow]:
        """Reported spec states: of some nodes, of one spec, or all."""
        rows = await self._rows(
            STATES_SQL,
            [("name", name)] if name else [],
            within=None if node_ids is None else ("node_id", node_ids),
        )
        return [SpecStateRow(*row) for row in rows]

    @db_errors_unavailable
    async def replace_spec_states(
        self, node_id: str, states: Sequence[SpecStateRecord], now: float
    ) -> None:
        """A node's complete set of spec states (specs it no longer reports are removed).

        Concurrent calls (every ApplySpecs reply, changed full syncs) are written together
        by group commit: one transaction per batch with one DELETE and one executemany
        INSERT, and this returns once the node's batch committed.
        """
        await self._state_writes.submit(StatesWrite(node_id, tuple(states), now))

    async def _write_states(self, items: list[StatesWrite]) -> list[BaseException | None]:
        pg = self._pg
        ids = [item.node_id for item in items]
        marks = ", ".join(f"${i}" if pg else "?" for i in range(1, len(ids) + 1))
        rows = [
            [item.node_id, s.name, s.revision, s.running_revision, s.status, s.reason, item.now]
            for item in items
            for s in item.states
        ]
        try:
            async with in_transaction() as tx:
                await tx.execute_query(
                    f"DELETE FROM fleet_spec_node_state WHERE node_id IN ({marks})", ids
                )
                if rows:
                    await tx.execute_many(insert_states_sql(pg), rows)
        except Exception as exc:
            failure = as_db_error(exc)
            if failure is None:
                raise
            message = self._db.describe_error(failure)
            log.warning("database error writing spec states of %d nodes: %s", len(items), message)
            return [Unavailable(message) for _ in items]
        return [None for _ in items]

    @db_errors_unavailable
    async def spec_agents(
        self, name: str, node_ids: Sequence[str]
    ) -> dict[str, dict[str, AgentAtRevision]]:
        """node → agent id → (status, revision) of the synced agents of spec ``name``."""
        out: dict[str, dict[str, AgentAtRevision]] = {}
        for chunk in chunks(list(node_ids)):
            rows = await Agent.filter(spec=name, node_id__in=list(chunk)).values_list(
                "node_id", "agent_id", "status", "spec_revision"
            )
            for node_id, agent_id, status, revision in rows:
                out.setdefault(node_id, {})[agent_id] = AgentAtRevision(agent_id, status, revision)
        return out
