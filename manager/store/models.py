"""Tortoise models: the Manager's whole persistent state.

Times are Unix seconds stored as floats (DOUBLE) on both backends: no time-zone handling,
and the wire format (int64 seconds) is one ``int()`` away. The schema is changed only
through migrations in ``manager/store/migrations`` (``tortoise makemigrations``).
"""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

# Node statuses.
REGISTERING = "registering"
ONLINE = "online"
OFFLINE = "offline"
# Its Daemon said goodbye (a clean stop): not expected to heartbeat, not "missing".
STOPPED = "stopped"
NODE_STATUSES = (REGISTERING, ONLINE, OFFLINE, STOPPED)


class Node(Model):
    """One host running a Daemon, as it registered itself."""

    node_id = fields.CharField(max_length=128, primary_key=True)
    hostname = fields.CharField(max_length=255, default="")
    ip = fields.CharField(max_length=64, default="")
    os = fields.CharField(max_length=64, default="")
    arch = fields.CharField(max_length=64, default="")
    labels: fields.Field[dict[str, str]] = fields.JSONField(default=dict)
    daemon_version = fields.CharField(max_length=64, default="")
    agent_version = fields.CharField(max_length=64, default="")
    daemon_address = fields.CharField(max_length=255, default="")
    heartbeat_interval = fields.FloatField(default=0)
    instance_id = fields.CharField(max_length=128, default="")
    status = fields.CharField(max_length=16, default=REGISTERING, db_index=True)
    registered_at = fields.FloatField(default=0)
    updated_at = fields.FloatField(default=0)
    # Manager's clock at the last heartbeat (drives liveness).
    last_heartbeat = fields.FloatField(null=True)
    # Columns added after the skeleton schema (migration 0002) carry a database
    # default too, so that they can be added to a table that already has rows.
    # When the node entered its current status.
    status_since = fields.FloatField(default=0, db_default=0)
    # Largest timestamp a Daemon put in a heartbeat (its own clock).
    last_heartbeat_reported = fields.BigIntField(default=0, db_default=0)
    # last_heartbeat + grace: the node goes offline once this passes (indexed sweep).
    offline_after = fields.FloatField(default=0, db_index=True, db_default=0)
    grace = fields.FloatField(default=0, db_default=0)

    class Meta:
        table = "fleet_node"


class Agent(Model):
    """An agent as last reported by its Daemon (SyncAgentStates)."""

    id = fields.BigIntField(primary_key=True)
    node_id = fields.CharField(max_length=128)
    agent_id = fields.CharField(max_length=128, db_index=True)
    type = fields.CharField(max_length=64, default="")
    status = fields.CharField(max_length=16, default="", db_index=True)
    pid = fields.IntField(default=0)
    version = fields.CharField(max_length=64, default="")
    start_time = fields.BigIntField(default=0)
    restart_count = fields.IntField(default=0)
    last_heartbeat = fields.BigIntField(default=0)
    status_reason = fields.CharField(max_length=1024, default="")
    config_hash = fields.CharField(max_length=128, default="")
    updated_at = fields.FloatField(default=0)
    # The central spec the agent comes from and the revision it runs ("" / 0: daemon.toml).
    spec = fields.CharField(max_length=128, default="", db_default="")
    spec_revision = fields.BigIntField(default=0, db_default=0)

    class Meta:
        table = "fleet_agent"
        unique_together = (("node_id", "agent_id"),)


class MetricSample(Model):
    """One host metric sample (ReportMetrics).

    A sample is identified by (node, type, timestamp): a Daemon that resends a report
    whose answer it lost (at-least-once delivery) does not store it twice.
    """

    id = fields.BigIntField(primary_key=True)
    node_id = fields.CharField(max_length=128)
    type = fields.CharField(max_length=32)
    timestamp = fields.BigIntField(db_index=True)
    values: fields.Field[dict[str, float]] = fields.JSONField(default=dict)

    class Meta:
        table = "fleet_metric_sample"
        indexes = (("node_id", "timestamp"),)
        unique_together = (("node_id", "type", "timestamp"),)


class NodeEvent(Model):
    """A node status transition and why it happened."""

    id = fields.BigIntField(primary_key=True)
    node_id = fields.CharField(max_length=128)
    timestamp = fields.FloatField()
    old_status = fields.CharField(max_length=16, default="")
    new_status = fields.CharField(max_length=16, default="")
    reason = fields.CharField(max_length=1024, default="")

    class Meta:
        table = "fleet_node_event"
        indexes = (("node_id", "timestamp"),)


class AgentEvent(Model):
    """What happened to an agent (manager/events.py): derived from synced states, or an
    operation the Manager relayed (with the admin identity that asked)."""

    id = fields.BigIntField(primary_key=True)
    timestamp = fields.FloatField()
    node_id = fields.CharField(max_length=128)
    agent_id = fields.CharField(max_length=128, default="")
    kind = fields.CharField(max_length=16)
    message = fields.CharField(max_length=1024, default="")
    actor = fields.CharField(max_length=255, default="")
    old_status = fields.CharField(max_length=16, default="")
    new_status = fields.CharField(max_length=16, default="")
    pid = fields.IntField(default=0)

    class Meta:
        table = "fleet_agent_event"
        indexes = (("node_id", "agent_id", "id"), ("agent_id", "id"))


# ---- desired state (docs/specs.md) ----

# Revision kinds.
APPLY = "apply"
ROLLBACK = "rollback"
DELETE = "delete"

# Rollout states: the first two are active (they drive waves).
RUNNING = "running"
PAUSED = "paused"
SUCCEEDED = "succeeded"
FAILED = "failed"
ROLLED_BACK = "rolled_back"
INTERRUPTED = "interrupted"
ACTIVE_ROLLOUT_STATES = (RUNNING, PAUSED)

# Rollout node states.
NODE_IN_PROGRESS = "in_progress"
NODE_DONE = "done"
NODE_FAILED = "failed"


class Spec(Model):
    """A central spec: its current and next revision."""

    name = fields.CharField(max_length=128, primary_key=True)
    # Current revision (the delete revision once deleted; 0 before the first apply).
    revision = fields.BigIntField(default=0)
    next_revision = fields.BigIntField(default=1)
    deleted = fields.BooleanField(default=False)
    updated_at = fields.FloatField(default=0)
    # Who made the last change, e.g. "admin/alice".
    updated_by = fields.CharField(max_length=255, default="")

    class Meta:
        table = "fleet_spec"


class SpecRevision(Model):
    """One revision of a spec exactly as signed, with who and when."""

    id = fields.BigIntField(primary_key=True)
    name = fields.CharField(max_length=128)
    revision = fields.BigIntField()
    kind = fields.CharField(max_length=16)
    payload = fields.BinaryField()
    signature = fields.BinaryField()
    signer_cert = fields.BinaryField()
    signed_by = fields.CharField(max_length=255, default="")
    applied_by = fields.CharField(max_length=255, default="")
    created_at = fields.FloatField()

    class Meta:
        table = "fleet_spec_revision"
        unique_together = (("name", "revision"),)


class SpecNodeState(Model):
    """How one spec stands on one node, as its Daemon reported it."""

    id = fields.BigIntField(primary_key=True)
    node_id = fields.CharField(max_length=128)
    name = fields.CharField(max_length=128, db_index=True)
    # The newest revision the node was offered, and the one whose agents run (0: none).
    revision = fields.BigIntField(default=0)
    running_revision = fields.BigIntField(default=0)
    status = fields.CharField(max_length=16, default="")
    reason = fields.CharField(max_length=1024, default="")
    updated_at = fields.FloatField(default=0)

    class Meta:
        table = "fleet_spec_node_state"
        unique_together = (("node_id", "name"),)


class Rollout(Model):
    """Moving a spec's nodes to a new revision in waves."""

    id = fields.BigIntField(primary_key=True)
    spec = fields.CharField(max_length=128, db_index=True)
    revision = fields.BigIntField()
    from_revision = fields.BigIntField(default=0)
    state = fields.CharField(max_length=16, db_index=True)
    reason = fields.TextField(default="")
    # RolloutPolicy: max_unavailable, max_failures, auto_rollback, healthy_deadline.
    policy: fields.Field[dict[str, object]] = fields.JSONField(default=dict)
    # The last wave started (nodes moved at once are wave 0).
    wave = fields.IntField(default=0)
    # The pre-signed rollback revision (revision + 1, the previous content), kept
    # unused unless this rollout stops with auto_rollback; 0 / empty when none was sent.
    rollback_revision = fields.BigIntField(default=0)
    rollback_payload = fields.BinaryField(null=True)
    rollback_signature = fields.BinaryField(null=True)
    rollback_signer_cert = fields.BinaryField(null=True)
    rollback_signed_by = fields.CharField(max_length=255, default="")
    started_at = fields.FloatField(default=0)
    updated_at = fields.FloatField(default=0)
    started_by = fields.CharField(max_length=255, default="")

    class Meta:
        table = "fleet_rollout"


class RolloutNode(Model):
    """A node a rollout moved: when, in which wave, how it went."""

    id = fields.BigIntField(primary_key=True)
    rollout_id = fields.BigIntField(db_index=True)
    node_id = fields.CharField(max_length=128)
    wave = fields.IntField(default=0)
    state = fields.CharField(max_length=16, default=NODE_IN_PROGRESS)
    pushed_at = fields.FloatField(default=0)
    finished_at = fields.FloatField(default=0)
    reason = fields.CharField(max_length=1024, default="")

    class Meta:
        table = "fleet_rollout_node"
        unique_together = (("rollout_id", "node_id"),)


class JoinToken(Model):
    """A join token (docs/security.md): only the SHA-256 of its secret is kept."""

    # The public part of the token, before the dot.
    id = fields.CharField(max_length=16, primary_key=True)
    secret_sha256 = fields.CharField(max_length=64)
    created_at = fields.FloatField()
    expires_at = fields.FloatField(db_index=True)
    # 0: unlimited uses within the TTL.
    max_uses = fields.IntField(default=0)
    uses = fields.IntField(default=0)
    labels: fields.Field[dict[str, str]] = fields.JSONField(default=dict)
    description = fields.CharField(max_length=255, default="")
    created_by = fields.CharField(max_length=255, default="")
    revoked_at = fields.FloatField(default=0)
    # Node ids that joined with it, oldest first (the last 100).
    nodes: fields.Field[list[str]] = fields.JSONField(default=list)

    class Meta:
        table = "fleet_join_token"


class Certificate(Model):
    """A certificate the Manager issued, or one revoked by serial that it did not issue
    (``issued_at`` 0). Rows go once the certificate has expired (retention)."""

    # Lower-case hex, no leading zeros (common.pki.normalize_serial).
    serial = fields.CharField(max_length=64, primary_key=True)
    # "node/web-1" ("" when unknown: a foreign certificate revoked by serial).
    identity = fields.CharField(max_length=160, default="", db_index=True)
    not_before = fields.FloatField(default=0)
    # 0 when unknown (foreign certificate): kept until an operator deletes it.
    not_after = fields.FloatField(default=0, db_index=True)
    issued_at = fields.FloatField(default=0)
    # "join" or "renew" ("" for a foreign certificate).
    issued_by = fields.CharField(max_length=16, default="")
    token_id = fields.CharField(max_length=16, default="")
    revoked_at = fields.FloatField(default=0, db_index=True)
    revoked_reason = fields.CharField(max_length=255, default="")
    revoked_by = fields.CharField(max_length=255, default="")
    # Revocation list version (a global sequence) when revoked, 0 while valid.
    revocation_seq = fields.BigIntField(default=0, db_index=True)

    class Meta:
        table = "fleet_certificate"


class IdentityRevocation(Model):
    """Every certificate of ``identity`` with notBefore at or before ``not_before_max``
    is revoked: how a removed node's certificates go, certgen-made ones included."""

    id = fields.BigIntField(primary_key=True)
    identity = fields.CharField(max_length=160, db_index=True)
    not_before_max = fields.FloatField()
    revoked_at = fields.FloatField()
    reason = fields.CharField(max_length=255, default="")
    revoked_by = fields.CharField(max_length=255, default="")
    # Revocation list version (shared sequence with Certificate.revocation_seq).
    revocation_seq = fields.BigIntField(default=0, db_index=True)

    class Meta:
        table = "fleet_identity_revocation"


class NodeEnrollment(Model):
    """What the Manager decided about a node when it joined: the token's labels, which
    win over the labels the Daemon reports at registration."""

    node_id = fields.CharField(max_length=128, primary_key=True)
    labels: fields.Field[dict[str, str]] = fields.JSONField(default=dict)
    token_id = fields.CharField(max_length=16, default="")
    joined_at = fields.FloatField(default=0)

    class Meta:
        table = "fleet_node_enrollment"


class Counter(Model):
    """A named sequence shared by every Manager on the database (``revocations``: the
    revocation list's version), advanced with one atomic UPDATE."""

    name = fields.CharField(max_length=64, primary_key=True)
    value = fields.BigIntField(default=0)

    class Meta:
        table = "fleet_counter"
