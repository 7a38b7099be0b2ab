"""Desired agents, and what moving the running set to them changes.

A Daemon's desired agents are the ``[[agents]]`` of ``daemon.toml`` plus the agents of
every accepted central spec, each tagged with its :class:`Origin`. :func:`plan` compares
them with what runs and says, agent by agent, what a reconcile does:

* **added** — a new runner, started if ``autostart``;
* **removed** — stopped (``stop_signal``, ``stop_timeout``, SIGKILL) and forgotten;
* **changed** — restarted with the new definition, except when only ``config`` and/or
  ``version`` changed: those are updated in place (the agent sees the new config hash on
  its next heartbeat), and so is a move to another source with the same definition;
* **unchanged** — left alone: same runner, same process.

:meth:`daemon.agents.Agents.reconcile` carries a plan out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from common.agentspec import AgentSpec, changed_fields
from schema import daemon_pb

ADDED = "added"
CHANGED = "changed"
REMOVED = "removed"
# Fields a running agent takes without a restart.
IN_PLACE_FIELDS = frozenset({"config", "version"})
SOURCE_FIELD = "source"


@dataclass(frozen=True)
class Origin:
    """Where an agent's definition comes from: ``daemon.toml`` or a central spec revision."""

    spec: str = ""
    revision: int = 0

    @property
    def label(self) -> str:
        """``local`` or ``spec:<name>@<revision>`` (AgentChange.source)."""
        return f"spec:{self.spec}@{self.revision}" if self.spec else "local"


LOCAL = Origin()


@dataclass(frozen=True)
class Desired:
    """One agent that should exist, and where its definition comes from."""

    spec: AgentSpec
    origin: Origin = LOCAL

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True)
class Change:
    """What a reconcile does (or did) to one agent."""

    agent_id: str
    action: str
    source: str
    # (field, old value, new value) for CHANGED; SOURCE_FIELD when the source moved.
    fields: tuple[tuple[str, Any, Any], ...] = ()
    error: str = ""

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.fields)

    @property
    def needs_restart(self) -> bool:
        """A CHANGED agent whose process must be replaced to apply the change."""
        return self.action == CHANGED and any(
            name not in IN_PLACE_FIELDS and name != SOURCE_FIELD for name in self.field_names
        )

    def to_pb(self) -> daemon_pb.AgentChange:
        return daemon_pb.AgentChange(
            agent_id=self.agent_id,
            action=self.action,
            fields=[
                daemon_pb.FieldChange(field=name, old=_json(old), new=_json(new))
                for name, old, new in self.fields
            ],
            source=self.source,
            error=self.error,
        )

    def describe(self) -> str:
        text = self.agent_id
        if self.fields:
            text += f" ({', '.join(self.field_names)})"
        if self.error:
            text += f" [failed: {self.error}]"
        return text


@dataclass(frozen=True)
class Result:
    """A reconcile's (or a dry run's) changes, and the agents it left alone."""

    changes: tuple[Change, ...] = ()
    unchanged: tuple[str, ...] = ()

    def of(self, action: str) -> list[Change]:
        return [c for c in self.changes if c.action == action]

    @property
    def errors(self) -> dict[str, str]:
        """Agent id → why applying its change failed (e.g. the new command did not start)."""
        return {c.agent_id: c.error for c in self.changes if c.error}

    @property
    def empty(self) -> bool:
        return not self.changes

    def summary(self) -> str:
        """One line for the log: ``added a; changed b (command); removed c; 2 unchanged``."""
        parts = [
            f"{action} {', '.join(c.describe() for c in self.of(action))}"
            for action in (ADDED, CHANGED, REMOVED)
            if self.of(action)
        ]
        parts.append(f"{len(self.unchanged)} unchanged")
        if not self.changes:
            parts.insert(0, "no agent changes")
        return "; ".join(parts)

    def with_errors(self, errors: Mapping[str, str]) -> Result:
        return Result(
            changes=tuple(
                Change(c.agent_id, c.action, c.source, c.fields, errors.get(c.agent_id, ""))
                for c in self.changes
            ),
            unchanged=self.unchanged,
        )


def plan(current: Mapping[str, Desired], desired: Sequence[Desired]) -> Result:
    """What moving from ``current`` (agent id → what runs) to ``desired`` does."""
    wanted = {d.id: d for d in desired}
    if len(wanted) != len(desired):
        raise ValueError("desired agents must have unique ids")
    changes: list[Change] = []
    unchanged: list[str] = []
    for d in desired:
        now = current.get(d.id)
        if now is None:
            changes.append(Change(d.id, ADDED, d.origin.label))
            continue
        fields_ = list(changed_fields(now.spec, d.spec))
        if now.origin.spec != d.origin.spec:
            fields_.append((SOURCE_FIELD, now.origin.label, d.origin.label))
        if fields_:
            changes.append(Change(d.id, CHANGED, d.origin.label, tuple(fields_)))
        else:
            unchanged.append(d.id)
    for agent_id, now in current.items():
        if agent_id not in wanted:
            changes.append(Change(agent_id, REMOVED, now.origin.label))
    return Result(changes=tuple(changes), unchanged=tuple(unchanged))


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
