"""What an apply did (:class:`Outcome`), and printing it: a summary line, the plan of a dry
run, the failed nodes of a stopped rollout; or one JSON document (docs/fleetctl.md).
The exit code follows: 0 when the rollout succeeded, nothing changed or it was not to be
followed; 1 when it stopped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import CliError, ExitCode
from ._shared import State


@dataclass
class Outcome:
    """What an apply did; printed by :func:`report`."""

    name: str
    revision: int  # the revision signed (or the current one when unchanged)
    changed: bool
    dry_run: bool
    detached: bool
    policy: Any  # admin_pb2.RolloutPolicy sent
    rollback_revision: int = 0
    plan: list[Any] = field(default_factory=list)
    rollout: Any = None  # our rollout, last seen (None: none started, or a dry run)
    final: Any = None  # the last rollout seen (ours, its rollback, a newer one; None: gone)
    nodes: list[Any] = field(default_factory=list)  # SpecNodeStatus of the failed nodes
    elapsed: float = 0.0

    @property
    def result(self) -> str:
        """unchanged, planned, stored, succeeded, failed, rolled_back, interrupted,
        superseded or gone (the spec was deleted while rolling out)."""
        if not self.changed:
            return "unchanged"
        if self.dry_run:
            return "planned"
        if self.rollout is None:
            return "stored"
        if self.detached:
            return "stored"
        final = self.final
        if final is None:
            return "gone"
        if self.rollback_revision and final.revision == self.rollback_revision:
            return "rolled_back"
        if final.revision != self.revision:
            return "superseded"
        return str(final.state)


def outcome_json(o: Outcome) -> dict[str, Any]:
    from ..spec_views import node_status_json, plan_json, policy_json, rollout_json

    return {
        "spec": o.name,
        "revision": o.revision,
        "result": o.result,
        "changed": o.changed,
        "dry_run": o.dry_run,
        "policy": policy_json(o.policy),
        "rollback_revision": o.rollback_revision or None,
        "plan": plan_json(o.plan),
        "rollout": rollout_json(o.rollout) if o.rollout is not None else None,
        "final_rollout": rollout_json(o.final)
        if o.final is not None and o.final is not o.rollout
        else None,
        "failed_nodes": [node_status_json(n) for n in o.nodes],
    }


def report(st: State, o: Outcome, *, as_json: bool) -> None:
    """Print an apply's outcome; exit 1 (with one line naming the failed nodes) unless the
    rollout succeeded, nothing changed, or we were not to follow it."""
    from ..spec_views import (
        NODE_STATUS_HEADERS,
        NODE_STATUS_RIGHT,
        counts_text,
        node_status_row,
        plan_counts,
        print_plan,
        rollout_counts,
    )

    out = st.output()
    result = o.result
    if as_json:
        out.json(outcome_json(o))
    elif result == "unchanged":
        out.line(f"spec {o.name} unchanged at revision {o.revision}")
    elif result == "planned":
        counts = plan_counts(o.plan)
        if counts["nodes"]:
            out.line(f"spec {o.name} revision {o.revision} would change:", "bold")
            print_plan(out, o.plan)
            out.line(f"dry run: {counts_text(counts)}; nothing was applied")
        else:
            out.line(
                f"spec {o.name} revision {o.revision} would change no agent on any node "
                f"(dry run: nothing was applied; targeted nodes: 'fleetctl specs status {o.name}')"
            )
    elif result == "stored":
        what = counts_text(plan_counts(o.plan))
        if o.rollout is None:
            out.line(f"spec {o.name} revision {o.revision} applied ({what}); nothing to roll out")
        else:
            out.line(
                f"spec {o.name} revision {o.revision} applied ({what}); rolling out to "
                f"{o.rollout.total} node(s) — follow it with "
                f"'fleetctl rollout status {o.name} --watch'"
            )
    elif result == "succeeded":
        out.line(
            f"spec {o.name} revision {o.revision} rolled out to {o.rollout.done} of "
            f"{o.rollout.total} node(s) in {o.elapsed:.0f}s",
            "green",
        )
    if result in ("unchanged", "planned", "stored", "succeeded"):
        return
    r, final = o.rollout, o.final
    if result == "gone":
        message = f"the rollout of {o.name} revision {o.revision} is gone (was the spec deleted?)"
    elif result == "superseded":
        by = f" (started by {final.started_by})" if final.started_by else ""
        message = (
            f"the rollout of {o.name} revision {o.revision} was superseded by revision "
            f"{final.revision}{by}"
        )
    elif result == "rolled_back":
        message = (
            f"the rollout of {o.name} revision {o.revision} stopped ({rollout_counts(r)}) and "
            "was rolled back"
        )
        if o.rollback_revision:
            message += f": revision {o.rollback_revision} restores the previous content"
        if o.rollback_revision and final.revision == o.rollback_revision:  # followed too
            message += f" (its rollout {final.state.replace('_', ' ')})"
    else:
        message = (
            f"the rollout of {o.name} revision {o.revision} {result.replace('_', ' ')} "
            f"({rollout_counts(r)})"
        )
    reason = (final.reason if final is not None else "") or r.reason
    if not as_json:
        out.line(message + (f": {reason}" if reason else ""), "bold red")
        if o.nodes:
            out.table(
                NODE_STATUS_HEADERS, [node_status_row(n) for n in o.nodes], right=NODE_STATUS_RIGHT
            )
    failed = [n.node_id for n in o.nodes]
    named = ", ".join(
        f"{n.node_id} ({n.reason})" if n.reason else n.node_id for n in o.nodes[:5]
    ) + (f" and {len(failed) - 5} more" if len(failed) > 5 else "")
    raise CliError(
        f"{o.name} revision {o.revision}: rollout {result.replace('_', ' ')}"
        + (f"; failed node(s): {named}" if failed else "")
        + f" — see 'fleetctl specs status {o.name}'",
        ExitCode.FAILED,
    )
