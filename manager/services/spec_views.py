"""The admin messages of desired state: Spec, SpecRevision, SpecNodeStatus, Rollout.

Plain builders from stored rows, so the RPC module (spec_admin.py) only decides what to
load and what to change.
"""

from __future__ import annotations

from collections.abc import Mapping

from schema import admin_pb, daemon_pb

from ..specs.catalog import StoredRevision
from ..specs.desired import STATUS_APPLIED, STATUS_FAILED, STATUS_REFUSED
from ..specs.policy import Policy
from ..specs.rollouts import Progress
from ..store import ONLINE
from ..store.models import (
    ACTIVE_ROLLOUT_STATES,
    FAILED,
    NODE_DONE,
    NODE_FAILED,
    NODE_IN_PROGRESS,
    Rollout,
    Spec,
    SpecRevision,
)
from ..store.specs import NodeFacts, RolloutNodeRow, SpecStateRow

# SpecNodeStatus.state values.
CONVERGED = "converged"
PENDING = "pending"
ROLLING = "rolling"
REFUSED = "refused"
NODE_STATE_FAILED = "failed"
OFFLINE = "offline"


def spec_message(
    spec: Spec,
    current: StoredRevision | None,
    nodes: list[NodeFacts],
    states: Mapping[tuple[str, str], SpecStateRow],
) -> admin_pb.Spec:
    """A spec with its current content and how many targeted nodes run its revision."""
    message = admin_pb.Spec(
        name=spec.name,
        revision=spec.revision,
        deleted=spec.deleted,
        next_revision=spec.next_revision,
        updated_at=int(spec.updated_at),
        updated_by=spec.updated_by,
    )
    if current is None or spec.deleted:
        return message
    target = current.doc.target
    message.target_labels = dict(target.labels)
    message.target_nodes = list(target.nodes)
    message.agent_ids = list(current.doc.agent_ids)
    targeted = [n for n in nodes if target.matches(n.node_id, n.labels)]
    message.node_count = len(targeted)
    message.converged_count = sum(
        1
        for n in targeted
        if (state := states.get((n.node_id, spec.name))) is not None
        and state.running_revision == spec.revision
        and state.status == STATUS_APPLIED
    )
    return message


def revision_message(row: SpecRevision) -> admin_pb.SpecRevision:
    """A stored revision; ``signed`` is unset for a delete."""
    message = admin_pb.SpecRevision(
        name=row.name,
        revision=row.revision,
        kind=row.kind,
        signed_by=row.signed_by,
        applied_by=row.applied_by,
        created_at=int(row.created_at),
    )
    if row.payload:
        message.signed = daemon_pb.SignedSpec(
            payload=bytes(row.payload),
            signature=bytes(row.signature),
            signer_cert=bytes(row.signer_cert),
        )
    return message


def rollout_message(rollout: Rollout, progress: Progress | None) -> admin_pb.Rollout:
    """A rollout with its node counts (``progress`` None: counts left at 0)."""
    message = admin_pb.Rollout(
        spec=rollout.spec,
        revision=rollout.revision,
        from_revision=rollout.from_revision,
        state=rollout.state,
        reason=rollout.reason,
        policy=Policy.from_json(rollout.policy).to_message(),
        started_at=int(rollout.started_at),
        updated_at=int(rollout.updated_at),
        started_by=rollout.started_by,
    )
    if progress is not None:
        pending = (
            len(progress.pending_online) + len(progress.pending_offline) + len(progress.at_once)
        )
        message.total = len(progress.rows) + pending
        message.done = progress.count(NODE_DONE)
        message.failed = progress.count(NODE_FAILED)
        message.in_progress = progress.count(NODE_IN_PROGRESS)
        message.pending = pending
        message.failed_nodes = progress.failed_nodes
    return message


def node_status(
    node: NodeFacts,
    *,
    target_revision: int,
    current_revision: int,
    state: SpecStateRow | None,
    row: RolloutNodeRow | None,
    rollout_state: str,
) -> admin_pb.SpecNodeStatus:
    """How one node stands with one spec (see SpecNodeStatus.state)."""
    running = state.running_revision if state is not None else 0
    reported = state.revision if state is not None else 0
    reason = state.reason if state is not None else ""
    if node.status != ONLINE:
        kind, reason = OFFLINE, f"node is {node.status}"
    elif row is not None and row.state == NODE_FAILED:
        kind, reason = NODE_STATE_FAILED, row.reason
    elif state is not None and reported == target_revision and state.status == STATUS_REFUSED:
        kind = REFUSED
    elif state is not None and reported == target_revision and state.status == STATUS_FAILED:
        kind = NODE_STATE_FAILED
    elif (
        row is not None and row.state == NODE_IN_PROGRESS and rollout_state in ACTIVE_ROLLOUT_STATES
    ):
        kind = ROLLING
    elif (target_revision == 0 and state is None) or (
        state is not None
        and target_revision == current_revision
        and running == target_revision
        and state.status == STATUS_APPLIED
    ):
        kind = CONVERGED
    elif target_revision and target_revision < current_revision:
        kind = PENDING
        reason = (
            f"kept at revision {target_revision}: the rollout failed"
            if rollout_state == FAILED
            else f"at revision {target_revision}, waiting for its wave"
        )
    else:
        kind = PENDING
    return admin_pb.SpecNodeStatus(
        node_id=node.node_id,
        target_revision=target_revision,
        running_revision=running,
        state=kind,
        reason=reason,
        updated_at=int(state.updated_at) if state is not None else int(row.pushed_at if row else 0),
    )
