"""Plans: what applying (or deleting) a spec changes on each node, agent by agent."""

from __future__ import annotations

from typing import Any

from common.agentspec import diff_agents
from common.specdoc import SpecDoc, canonical
from schema import admin_pb, daemon_pb

ADDED = "added"
CHANGED = "changed"
REMOVED = "removed"


def _json(value: Any) -> str:
    return canonical(value).decode()


def source(name: str, revision: int) -> str:
    """Where a definition comes from, as AgentChange.source names it."""
    return f"spec:{name}@{revision}"


def agent_changes(
    name: str,
    old: SpecDoc | None,
    old_revision: int,
    new: SpecDoc | None,
    new_revision: int,
) -> list[daemon_pb.AgentChange]:
    """The changes moving a node from ``old`` (None: runs nothing of the spec) to ``new``
    (None: the spec's agents go), sorted by agent id; changed agents list their fields
    with old and new values as JSON text."""
    before = {a.id: a for a in old.agents} if old is not None else {}
    after = {a.id: a for a in new.agents} if new is not None else {}
    diff = diff_agents(before, after)
    changes = [
        daemon_pb.AgentChange(agent_id=i, action=ADDED, source=source(name, new_revision))
        for i in diff.added
    ]
    changes += [
        daemon_pb.AgentChange(
            agent_id=agent_id,
            action=CHANGED,
            fields=[
                daemon_pb.FieldChange(field=field, old=_json(was), new=_json(now))
                for field, was, now in fields
            ],
            source=source(name, new_revision),
        )
        for agent_id, fields in diff.changed
    ]
    changes += [
        daemon_pb.AgentChange(agent_id=i, action=REMOVED, source=source(name, old_revision))
        for i in diff.removed
    ]
    return sorted(changes, key=lambda c: c.agent_id)


def node_plan(node_id: str, changes: list[daemon_pb.AgentChange]) -> admin_pb.NodePlan:
    return admin_pb.NodePlan(node_id=node_id, changes=changes)
