"""The store API: every query the Manager makes, in one place, on either backend.

Services never touch Tortoise directly; they call :class:`Store`. Every public method
maps database connectivity failures to :class:`~common.errors.Unavailable`. Status
changes are made with conditional updates (``WHERE status = …``) so several Managers
sharing one PostgreSQL never record the same transition twice.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from tortoise.exceptions import IntegrityError
from tortoise.functions import Count
from tortoise.transactions import in_transaction

from common.errors import Unavailable

from .database import Database, as_db_error, db_errors_unavailable
from .events import (
    AgentEventSink,
    EventRow,
    NewEvent,
    insert_events,
    insert_node_events,
    node_event_row,
)
from .group_commit import GroupCommit
from .models import (
    OFFLINE,
    ONLINE,
    REGISTERING,
    STOPPED,
    Agent,
    AgentEvent,
    MetricSample,
    Node,
    NodeEvent,
    SpecNodeState,
)

log = logging.getLogger(__name__)

_CHUNK = 500


@dataclass(frozen=True)
class Transition:
    """A node status change that was recorded (returned for logs and metrics)."""

    node_id: str
    old: str
    new: str
    reason: str


@dataclass(frozen=True)
class RegisterResult:
    created: bool
    transition: Transition | None
    previous_instance: str
    previous_address: str


@dataclass(frozen=True)
class PendingHeartbeat:
    """The newest heartbeat of one node waiting to be flushed."""

    received_at: float
    reported: int


@dataclass(frozen=True)
class AgentRecord:
    """One agent state as a Daemon reported it."""

    agent_id: str
    status: str
    pid: int = 0
    last_heartbeat: int = 0
    type: str = ""
    version: str = ""
    start_time: int = 0
    restart_count: int = 0
    status_reason: str = ""
    config_hash: str = ""
    # The central spec it comes from and the revision it runs ("" / 0: daemon.toml).
    spec: str = ""
    spec_revision: int = 0


class NodeRow(NamedTuple):
    """One node as the list views show it (ListNodes): a plain row, no model object."""

    node_id: str
    hostname: str
    ip: str
    os: str
    arch: str
    labels: dict[str, str]
    daemon_version: str
    agent_version: str
    daemon_address: str
    status: str
    last_heartbeat: float
    registered_at: float
    updated_at: float
    status_since: float
    heartbeat_interval: float
    agent_count: int


class AgentRow(NamedTuple):
    """One agent of the synced view with its node's status (ListAgents)."""

    node_id: str
    agent_id: str
    type: str
    status: str
    pid: int
    version: str
    start_time: int
    restart_count: int
    last_heartbeat: int
    status_reason: str
    config_hash: str
    updated_at: float
    node_status: str
    spec: str
    spec_revision: int


# The list views read raw rows (one query each, agent counts and node statuses joined
# in): building 10,000 Tortoise model objects cost most of a ListNodes.
_NODE_COLUMNS = (
    "SELECT n.node_id, n.hostname, n.ip, n.os, n.arch, n.labels, n.daemon_version, "
    "n.agent_version, n.daemon_address, n.status, n.last_heartbeat, n.registered_at, "
    "n.updated_at, n.status_since, n.heartbeat_interval, "
)
# Agent counts: SQLite is fastest with a count per node on the (node_id, agent_id)
# index (24 ms for 10,000 nodes vs 39 ms joined), PostgreSQL with one grouped count
# joined in (51 ms vs 83 ms).
_NODE_ROWS_SQL = {
    "sqlite": _NODE_COLUMNS
    + "(SELECT COUNT(*) FROM fleet_agent a WHERE a.node_id = n.node_id) "
    + "FROM fleet_node n{where} ORDER BY n.node_id",
    "postgres": _NODE_COLUMNS
    + "COALESCE(c.agents, 0) FROM fleet_node n LEFT JOIN "
    + "(SELECT node_id, COUNT(*) AS agents FROM fleet_agent GROUP BY node_id) c "
    + "ON c.node_id = n.node_id{where} ORDER BY n.node_id",
}
_AGENT_ROWS_SQL = (
    "SELECT a.node_id, a.agent_id, a.type, a.status, a.pid, a.version, a.start_time, "
    "a.restart_count, a.last_heartbeat, a.status_reason, a.config_hash, a.updated_at, "
    "COALESCE(n.status, ''), a.spec, a.spec_revision "
    "FROM fleet_agent a LEFT JOIN fleet_node n ON n.node_id = a.node_id{where} "
    "ORDER BY a.node_id, a.agent_id"
)


def _where(conditions: Sequence[tuple[str, Any]], pg: bool) -> tuple[str, list[Any]]:
    """`` WHERE a = ? AND b = ?`` (``$1``, ``$2`` on PostgreSQL) and its parameters."""
    if not conditions:
        return "", []
    terms = [
        f"{column} = {f'${i}' if pg else '?'}"
        for i, (column, _value) in enumerate(conditions, start=1)
    ]
    return " WHERE " + " AND ".join(terms), [value for _column, value in conditions]


_AGENT_FIELDS = (
    "status",
    "pid",
    "last_heartbeat",
    "type",
    "version",
    "start_time",
    "restart_count",
    "status_reason",
    "config_hash",
    "spec",
    "spec_revision",
)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# Metric ingest (Store.save_metrics): raw SQL, no Tortoise models on the hot path.
# Compact JSON as MetricSample.values' JSONField writes it (its encoder, prebuilt once).
_json_encode = json.JSONEncoder(separators=(",", ":")).encode
# SQLite binds at most 32,766 parameters per statement; 4 per row.
_METRIC_ROWS_PER_STATEMENT = 1000
_METRIC_COLUMNS = 'INSERT INTO fleet_metric_sample (node_id, type, timestamp, "values") '
_METRIC_CONFLICT = " ON CONFLICT (node_id, type, timestamp) DO NOTHING"
# Counted through RETURNING: Tortoise reads an INSERT's status tag ("INSERT oid rows")
# as if its second word were the row count.
_PG_INSERT_METRICS = (
    "WITH new AS ("
    + _METRIC_COLUMNS
    + "SELECT $1, u.type, u.ts, u.v::jsonb "
    + "FROM unnest($2::varchar[], $3::bigint[], $4::text[]) AS u(type, ts, v)"
    + _METRIC_CONFLICT
    + " RETURNING 1) SELECT count(*) FROM new"
)


@functools.lru_cache(maxsize=32)
def _sqlite_metric_sql(rows: int) -> str:
    return _METRIC_COLUMNS + "VALUES " + ",".join(["(?,?,?,?)"] * rows) + _METRIC_CONFLICT


def _sqlite_insert_metrics(
    node_id: str, rows: Sequence[tuple[str, int, str]]
) -> tuple[str, list[Any]]:
    """One multi-row INSERT (one round trip to the SQLite thread, one implicit transaction)."""
    params: list[Any] = []
    for kind, ts, text in rows:
        params += (node_id, kind, ts, text)
    return _sqlite_metric_sql(len(rows)), params


# RegisterNode in batches (Store.register_node, group_commit.py): the node facts a
# registration may set, and the statements that apply a batch (each run once per batch).
_FACT_COLUMNS = (
    "hostname",
    "ip",
    "os",
    "arch",
    "labels",
    "daemon_version",
    "agent_version",
    "daemon_address",
    "heartbeat_interval",
    "instance_id",
)
_NODE_INSERT_COLUMNS = (
    "node_id",
    *_FACT_COLUMNS,
    "status",
    "registered_at",
    "updated_at",
    "last_heartbeat",
    "status_since",
    "last_heartbeat_reported",
    "offline_after",
    "grace",
)
# Set on every registration, after the facts.
_REGISTER_SET_COLUMNS = (
    "updated_at",
    "last_heartbeat",
    "grace",
    "offline_after",
    "status",
    "status_since",
)
_REGISTER_BATCH = 500  # node ids per SELECT … IN (…): well under both backends' limits


def _marks(count: int, pg: bool, start: int = 1) -> list[str]:
    return [f"${i}" for i in range(start, start + count)] if pg else ["?"] * count


def _insert_sql(table: str, columns: Sequence[str], pg: bool) -> str:
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(_marks(len(columns), pg))})"
    )


@functools.lru_cache(maxsize=16)
def _register_update_sql(facts: tuple[str, ...], pg: bool) -> str:
    columns = (*facts, *_REGISTER_SET_COLUMNS)
    marks = _marks(len(columns) + 1, pg)
    assignments = ", ".join(f"{c}={m}" for c, m in zip(columns, marks, strict=False))
    return f"UPDATE fleet_node SET {assignments} WHERE node_id={marks[-1]}"


def _fact_default(column: str) -> Any:
    default = Node._meta.fields_map[column].default
    return default() if callable(default) else default


@dataclass(frozen=True)
class _Registration:
    node_id: str
    facts: Mapping[str, Any]
    now: float
    grace: float


@dataclass(frozen=True)
class _AgentSync:
    node_id: str
    states: Sequence[AgentRecord]
    full: bool
    now: float


_SYNC_BATCH = 100  # nodes per batch (each up to MAX_AGENTS_PER_SYNC agents)
_AGENT_INSERT_COLUMNS = ("node_id", "agent_id", *_AGENT_FIELDS, "updated_at")


@functools.lru_cache(maxsize=2)
def _agent_sql(pg: bool) -> tuple[str, str, str, str]:
    """(INSERT, UPDATE all fields by id, UPDATE updated_at by id, DELETE by id)."""
    columns = (*_AGENT_FIELDS, "updated_at")
    marks = _marks(len(columns) + 1, pg)
    assignments = ", ".join(f"{c}={m}" for c, m in zip(columns, marks, strict=False))
    one, two = _marks(2, pg)
    return (
        _insert_sql("fleet_agent", _AGENT_INSERT_COLUMNS, pg),
        f"UPDATE fleet_agent SET {assignments} WHERE id={marks[-1]}",
        f"UPDATE fleet_agent SET updated_at={one} WHERE id={two}",
        f"DELETE FROM fleet_agent WHERE id={one}",
    )


def _nothing_changed(
    current: Mapping[str, Agent], states: Sequence[AgentRecord], full: bool
) -> bool:
    """True when applying ``states`` would change no agent (only ``updated_at``)."""
    if full and set(current) - {s.agent_id for s in states}:
        return False  # agents to remove
    return all(
        s.agent_id in current
        and all(getattr(current[s.agent_id], f) == getattr(s, f) for f in _AGENT_FIELDS)
        for s in states
    )


def _registration_transitions(
    node_id: str, created: bool, old_status: str, previous_instance: str, new_instance: str
) -> tuple[Transition | None, Transition | None]:
    """What a registration records, in this order: the move to online (None when the node
    already was) and a replaced Daemon instance (None unless another instance id took over).
    """
    online = None
    if old_status != ONLINE:
        reason = "registered" if created else "re-registered"
        online = Transition(node_id, old_status, ONLINE, reason)
    replaced = None
    if not created and previous_instance and new_instance and previous_instance != new_instance:
        reason = f"daemon instance {new_instance} replaced {previous_instance}"
        replaced = Transition(node_id, ONLINE, ONLINE, reason)
    return online, replaced


_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


async def _batch_or_each(
    what: str,
    batch: Callable[[list[_Item]], Awaitable[Sequence[_Result]]],
    one: Callable[[_Item], Awaitable[_Result]],
    items: list[_Item],
    describe: Callable[[BaseException], str],
) -> list[_Result | BaseException]:
    """A GroupCommit batch: ``batch`` in one transaction, else each caller its own outcome.

    A database outage answers every caller ``Unavailable``. A unique-constraint conflict
    (another Manager wrote one of these rows meanwhile, PostgreSQL) or any other failure
    falls back to ``one`` per item, so each caller gets its own result or error.
    """
    try:
        return list(await batch(items))
    except Exception as exc:
        failure = as_db_error(exc)
        if failure is not None and not isinstance(exc, IntegrityError):
            message = describe(failure)
            log.warning("database error in %s (%d nodes): %s", what, len(items), message)
            return [Unavailable(message) for _ in items]
        if failure is None:
            log.exception("%s batch of %d failed: writing one by one", what, len(items))
    results: list[_Result | BaseException] = []
    for item in items:
        try:
            results.append(await one(item))
        except Exception as exc:
            failure = as_db_error(exc)
            if failure is not None and not isinstance(exc, IntegrityError):
                results.append(Unavailable(describe(failure)))
            else:
                results.append(exc)
    return results


# Node events pass through this before they are written: (node id, reason) -> the reason
# to record (possibly amended), or None to record nothing (manager/quotas.py EventQuota).
EventFilter = Callable[[str, str], str | None]


class Store:
    """Queries and updates over the Manager's models.

    ``event_filter`` sees every node event before it is written (the per-node event
    quota); without one, every event is written. ``agent_events`` derives the agent
    events of each changed SyncAgentStates, written in its transaction (manager/events.py),
    and is handed every event once committed — agent events and node status events alike
    (registration, heartbeat flushes, liveness sweeps, Leave): the one place WatchEvents
    is fed from.
    """

    def __init__(
        self,
        *,
        database: Database,
        event_filter: EventFilter | None = None,
        agent_events: AgentEventSink | None = None,
    ) -> None:
        self._db = database
        self._event_filter = event_filter
        self._agent_events = agent_events
        self._pg = database.backend == "postgres"
        self._registrations: GroupCommit[_Registration, RegisterResult] = GroupCommit(
            lambda items: _batch_or_each(
                "register_node",
                self._register_batch,
                self._register_one,
                items,
                database.describe_error,
            ),
            key=lambda item: item.node_id,
            max_batch=_REGISTER_BATCH,
            name="register-node-writer",
        )
        self._agent_syncs: GroupCommit[_AgentSync, tuple[int, int]] = GroupCommit(
            lambda items: _batch_or_each(
                "sync_agents", self._sync_batch, self._sync_one, items, database.describe_error
            ),
            key=lambda item: item.node_id,
            max_batch=_SYNC_BATCH,
            name="agent-sync-writer",
        )

    # ---- nodes ----

    @db_errors_unavailable
    async def register_node(
        self, *, node_id: str, facts: Mapping[str, Any], now: float, grace: float
    ) -> RegisterResult:
        """Create or update a node from RegisterNode; it is online from now on.

        Concurrent registrations are written together, one transaction per batch
        (:meth:`_register_batch`); this returns once the node's batch committed.
        """
        if not set(facts) <= set(_FACT_COLUMNS):
            return await self._register_one(_Registration(node_id, facts, now, grace))
        return await self._registrations.submit(_Registration(node_id, facts, now, grace))

    async def _register_one(self, item: _Registration) -> RegisterResult:
        for attempt in (1, 2):
            try:
                return await self._register(item.node_id, item.facts, item.now, item.grace)
            except IntegrityError:
                if attempt == 2:  # two Managers created it at once: the retry updates
                    raise
        raise AssertionError("unreachable")

    async def _register_batch(self, items: Sequence[_Registration]) -> list[RegisterResult]:
        """Register distinct nodes in one transaction with a constant number of statements.

        The same effects as :meth:`_register` node by node: one SELECT of the existing
        rows, one executemany INSERT of the new nodes, one executemany UPDATE per set of
        fact names (one in practice), one executemany INSERT of the node events.
        """
        pg = self._pg
        fields = Node._meta.fields_map
        ids = [item.node_id for item in items]
        inserts: list[list[Any]] = []
        updates: dict[tuple[str, ...], list[list[Any]]] = {}
        events: list[list[Any]] = []
        results: list[RegisterResult] = []
        async with in_transaction() as tx:
            _, rows = await tx.execute_query(
                "SELECT node_id, status, status_since, instance_id, daemon_address "
                f"FROM fleet_node WHERE node_id IN ({', '.join(_marks(len(ids), pg))})",
                ids,
            )
            existing = {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}
            for item in items:
                node_id, now, facts = item.node_id, item.now, item.facts
                values = {
                    name: fields[name].to_db_value(value, Node) for name, value in facts.items()
                }
                row = existing.get(node_id)
                created = row is None
                old_status, since, previous_instance, previous_address = (
                    ("", now, "", "") if row is None else row
                )
                transition, replaced = _registration_transitions(
                    node_id, created, old_status, previous_instance, facts.get("instance_id", "")
                )
                if transition is not None:
                    since = now
                    self._event_row(events, transition, now)
                if created:
                    inserts.append(
                        [
                            node_id,
                            *(
                                values[c]
                                if c in values
                                else fields[c].to_db_value(_fact_default(c), Node)
                                for c in _FACT_COLUMNS
                            ),
                            ONLINE,
                            now,
                            now,
                            now,
                            since,
                            0,
                            now + item.grace,
                            item.grace,
                        ]
                    )
                else:
                    names = tuple(sorted(values))
                    updates.setdefault(names, []).append(
                        [
                            *(values[n] for n in names),
                            now,
                            now,
                            item.grace,
                            now + item.grace,
                            ONLINE,
                            since,
                            node_id,
                        ]
                    )
                if replaced is not None:
                    self._event_row(events, replaced, now)
                results.append(
                    RegisterResult(created, transition, previous_instance, previous_address)
                )
            if inserts:
                await tx.execute_many(_insert_sql("fleet_node", _NODE_INSERT_COLUMNS, pg), inserts)
            for names, params in updates.items():
                await tx.execute_many(_register_update_sql(names, pg), params)
            committed = await insert_node_events(tx, events, pg=pg) if events else []
        self._published(committed)
        return results

    async def _register(
        self, node_id: str, facts: Mapping[str, Any], now: float, grace: float
    ) -> RegisterResult:
        async with in_transaction():
            node = await Node.get_or_none(node_id=node_id)
            created = node is None
            if node is None:
                node = Node(node_id=node_id, registered_at=now, status=REGISTERING)
            old_status = "" if created else node.status
            previous_instance, previous_address = node.instance_id, node.daemon_address
            for key, value in facts.items():
                setattr(node, key, value)
            node.updated_at = now
            node.last_heartbeat = now
            node.grace = grace
            node.offline_after = now + grace
            transition, replaced = _registration_transitions(
                node_id, created, old_status, previous_instance, facts.get("instance_id", "")
            )
            if transition is not None:
                node.status = ONLINE
                node.status_since = now
            await node.save(force_create=created)
            committed = [
                row
                for event in (transition, replaced)
                if event is not None and (row := await self._event(event, now)) is not None
            ]
        self._published(committed)
        return RegisterResult(created, transition, previous_instance, previous_address)

    def _admit_event(self, t: Transition) -> str | None:
        """The reason to record for ``t``, or None when the event quota drops it."""
        if self._event_filter is None:
            return t.reason
        return self._event_filter(t.node_id, t.reason)

    def _event_row(self, rows: list[list[Any]], t: Transition, now: float) -> None:
        reason = self._admit_event(t)
        if reason is not None:
            rows.append([t.node_id, now, t.old, t.new, reason[:1024]])

    async def _event(self, t: Transition, now: float, using_db: Any = None) -> EventRow | None:
        """Write the node event of ``t`` (unless the quota drops it); the row to publish
        once its transaction committed (:meth:`_published`)."""
        reason = self._admit_event(t)
        if reason is None:
            return None
        event = await NodeEvent.create(
            node_id=t.node_id,
            timestamp=now,
            old_status=t.old,
            new_status=t.new,
            reason=reason[:1024],
            using_db=using_db,
        )
        return node_event_row(event)

    @db_errors_unavailable
    async def record_event(self, t: Transition, now: float) -> None:
        row = await self._event(t, now)
        self._published([row] if row is not None else [])

    @db_errors_unavailable
    async def node_identity(self, node_id: str) -> tuple[str, str] | None:
        """(instance_id, daemon_address) of a registered node, or None."""
        row = await Node.filter(node_id=node_id).values_list("instance_id", "daemon_address")
        return (row[0][0], row[0][1]) if row else None

    @db_errors_unavailable
    async def flush_heartbeats(
        self,
        batch: Mapping[str, PendingHeartbeat],
        *,
        now: float,
        grace_for: Callable[[float], float],
    ) -> tuple[list[Transition], set[str]]:
        """Write a batch of coalesced heartbeats in one transaction.

        Returns the transitions recorded and the node ids whose rows no longer exist
        (removed meanwhile, e.g. by another Manager).
        """
        transitions: list[Transition] = []
        missing: set[str] = set()
        if not batch:
            return transitions, missing
        pg = self._db.backend == "postgres"
        if pg:
            sql = (
                "UPDATE fleet_node SET last_heartbeat=$1, "
                "last_heartbeat_reported=GREATEST(last_heartbeat_reported, $2), "
                "offline_after=$3, grace=$4, status=$5, status_since=$6 WHERE node_id=$7"
            )
        else:
            sql = (
                "UPDATE fleet_node SET last_heartbeat=?, "
                "last_heartbeat_reported=MAX(last_heartbeat_reported, ?), "
                "offline_after=?, grace=?, status=?, status_since=? WHERE node_id=?"
            )
        ids = list(batch)
        async with in_transaction() as tx:
            for chunk in _chunks(ids):
                rows = await Node.filter(node_id__in=list(chunk)).values_list(
                    "node_id", "status", "status_since", "heartbeat_interval"
                )
                params = []
                missing.update(set(chunk) - {row[0] for row in rows})
                for node_id, status, since, interval in rows:
                    hb = batch[node_id]
                    grace = grace_for(interval)
                    if status != ONLINE:
                        reason = (
                            "heartbeat resumed"
                            if status in (OFFLINE, STOPPED)
                            else "first heartbeat"
                        )
                        transitions.append(Transition(node_id, status, ONLINE, reason))
                        since = now
                    params.append(
                        [
                            hb.received_at,
                            hb.reported,
                            hb.received_at + grace,
                            grace,
                            ONLINE,
                            since,
                            node_id,
                        ]
                    )
                if params:
                    await tx.execute_many(sql, params)
            committed = [
                row for t in transitions if (row := await self._event(t, now, using_db=tx))
            ]
        self._published(committed)
        return transitions, missing

    @db_errors_unavailable
    async def mark_overdue_offline(
        self, *, now: float, started_at: float, exclude: Iterable[str] = (), limit: int = 1000
    ) -> tuple[list[Transition], int]:
        """Mark online nodes whose grace ran out offline (no stall or mass-silence checks:
        :class:`manager.liveness.LivenessMonitor` makes those decisions itself).

        Restart guard: a node is not declared offline before a full grace period has
        passed since this Manager started (``started_at``), because heartbeats sent while
        the Manager was down could not arrive. Returns (transitions, nodes held by the guard).
        """
        skip = set(exclude)
        due: list[tuple[str, str]] = []
        held = 0
        for node_id, last, grace in await self.overdue_nodes(now=now, limit=limit):
            if node_id in skip:
                continue
            if now - started_at < grace:
                held += 1
                continue
            due.append((node_id, f"no heartbeat for {now - last:.0f} s (grace {grace:g} s)"))
        return await self.mark_offline(due, now=now), held

    @db_errors_unavailable
    async def overdue_nodes(self, *, now: float, limit: int) -> list[tuple[str, float, float]]:
        """(node id, last heartbeat, grace) of online nodes past their deadline, the
        longest overdue first (one range scan of the ``offline_after`` index)."""
        rows = (
            await Node.filter(status=ONLINE, offline_after__lt=now)
            .order_by("offline_after")
            .limit(limit)
            .values_list("node_id", "last_heartbeat", "grace")
        )
        return [(node_id, last or 0.0, grace) for node_id, last, grace in rows]

    @db_errors_unavailable
    async def late_nodes(self, *, now: float) -> tuple[int, list[tuple[str, float, float]]]:
        """(online nodes, and (node id, last heartbeat, grace) of those silent for more
        than half their grace) — what a mass-silence check needs."""
        pg = self._pg
        one, two = _marks(2, pg)
        conn = self._db.connection()
        _, counted = await conn.execute_query(
            f"SELECT COUNT(*) FROM fleet_node WHERE status = {one}", [ONLINE]
        )
        _, rows = await conn.execute_query(
            "SELECT node_id, last_heartbeat, grace FROM fleet_node "
            f"WHERE status = {one} AND offline_after - grace * 0.5 < {two}",
            [ONLINE, now],
        )
        return int(counted[0][0]), [(r[0], r[1] or 0.0, r[2]) for r in rows]

    @db_errors_unavailable
    async def mark_stopped(
        self, node_id: str, *, instance_id: str, reason: str, now: float
    ) -> Transition | None:
        """Its Daemon left cleanly: ``stopped`` now, unless the Manager knows another
        Daemon instance for the node (a replaced Daemon's late goodbye) or it is stopped
        already. Returns the transition recorded, if any."""
        async with in_transaction() as tx:
            row = await (
                Node.filter(node_id=node_id)
                .using_db(tx)
                .first()
                .values_list("status", "instance_id")
            )
            if row is None:
                return None
            status, current = row
            if status == STOPPED or (instance_id and current != instance_id):
                return None
            await (
                Node.filter(node_id=node_id)
                .using_db(tx)
                .update(status=STOPPED, status_since=now, offline_after=0)
            )
            t = Transition(node_id, status, STOPPED, reason)
            event = await self._event(t, now, using_db=tx)
        self._published([event] if event is not None else [])
        return t

    @db_errors_unavailable
    async def mark_offline(self, due: Sequence[tuple[str, str]], *, now: float) -> list[Transition]:
        """Mark each (node id, reason) offline if it is still online and overdue (a
        conditional update: a heartbeat flushed meanwhile, or another Manager's sweep,
        wins); returns the transitions recorded."""
        transitions: list[Transition] = []
        for node_id, reason in due:
            changed = await Node.filter(
                node_id=node_id, status=ONLINE, offline_after__lt=now
            ).update(status=OFFLINE, status_since=now)
            if changed:
                t = Transition(node_id, ONLINE, OFFLINE, reason)
                row = await self._event(t, now)
                self._published([row] if row is not None else [])
                transitions.append(t)
        return transitions

    @db_errors_unavailable
    async def remove_node(self, node_id: str) -> bool:
        """Delete a node with its agents, events and spec states; False when it did not
        exist (the rollouts that moved it keep their record of it)."""
        async with in_transaction():
            await Agent.filter(node_id=node_id).delete()
            await NodeEvent.filter(node_id=node_id).delete()
            await AgentEvent.filter(node_id=node_id).delete()
            await SpecNodeState.filter(node_id=node_id).delete()
            return bool(await Node.filter(node_id=node_id).delete())

    @db_errors_unavailable
    async def node_rows(
        self, *, status: str = "", labels: Mapping[str, str] | None = None
    ) -> list[NodeRow]:
        """Nodes ordered by id, with their agent counts, as plain rows (ListNodes).

        ``status`` filters in SQL; ``labels`` (all must match) on the decoded labels.
        """
        where, params = _where([("n.status", status)] if status else [], self._pg)
        _, rows = await self._db.connection().execute_query(
            _NODE_ROWS_SQL[self._db.backend].format(where=where), params
        )
        wanted = list((labels or {}).items())
        parsed: dict[str, dict[str, str]] = {}  # label sets repeat across a fleet
        result: list[NodeRow] = []
        for row in rows:
            values = list(row)
            raw = values[5]
            if isinstance(raw, str):
                node_labels = parsed.get(raw)
                if node_labels is None:
                    node_labels = parsed[raw] = json.loads(raw) or {}
            else:
                node_labels = raw or {}
            if wanted and not all(node_labels.get(k) == v for k, v in wanted):
                continue
            values[5] = node_labels  # shared between rows with the same labels: read-only
            values[10] = values[10] or 0.0  # last_heartbeat is NULL before the first one
            values[15] = int(values[15])
            result.append(NodeRow._make(values))
        return result

    @db_errors_unavailable
    async def get_node(self, node_id: str) -> Node | None:
        return await Node.get_or_none(node_id=node_id)

    @db_errors_unavailable
    async def delete_events_before(self, cutoff: float, *, batch: int) -> int:
        """Delete at most ``batch`` node events older than ``cutoff`` (one short statement).

        Oldest first by id: events are appended in time order, so the scan reads the
        primary key from its start and stops at the first event that is young enough —
        no index on the timestamp, and no scan of the whole table when nothing is old.
        """
        rows = await NodeEvent.all().order_by("id").limit(batch).values_list("id", "timestamp")
        ids: list[int] = []
        for event_id, timestamp in rows:
            if timestamp >= cutoff:
                break
            ids.append(event_id)
        if not ids:
            return 0
        return await NodeEvent.filter(id__in=ids).delete()

    @db_errors_unavailable
    async def node_events(self, node_id: str, limit: int) -> list[NodeEvent]:
        return await NodeEvent.filter(node_id=node_id).order_by("-timestamp", "-id").limit(limit)

    @db_errors_unavailable
    async def status_counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """(nodes by status, agents by status) for /metrics."""
        node_rows = (
            await Node.all()
            .annotate(n=Count("node_id"))
            .group_by("status")
            .values_list("status", "n")
        )
        agent_rows = (
            await Agent.all().annotate(n=Count("id")).group_by("status").values_list("status", "n")
        )
        return (
            {status: int(n) for status, n in node_rows},
            {status: int(n) for status, n in agent_rows},
        )

    # ---- agents ----

    @db_errors_unavailable
    async def sync_agents(
        self, *, node_id: str, states: Sequence[AgentRecord], full: bool, now: float
    ) -> tuple[int, int]:
        """Apply a Daemon's agent states; ``full`` removes agents it no longer lists.

        Returns (upserted, removed). Daemons resend their full list periodically and it
        is mostly unchanged: then the whole sync is one read and one ``updated_at``
        update, without a transaction. Otherwise the changes of concurrent syncs are
        written together, one transaction per batch (:meth:`_sync_batch`), and this
        returns once that batch committed.
        """
        current = {a.agent_id: a for a in await Agent.filter(node_id=node_id)}
        if _nothing_changed(current, states, full):
            if states:
                ids = [current[s.agent_id].id for s in states]
                await Agent.filter(id__in=ids).update(updated_at=now)
            return len(states), 0
        return await self._agent_syncs.submit(_AgentSync(node_id, states, full, now))

    async def _sync_one(self, item: _AgentSync) -> tuple[int, int]:
        """One node's changed sync in its own transaction (the batch's fallback)."""
        node_id, now = item.node_id, item.now
        removed = 0
        committed: list[EventRow] = []
        async with in_transaction() as tx:
            existing = {a.agent_id: a for a in await Agent.filter(node_id=node_id)}
            events = self._derive_events(
                item,
                {
                    agent_id: AgentRecord(agent_id, *(getattr(a, f) for f in _AGENT_FIELDS))
                    for agent_id, a in existing.items()
                },
            )
            if events:
                committed = await insert_events(tx, events, pg=self._pg)
            unchanged: list[int] = []
            for state in item.states:
                values = {f: getattr(state, f) for f in _AGENT_FIELDS}
                agent = existing.get(state.agent_id)
                if agent is None:
                    await Agent.create(
                        node_id=node_id, agent_id=state.agent_id, updated_at=now, **values
                    )
                elif all(getattr(agent, f) == v for f, v in values.items()):
                    unchanged.append(agent.id)
                else:
                    await Agent.filter(id=agent.id).update(updated_at=now, **values)
            if unchanged:
                await Agent.filter(id__in=unchanged).update(updated_at=now)
            if item.full:
                gone = set(existing) - {s.agent_id for s in item.states}
                if gone:
                    removed = await Agent.filter(node_id=node_id, agent_id__in=list(gone)).delete()
        self._published(committed)
        return len(item.states), removed

    def _derive_events(
        self, item: _AgentSync, previous: Mapping[str, AgentRecord]
    ) -> list[NewEvent]:
        if self._agent_events is None:
            return []
        return self._agent_events.derive(item.node_id, previous, item.states, item.full, item.now)

    def _published(self, committed: Sequence[EventRow]) -> None:
        """Publish committed events, agent and node (manager/events.py subscribers)."""
        if committed and self._agent_events is not None:
            self._agent_events.committed(committed)

    async def _sync_batch(self, items: Sequence[_AgentSync]) -> list[tuple[int, int]]:
        """Apply several nodes' changed syncs in one transaction, constant statements.

        The same effects as :meth:`_sync_one` node by node: one SELECT of the nodes'
        agents, then one executemany each for new agents, changed agents, unchanged
        agents (``updated_at``) and agents a full sync no longer lists. ``removed``
        counts the agents this transaction found and deleted.
        """
        pg = self._pg
        ids = [item.node_id for item in items]
        insert_sql, update_sql, touch_sql, delete_sql = _agent_sql(pg)
        inserts: list[list[Any]] = []
        updates: list[list[Any]] = []
        touches: list[list[Any]] = []
        deletes: list[list[Any]] = []
        results: list[tuple[int, int]] = []
        events: list[NewEvent] = []
        committed: list[EventRow] = []
        async with in_transaction() as tx:
            _, rows = await tx.execute_query(
                f"SELECT id, node_id, agent_id, {', '.join(_AGENT_FIELDS)} FROM fleet_agent "
                f"WHERE node_id IN ({', '.join(_marks(len(ids), pg))})",
                ids,
            )
            existing: dict[str, dict[str, tuple[int, tuple[Any, ...]]]] = {}
            for row in rows:
                values = tuple(row)
                existing.setdefault(values[1], {})[values[2]] = (values[0], values[3:])
            for item in items:
                have = existing.get(item.node_id, {})
                if self._agent_events is not None:
                    previous = {k: AgentRecord(k, *v[1]) for k, v in have.items()}
                    events.extend(self._derive_events(item, previous))
                for state in item.states:
                    values = tuple(getattr(state, f) for f in _AGENT_FIELDS)
                    found = have.get(state.agent_id)
                    if found is None:
                        inserts.append([item.node_id, state.agent_id, *values, item.now])
                    elif found[1] == values:
                        touches.append([item.now, found[0]])
                    else:
                        updates.append([*values, item.now, found[0]])
                removed = 0
                if item.full:
                    gone = set(have) - {state.agent_id for state in item.states}
                    deletes.extend([have[agent_id][0]] for agent_id in gone)
                    removed = len(gone)
                results.append((len(item.states), removed))
            for sql, params in (
                (insert_sql, inserts),
                (update_sql, updates),
                (touch_sql, touches),
                (delete_sql, deletes),
            ):
                if params:
                    await tx.execute_many(sql, params)
            if events:
                committed = await insert_events(tx, events, pg=pg)
        self._published(committed)
        return results

    @db_errors_unavailable
    async def list_agents(self, *, node_id: str = "", status: str = "") -> list[Agent]:
        query = Agent.all().order_by("node_id", "agent_id")
        if node_id:
            query = query.filter(node_id=node_id)
        if status:
            query = query.filter(status=status)
        return await query

    @db_errors_unavailable
    async def agent_rows(self, *, node_id: str = "", status: str = "") -> list[AgentRow]:
        """Synced agents ordered by (node, agent id) with their node's status (ListAgents)."""
        conditions = [("a.node_id", node_id)] if node_id else []
        if status:
            conditions.append(("a.status", status))
        where, params = _where(conditions, self._pg)
        _, rows = await self._db.connection().execute_query(
            _AGENT_ROWS_SQL.format(where=where), params
        )
        return [AgentRow(*row) for row in rows]

    @db_errors_unavailable
    async def nodes_with_agent(self, agent_id: str) -> list[str]:
        rows = await Agent.filter(agent_id=agent_id).order_by("node_id").values_list("node_id")
        return [r[0] for r in rows]

    # ---- host metrics ----

    @db_errors_unavailable
    async def save_metrics(
        self, node_id: str, samples: Sequence[tuple[str, int, Mapping[str, float]]]
    ) -> int:
        """Store (type, timestamp, values) samples in bulk; returns how many were new.

        A sample already stored for (node, type, timestamp) — a resent report — is
        skipped by the unique constraint (``ON CONFLICT DO NOTHING``), and the count
        is of the rows the database actually inserted, so a race between two identical
        reports is settled and counted right. Within one report the first sample of a
        (type, timestamp) wins. This is the ingest hot path: one raw statement per
        chunk, no model objects and no separate duplicate check.
        """
        unique: dict[tuple[str, int], str] = {}
        encode = _json_encode
        for kind, ts, values in samples:
            key = (kind, ts)
            if key not in unique:
                unique[key] = encode(values)
        if not unique:
            return 0
        rows = [(kind, ts, text) for (kind, ts), text in unique.items()]
        conn = self._db.connection()
        if self._db.backend == "postgres":
            # One statement whatever the size: the columns travel as three arrays.
            _, result = await conn.execute_query(
                _PG_INSERT_METRICS,
                [node_id, *(list(column) for column in zip(*rows, strict=True))],
            )
            return int(result[0][0])
        if len(rows) <= _METRIC_ROWS_PER_STATEMENT:
            inserted, _ = await conn.execute_query(*_sqlite_insert_metrics(node_id, rows))
            return inserted
        inserted = 0
        async with in_transaction() as tx:  # several statements: still all or nothing
            for chunk in _chunks(rows, _METRIC_ROWS_PER_STATEMENT):
                count, _ = await tx.execute_query(*_sqlite_insert_metrics(node_id, chunk))
                inserted += count
        return inserted

    @db_errors_unavailable
    async def query_metrics(
        self, *, node_id: str, type: str, since: int, limit: int
    ) -> list[MetricSample]:
        query = MetricSample.filter(node_id=node_id, timestamp__gte=since)
        if type:
            query = query.filter(type=type)
        newest = await query.order_by("-timestamp", "-id").limit(limit)
        return list(reversed(newest))

    @db_errors_unavailable
    async def delete_metrics_before(self, cutoff: int, *, batch: int) -> int:
        """Delete at most ``batch`` samples older than ``cutoff`` (one short transaction)."""
        ids = (
            await MetricSample.filter(timestamp__lt=cutoff)
            .order_by("timestamp")
            .limit(batch)
            .values_list("id", flat=True)
        )
        if not ids:
            return 0
        return await MetricSample.filter(id__in=list(ids)).delete()
