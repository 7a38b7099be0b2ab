"""What fleetctl prints about specs, plans, rollouts and reloads: JSON objects (stable,
documented in docs/fleetctl.md) and the text forms, built from the wire messages
(``schema.admin_pb2`` / ``daemon_pb2``).

The same JSON rules as :mod:`fleetctl.views`: keys always present and in a fixed order,
ISO 8601 UTC times, null for unset values. Field values of a change (``FieldChange.old``
/ ``new``, JSON text on the wire) are printed as JSON values.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .render import Cell, Output, ago, iso

ROLLOUT_DONE = ("succeeded", "failed", "rolled_back", "interrupted")

STATE_STYLES = {
    # per node
    "converged": "green",
    "pending": "yellow",
    "rolling": "yellow",
    "refused": "bold red",
    "failed": "bold red",
    "offline": "red",
    # rollouts
    "running": "yellow",
    "paused": "yellow",
    "succeeded": "green",
    "rolled_back": "bold red",
    "interrupted": "red",
}
ACTION_MARKS = {"added": ("+", "green"), "changed": ("~", "yellow"), "removed": ("-", "red")}
ACTION_ORDER = {action: i for i, action in enumerate(ACTION_MARKS)}


def _change_order(c: Any) -> tuple[int, str]:
    """Added, then changed, then removed; by agent id within each."""
    return ACTION_ORDER.get(c.action, len(ACTION_ORDER)), c.agent_id


def state_cell(state: str) -> Cell:
    return (state or "-", STATE_STYLES.get(state, ""))


def json_value(text: str) -> Any:
    """A FieldChange value (JSON text, "" when absent) as a JSON value (None when absent)."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


# ---- JSON ------------------------------------------------------------------------------------


def change_json(c: Any) -> dict[str, Any]:
    return {
        "agent_id": c.agent_id,
        "action": c.action,
        "fields": [
            {"field": f.field, "old": json_value(f.old), "new": json_value(f.new)} for f in c.fields
        ],
        "source": c.source or None,
        "error": c.error or None,
    }


def plan_json(plan: Iterable[Any]) -> list[dict[str, Any]]:
    return [
        {"node_id": p.node_id, "changes": [change_json(c) for c in p.changes]}
        for p in sorted(plan, key=lambda p: p.node_id)
    ]


def policy_json(p: Any) -> dict[str, Any]:
    return {
        "max_unavailable": p.max_unavailable or None,
        "max_failures": p.max_failures,
        "auto_rollback": p.auto_rollback,
        "healthy_deadline_seconds": p.healthy_deadline_seconds or None,
    }


def rollout_json(r: Any) -> dict[str, Any]:
    return {
        "spec": r.spec,
        "revision": r.revision,
        "from_revision": r.from_revision or None,
        "state": r.state,
        "reason": r.reason or None,
        "policy": policy_json(r.policy),
        "total": r.total,
        "done": r.done,
        "failed": r.failed,
        "in_progress": r.in_progress,
        "pending": r.pending,
        "failed_nodes": sorted(r.failed_nodes),
        "started_at": iso(r.started_at),
        "updated_at": iso(r.updated_at),
        "started_by": r.started_by or None,
    }


def spec_json(s: Any) -> dict[str, Any]:
    return {
        "name": s.name,
        "revision": s.revision or None,
        "next_revision": s.next_revision,
        "deleted": s.deleted,
        "target": {
            "labels": dict(sorted(s.target_labels.items())),
            "nodes": sorted(s.target_nodes),
        },
        "agents": list(s.agent_ids),
        "node_count": s.node_count,
        "converged_count": s.converged_count,
        "updated_at": iso(s.updated_at),
        "updated_by": s.updated_by or None,
    }


def node_status_json(n: Any) -> dict[str, Any]:
    return {
        "node_id": n.node_id,
        "target_revision": n.target_revision or None,
        "running_revision": n.running_revision or None,
        "state": n.state,
        "reason": n.reason or None,
        "updated_at": iso(n.updated_at),
    }


def document_of(revision: Any) -> dict[str, Any] | None:
    """The signed document of a SpecRevision as JSON (None for a delete or a bad payload)."""
    payload = bytes(revision.signed.payload) if revision.HasField("signed") else b""
    if not payload:
        return None
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def revision_json(rev: Any, changes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "revision": rev.revision,
        "kind": rev.kind,
        "signed_by": rev.signed_by or None,
        "applied_by": rev.applied_by or None,
        "created_at": iso(rev.created_at),
        "document": document_of(rev),
        "changes": dict(changes) if changes is not None else None,
    }


def reload_json(node_id: str, dry_run: bool, res: Any) -> dict[str, Any]:
    return {
        "node_id": node_id or None,
        "dry_run": dry_run,
        "success": res.success,
        "error": res.error_message or None,
        "config_file": res.config_file or None,
        "changes": [change_json(c) for c in res.changes],
        "unchanged": sorted(res.unchanged),
    }


# ---- what changed between two documents --------------------------------------------------------


def document_changes(
    newer: Mapping[str, Any] | None, older: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``{"target": changed?, "added": [...], "changed": [...], "removed": [...]}`` by agent id
    (None documents count as empty: a delete, or the spec before its first revision)."""

    def agents(doc: Mapping[str, Any] | None) -> dict[str, str]:
        out = {}
        for a in (doc or {}).get("agents") or []:
            if isinstance(a, Mapping) and isinstance(a.get("id"), str):
                out[a["id"]] = json.dumps(a, sort_keys=True)
        return out

    new, old = agents(newer), agents(older)
    # A first revision or a delete is all agents added / removed, not a target change.
    target_changed = False
    if newer is not None and older is not None:
        target_changed = newer.get("target") != older.get("target")
    return {
        "target": target_changed,
        "added": sorted(set(new) - set(old)),
        "changed": sorted(k for k in set(new) & set(old) if new[k] != old[k]),
        "removed": sorted(set(old) - set(new)),
    }


def changes_text(changes: Mapping[str, Any] | None) -> str:
    """``+nginx ~web -old target`` (``-`` when nothing differs, ``?`` when unknown)."""
    if changes is None:
        return "?"
    parts = [f"+{a}" for a in changes["added"]]
    parts += [f"~{a}" for a in changes["changed"]]
    parts += [f"-{a}" for a in changes["removed"]]
    if changes["target"]:
        parts.append("target")
    return " ".join(parts) or "-"


# ---- table rows ---------------------------------------------------------------------------------


def target_text(labels: Mapping[str, str], nodes: Sequence[str]) -> str:
    """``role=web,node:edge-07`` (at most three nodes named, then a count)."""
    parts = [f"{k}={v}" for k, v in sorted(labels.items())]
    names = sorted(nodes)
    parts += [f"node:{n}" for n in names[:3]]
    if len(names) > 3:
        parts.append(f"+{len(names) - 3} nodes")
    return ",".join(parts) or "-"


def list_text(items: Sequence[str], limit: int = 4) -> str:
    shown = ",".join(items[:limit])
    return (shown + f",+{len(items) - limit}" if len(items) > limit else shown) or "-"


SPEC_HEADERS = ["NAME", "REV", "TARGET", "AGENTS", "NODES", "UPDATED", "BY"]
SPEC_RIGHT = ("REV", "NODES")


def spec_row(s: Any) -> list[Cell]:
    nodes = f"{s.converged_count}/{s.node_count}"
    return [
        (f"{s.name} (deleted)", "dim") if s.deleted else s.name,
        str(s.revision) if s.revision else "-",
        target_text(s.target_labels, list(s.target_nodes)),
        list_text(list(s.agent_ids)),
        (nodes, "green" if s.converged_count == s.node_count else "yellow"),
        ago(s.updated_at) if s.updated_at else "-",
        s.updated_by or "-",
    ]


NODE_STATUS_HEADERS = ["NODE", "TARGET", "RUNNING", "STATE", "REASON"]
NODE_STATUS_RIGHT = ("TARGET", "RUNNING")


def node_status_row(n: Any) -> list[Cell]:
    return [
        n.node_id,
        str(n.target_revision) if n.target_revision else "-",
        str(n.running_revision) if n.running_revision else "-",
        state_cell(n.state),
        n.reason or "-",
    ]


def agent_definition_row(agent: Mapping[str, Any]) -> list[Cell]:
    command = agent.get("command")
    return [
        str(agent.get("id", "?")),
        str(agent.get("type") or "generic"),
        shlex.join(str(a) for a in command) if isinstance(command, list) else "-",
        str(agent.get("user") or "-"),
    ]


# ---- text ----------------------------------------------------------------------------------------


def rollout_counts(r: Any) -> str:
    """``6/10 done, 1 failed, 2 in progress, 1 pending``."""
    return (
        f"{r.done}/{r.total} done, {r.failed} failed, {r.in_progress} in progress, "
        f"{r.pending} pending"
    )


def rollout_fields(r: Any) -> list[tuple[str, Cell]]:
    """``rollout status`` (and ``specs show``) as key: value pairs."""
    p = r.policy
    policy = f"max unavailable {p.max_unavailable or '25%'}, max failures {p.max_failures}, "
    policy += f"healthy deadline {p.healthy_deadline_seconds or 120}s"
    policy += ", auto-rollback" if p.auto_rollback else ""
    revision = f"{r.revision}" + (f" (from {r.from_revision})" if r.from_revision else "")
    pairs: list[tuple[str, Cell]] = [
        ("Spec", r.spec),
        ("Revision", revision),
        ("State", state_cell(r.state)),
        ("Progress", rollout_counts(r)),
    ]
    if r.reason:
        pairs.append(("Reason", r.reason))
    if r.failed_nodes:
        pairs.append(("Failed nodes", ", ".join(sorted(r.failed_nodes))))
    pairs += [
        ("Policy", policy),
        ("Started", f"{ago(r.started_at)}" + (f" by {r.started_by}" if r.started_by else "")),
        ("Updated", ago(r.updated_at)),
    ]
    return pairs


def _change_lines(changes: Iterable[Any], *, arrow: str) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    for c in sorted(changes, key=_change_order):
        mark, style = ACTION_MARKS.get(c.action, ("?", ""))
        lines.append((f"  {mark} {c.agent_id}", style))
        for f in c.fields:
            old = f.old or "(unset)"
            new = f.new or "(unset)"
            lines.append((f"      ~ {f.field}: {old} {arrow} {new}", ""))
        if c.error:
            lines.append((f"      ! {c.error}", "bold red"))
    return lines


def print_changes(out: Output, changes: Iterable[Any]) -> None:
    """Agent changes, one per line (``+ id``, ``~ id`` then its fields, ``- id``)."""
    for text, style in _change_lines(changes, arrow="→" if out.rich else "->"):
        out.line(text, style)


def plan_counts(plan: Iterable[Any]) -> dict[str, int]:
    counts = {"nodes": 0, "added": 0, "changed": 0, "removed": 0}
    for p in plan:
        if p.changes:
            counts["nodes"] += 1
        for c in p.changes:
            if c.action in counts:
                counts[c.action] += 1
    return counts


def counts_text(counts: Mapping[str, int]) -> str:
    return (
        f"{counts['added']} added, {counts['changed']} changed, {counts['removed']} removed "
        f"on {counts['nodes']} node(s)"
    )


MAX_NAMED_NODES = 8


def print_plan(out: Output, plan: Iterable[Any]) -> None:
    """Per node what changes; nodes whose changes are identical are printed once, together
    (a spec usually changes the same way on every node it targets)."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    changes_of: dict[tuple[Any, ...], Any] = {}
    for p in plan:
        if not p.changes:
            continue
        key = tuple(
            (c.agent_id, c.action, tuple((f.field, f.old, f.new) for f in c.fields), c.error)
            for c in sorted(p.changes, key=_change_order)
        )
        groups.setdefault(key, []).append(p.node_id)
        changes_of[key] = p.changes
    for key, nodes in sorted(groups.items(), key=lambda kv: sorted(kv[1])[0]):
        names = sorted(nodes)
        header = ", ".join(names[:MAX_NAMED_NODES])
        if len(names) > MAX_NAMED_NODES:
            header += f" and {len(names) - MAX_NAMED_NODES} more ({len(names)} nodes)"
        out.line(header, "bold")
        print_changes(out, changes_of[key])
