"""The event history in the database: agent events (``fleet_agent_event``) written in
bulk, and the reads ListEvents and GetAgent make, with node status events
(``fleet_node_event``, written by :class:`~manager.store.store.Store`) merged in.

What is recorded, and when, is :mod:`manager.events`' business; this module only stores
and reads rows. An agent event's id comes from its own table, a node event's from
``fleet_node_event``: the two are numbered separately.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from tortoise.transactions import in_transaction

from .database import Database, db_errors_unavailable
from .models import AgentEvent, NodeEvent

if TYPE_CHECKING:
    from .store import AgentRecord

# Kinds of what happens to an agent (the proto's Event.kind; docs/manager.md).
ADDED = "added"
REMOVED = "removed"
STARTED = "started"
EXITED = "exited"
RESTARTED = "restarted"
FATAL = "fatal"
STATUS = "status"
OPERATION = "operation"
CONFIG = "config"
RELOAD = "reload"
SUPPRESSED = "suppressed"
# A node status event's kind (fleet_node_event, merged in at read time).
NODE_STATUS = STATUS
EXIT_KINDS = (EXITED, FATAL)


class NewEvent(NamedTuple):
    """An event to write (no id yet)."""

    timestamp: float
    node_id: str
    agent_id: str
    kind: str
    message: str
    actor: str = ""
    old_status: str = ""
    new_status: str = ""
    pid: int = 0


class EventRow(NamedTuple):
    """A committed event, as ListEvents shows it (``agent_id`` "" for a node event)."""

    id: int
    timestamp: float
    node_id: str
    agent_id: str
    kind: str
    message: str
    actor: str = ""
    old_status: str = ""
    new_status: str = ""
    pid: int = 0


class AgentEventSink(Protocol):
    """What the Store asks when it writes a changed SyncAgentStates (manager/events.py)."""

    def derive(
        self,
        node_id: str,
        previous: Mapping[str, AgentRecord],
        states: Sequence[AgentRecord],
        full: bool,
        now: float,
    ) -> list[NewEvent]:
        """The events of one node's sync, from its agents as stored before it."""
        ...

    def committed(self, events: Sequence[EventRow]) -> None:
        """``events`` were committed (called once the transaction ended)."""
        ...


_COLUMNS = (
    "timestamp",
    "node_id",
    "agent_id",
    "kind",
    "message",
    "actor",
    "old_status",
    "new_status",
    "pid",
)
_ROWS_PER_STATEMENT = 200  # 9 parameters a row: far below both backends' limits
_WIDTHS = {"node_id": 128, "agent_id": 128, "kind": 16, "message": 1024, "actor": 255}


@functools.lru_cache(maxsize=32)
def _insert_sql(rows: int, pg: bool) -> str:
    width = len(_COLUMNS)
    if pg:
        values = ",".join(
            "(" + ",".join(f"${r * width + c + 1}" for c in range(width)) + ")" for r in range(rows)
        )
    else:
        values = ",".join(["(" + ",".join("?" * width) + ")"] * rows)
    sql = (
        f"INSERT INTO fleet_agent_event ({', '.join(_COLUMNS)}) VALUES {values} "
        f"RETURNING id, {', '.join(_COLUMNS)}"
    )
    # Tortoise runs a statement starting with INSERT on PostgreSQL without fetching
    # its rows: there, the RETURNING rows are read through a CTE.
    return f"WITH new AS ({sql}) SELECT * FROM new" if pg else sql


def _clip(event: NewEvent) -> list[Any]:
    values = event._asdict()
    for name, width in _WIDTHS.items():
        values[name] = values[name][:width]
    values["old_status"] = values["old_status"][:16]
    values["new_status"] = values["new_status"][:16]
    return [values[c] for c in _COLUMNS]


async def insert_events(conn: Any, events: Sequence[NewEvent], *, pg: bool) -> list[EventRow]:
    """Write ``events`` with one multi-row ``INSERT … RETURNING`` per 200 (on ``conn``, a
    transaction or connection); the rows as committed, with their ids, in id order."""
    rows: list[EventRow] = []
    for start in range(0, len(events), _ROWS_PER_STATEMENT):
        chunk = events[start : start + _ROWS_PER_STATEMENT]
        params = [value for event in chunk for value in _clip(event)]
        _, result = await conn.execute_query(_insert_sql(len(chunk), pg), params)
        rows.extend(_row(tuple(r)) for r in result)
    rows.sort(key=lambda r: r.id)
    return rows


def _row(values: Sequence[Any]) -> EventRow:
    id_, timestamp, *rest = values
    return EventRow(int(id_), float(timestamp), *rest)


_ROW_FIELDS = ("id", *_COLUMNS)


def node_event_row(e: NodeEvent) -> EventRow:
    """A node status event as an event row: kind "status", no agent."""
    return node_row(e.id, e.timestamp, e.node_id, e.old_status, e.new_status, e.reason)


def node_row(
    id_: int, timestamp: float, node_id: str, old_status: str, new_status: str, reason: str
) -> EventRow:
    """A ``fleet_node_event`` row's columns as an event row (see :func:`node_event_row`)."""
    if old_status and old_status != new_status:
        head = f"{old_status} -> {new_status}"
        message = f"{head}: {reason}" if reason else head
    else:
        message = reason
    return EventRow(
        int(id_),
        float(timestamp),
        node_id,
        "",
        NODE_STATUS,
        message,
        old_status=old_status,
        new_status=new_status,
    )


_NODE_COLUMNS = ("node_id", "timestamp", "old_status", "new_status", "reason")


async def insert_node_events(
    conn: Any, rows: Sequence[Sequence[Any]], *, pg: bool
) -> list[EventRow]:
    """Write node events (``[node_id, timestamp, old_status, new_status, reason]`` each)
    with one multi-row ``INSERT … RETURNING`` per 200, on ``conn``; the rows as event
    rows with their ids (``fleet_node_event``'s own sequence), in id order."""
    out: list[EventRow] = []
    width = len(_NODE_COLUMNS)
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[start : start + _ROWS_PER_STATEMENT]
        if pg:
            values = ",".join(
                "(" + ",".join(f"${r * width + c + 1}" for c in range(width)) + ")"
                for r in range(len(chunk))
            )
        else:
            values = ",".join(["(" + ",".join("?" * width) + ")"] * len(chunk))
        columns = ", ".join(_NODE_COLUMNS)
        sql = f"INSERT INTO fleet_node_event ({columns}) VALUES {values} RETURNING id, {columns}"
        if pg:  # as in _insert_sql: the RETURNING rows through a CTE
            sql = f"WITH new AS ({sql}) SELECT * FROM new"
        _, result = await conn.execute_query(sql, [v for row in chunk for v in row])
        for id_, node_id, timestamp, old_status, new_status, reason in result:
            out.append(node_row(id_, timestamp, node_id, old_status, new_status, reason))
    out.sort(key=lambda r: r.id)
    return out


class EventStore:
    """Writes and reads the event history (module doc)."""

    def __init__(self, *, database: Database) -> None:
        self._db = database

    @property
    def pg(self) -> bool:
        return self._db.backend == "postgres"

    @db_errors_unavailable
    async def add(self, events: Sequence[NewEvent]) -> list[EventRow]:
        """Write ``events`` in one transaction; the committed rows."""
        if not events:
            return []
        async with in_transaction() as tx:
            return await insert_events(tx, events, pg=self.pg)

    @db_errors_unavailable
    async def list_events(
        self,
        *,
        node_id: str = "",
        agent_id: str = "",
        since: float = 0,
        kinds: Sequence[str] = (),
        node_only: bool = False,
        limit: int = 100,
    ) -> list[EventRow]:
        """Events newest first: agent events, and node events unless an agent is named
        (or ``kinds`` leaves out "status")."""
        rows: list[EventRow] = []
        query = AgentEvent.all()
        if node_id:
            query = query.filter(node_id=node_id)
        if agent_id:
            query = query.filter(agent_id=agent_id)
        elif node_only:
            query = query.filter(agent_id="")
        if since:
            query = query.filter(timestamp__gte=since)
        if kinds:
            query = query.filter(kind__in=list(kinds))
        found = await query.order_by("-id").limit(limit).values_list(*_ROW_FIELDS)
        rows.extend(_row(values) for values in found)
        if not agent_id and (not kinds or NODE_STATUS in kinds):
            nodes = NodeEvent.all()
            if node_id:
                nodes = nodes.filter(node_id=node_id)
            if since:
                nodes = nodes.filter(timestamp__gte=since)
            newest = await nodes.order_by("-timestamp", "-id").limit(limit)
            rows.extend(node_event_row(e) for e in newest)
            rows.sort(key=lambda r: (r.timestamp, r.id), reverse=True)
        return rows[:limit]

    @db_errors_unavailable
    async def events_after(
        self,
        after_id: int,
        *,
        node_id: str = "",
        agent_id: str = "",
        kinds: Sequence[str] = (),
        limit: int,
    ) -> tuple[list[EventRow], list[EventRow]]:
        """What a watcher resuming after agent event ``after_id`` missed, oldest first:
        (agent events with a greater id, node events recorded at or after the time of
        the newest agent event up to ``after_id``) — node events are numbered on their
        own, so they are resumed by time. At most ``limit`` + 1 of each (more than
        ``limit`` tells the caller there are too many)."""
        query = AgentEvent.filter(id__gt=after_id)
        if node_id:
            query = query.filter(node_id=node_id)
        if agent_id:
            query = query.filter(agent_id=agent_id)
        if kinds:
            query = query.filter(kind__in=list(kinds))
        found = await query.order_by("id").limit(limit + 1).values_list(*_ROW_FIELDS)
        agents = [_row(values) for values in found]
        nodes: list[EventRow] = []
        if not agent_id and (not kinds or NODE_STATUS in kinds):
            mark = (
                await AgentEvent.filter(id__lte=after_id)
                .order_by("-id")
                .limit(1)
                .values_list("timestamp")
            )
            since = float(mark[0][0]) if mark else 0.0
            query_n = NodeEvent.filter(timestamp__gte=since)
            if node_id:
                query_n = query_n.filter(node_id=node_id)
            newest = await query_n.order_by("id").limit(limit + 1)
            nodes = [node_event_row(e) for e in newest]
        return agents, nodes

    @db_errors_unavailable
    async def last_exit(self, node_id: str, agent_id: str) -> EventRow | None:
        """The newest "exited" or "fatal" event of an agent, or None."""
        found = (
            await AgentEvent.filter(node_id=node_id, agent_id=agent_id, kind__in=EXIT_KINDS)
            .order_by("-id")
            .limit(1)
            .values_list(*_ROW_FIELDS)
        )
        return _row(found[0]) if found else None

    @db_errors_unavailable
    async def delete_before(self, cutoff: float, *, batch: int) -> int:
        """Delete at most ``batch`` agent events older than ``cutoff``, oldest first by
        id (the scan stops at the first young event, as for node events)."""
        rows = await AgentEvent.all().order_by("id").limit(batch).values_list("id", "timestamp")
        ids: list[int] = []
        for event_id, timestamp in rows:
            if timestamp >= cutoff:
                break
            ids.append(event_id)
        if not ids:
            return 0
        return await AgentEvent.filter(id__in=ids).delete()
