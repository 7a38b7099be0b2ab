"""Plain rows and raw SQL of the desired-state store (SpecStore, specs.py).

The whole-fleet reads (every node, every spec state, every node a rollout moved) are raw
SQL into plain rows: at 10,000 nodes Tortoise's model objects cost ~0.3-0.5 s a query,
the rows ~30 ms.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from tortoise.backends.base.client import BaseDBAsyncClient

CHUNK = 500  # ids per IN (…): well under both backends' parameter limits


@dataclass(frozen=True)
class NewRevision:
    """A revision to store: the signed envelope, who signed it and who sent it."""

    name: str
    revision: int
    kind: str
    payload: bytes
    signature: bytes
    signer_cert: bytes
    signed_by: str
    applied_by: str


@dataclass(frozen=True)
class SpecStateRecord:
    """One SpecState as a Daemon reported it (SyncAgentStates, ApplySpecs reply)."""

    name: str
    revision: int
    status: str
    reason: str = ""
    running_revision: int = 0


class NodeFacts(NamedTuple):
    """What the controller needs of a node: who, its labels, liveness and address."""

    node_id: str
    labels: dict[str, str]
    status: str
    address: str


class SpecStateRow(NamedTuple):
    """A stored SpecState of one node (``fleet_spec_node_state``), as a plain row."""

    node_id: str
    name: str
    revision: int
    running_revision: int
    status: str
    reason: str
    updated_at: float


@dataclass
class RolloutNodeRow:
    """A node a rollout moved (``fleet_rollout_node``), as a plain, mutable row."""

    rollout_id: int
    node_id: str
    wave: int
    state: str
    pushed_at: float
    finished_at: float = 0.0
    reason: str = ""


class AgentAtRevision(NamedTuple):
    """An agent of a spec on a node, as synced (for a rollout's 'done' check)."""

    agent_id: str
    status: str
    spec_revision: int


@dataclass(frozen=True)
class StatesWrite:
    """One node's complete spec states, queued for the group-committed writer."""

    node_id: str
    states: tuple[SpecStateRecord, ...]
    now: float


@functools.lru_cache(maxsize=2)
def insert_states_sql(pg: bool) -> str:
    columns = ("node_id", "name", "revision", "running_revision", "status", "reason", "updated_at")
    marks = ", ".join(f"${i}" if pg else "?" for i in range(1, len(columns) + 1))
    return f"INSERT INTO fleet_spec_node_state ({', '.join(columns)}) VALUES ({marks})"


def chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


NODE_FACTS_SQL = "SELECT node_id, labels, status, daemon_address FROM fleet_node"
STATE_COLUMNS = "node_id, name, revision, running_revision, status, reason, updated_at"
STATES_SQL = f"SELECT {STATE_COLUMNS} FROM fleet_spec_node_state"
ROLLOUT_NODE_COLUMNS = "rollout_id, node_id, wave, state, pushed_at, finished_at, reason"
ROLLOUT_NODES_SQL = f"SELECT {ROLLOUT_NODE_COLUMNS} FROM fleet_rollout_node"


async def select_rows(
    connection: BaseDBAsyncClient,
    pg: bool,
    sql: str,
    conditions: Sequence[tuple[str, Any]],
    *,
    within: tuple[str, Sequence[Any]] | None = None,
    order: str = "",
) -> list[Any]:
    """Rows of ``sql`` WHERE every ``column = value`` of ``conditions`` (and, with
    ``within``, ``column IN (values)``, asked in chunks)."""

    def where(extra: int) -> tuple[str, list[Any]]:
        marks = [f"${i}" if pg else "?" for i in range(1, len(conditions) + extra + 1)]
        terms = [f"{c} = {m}" for (c, _), m in zip(conditions, marks, strict=False)]
        if extra:
            assert within is not None
            terms.append(f"{within[0]} IN ({', '.join(marks[len(conditions) :])})")
        clause = f" WHERE {' AND '.join(terms)}" if terms else ""
        return clause, [v for _, v in conditions]

    if within is None:
        clause, params = where(0)
        _, rows = await connection.execute_query(f"{sql}{clause}{order}", params)
        return list(rows)
    out: list[Any] = []
    values = list(within[1])
    for i in range(0, len(values), CHUNK):
        chunk = values[i : i + CHUNK]
        clause, params = where(len(chunk))
        _, rows = await connection.execute_query(f"{sql}{clause}{order}", params + chunk)
        out += rows
    return out
