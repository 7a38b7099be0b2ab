from schema.gen.pb2.fleet.daemon.v1 import daemon_pb2 as _daemon_pb2
from schema.gen.pb2.fleet.manager.v1 import manager_pb2 as _manager_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Node(_message.Message):
    __slots__ = ("node_id", "hostname", "ip", "os", "arch", "labels", "daemon_version", "agent_version", "daemon_address", "status", "last_heartbeat", "registered_at", "updated_at", "status_since", "heartbeat_interval_seconds", "agent_count")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DAEMON_VERSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DAEMON_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_SINCE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AGENT_COUNT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    ip: str
    os: str
    arch: str
    labels: _containers.ScalarMap[str, str]
    daemon_version: str
    agent_version: str
    daemon_address: str
    status: str
    last_heartbeat: int
    registered_at: int
    updated_at: int
    status_since: int
    heartbeat_interval_seconds: int
    agent_count: int
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., os: _Optional[str] = ..., arch: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., daemon_version: _Optional[str] = ..., agent_version: _Optional[str] = ..., daemon_address: _Optional[str] = ..., status: _Optional[str] = ..., last_heartbeat: _Optional[int] = ..., registered_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., status_since: _Optional[int] = ..., heartbeat_interval_seconds: _Optional[int] = ..., agent_count: _Optional[int] = ...) -> None: ...

class NodeEvent(_message.Message):
    __slots__ = ("timestamp", "old_status", "new_status", "reason")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    OLD_STATUS_FIELD_NUMBER: _ClassVar[int]
    NEW_STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    timestamp: int
    old_status: str
    new_status: str
    reason: str
    def __init__(self, timestamp: _Optional[int] = ..., old_status: _Optional[str] = ..., new_status: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Agent(_message.Message):
    __slots__ = ("node_id", "id", "type", "status", "pid", "version", "start_time", "restart_count", "last_heartbeat", "status_reason", "config_hash", "updated_at", "node_status", "spec", "spec_revision")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    NODE_STATUS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_REVISION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    id: str
    type: str
    status: str
    pid: int
    version: str
    start_time: int
    restart_count: int
    last_heartbeat: int
    status_reason: str
    config_hash: str
    updated_at: int
    node_status: str
    spec: str
    spec_revision: int
    def __init__(self, node_id: _Optional[str] = ..., id: _Optional[str] = ..., type: _Optional[str] = ..., status: _Optional[str] = ..., pid: _Optional[int] = ..., version: _Optional[str] = ..., start_time: _Optional[int] = ..., restart_count: _Optional[int] = ..., last_heartbeat: _Optional[int] = ..., status_reason: _Optional[str] = ..., config_hash: _Optional[str] = ..., updated_at: _Optional[int] = ..., node_status: _Optional[str] = ..., spec: _Optional[str] = ..., spec_revision: _Optional[int] = ...) -> None: ...

class NodeError(_message.Message):
    __slots__ = ("node_id", "code", "message")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    code: str
    message: str
    def __init__(self, node_id: _Optional[str] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("status", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    status: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, status: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ("node_id", "event_limit")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    event_limit: int
    def __init__(self, node_id: _Optional[str] = ..., event_limit: _Optional[int] = ...) -> None: ...

class GetNodeResponse(_message.Message):
    __slots__ = ("node", "agents", "events")
    NODE_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    node: Node
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    events: _containers.RepeatedCompositeFieldContainer[NodeEvent]
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[NodeEvent, _Mapping]]] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ("node_id", "status", "live")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    status: str
    live: bool
    def __init__(self, node_id: _Optional[str] = ..., status: _Optional[str] = ..., live: _Optional[bool] = ...) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents", "errors")
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[Agent]
    errors: _containers.RepeatedCompositeFieldContainer[NodeError]
    def __init__(self, agents: _Optional[_Iterable[_Union[Agent, _Mapping]]] = ..., errors: _Optional[_Iterable[_Union[NodeError, _Mapping]]] = ...) -> None: ...

class OperateAgentRequest(_message.Message):
    __slots__ = ("node_id", "agent_id", "operation")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    operation: str
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., operation: _Optional[str] = ...) -> None: ...

class OperateAgentResponse(_message.Message):
    __slots__ = ("success", "error_message", "node_id", "agent")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error_message: str
    node_id: str
    agent: Agent
    def __init__(self, success: _Optional[bool] = ..., error_message: _Optional[str] = ..., node_id: _Optional[str] = ..., agent: _Optional[_Union[Agent, _Mapping]] = ...) -> None: ...

class GetAgentMetricsRequest(_message.Message):
    __slots__ = ("node_id", "agent_id", "since_seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    since_seconds: int
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., since_seconds: _Optional[int] = ...) -> None: ...

class GetAgentMetricsResponse(_message.Message):
    __slots__ = ("node_id", "agent_id", "data_points")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_POINTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    data_points: _containers.RepeatedCompositeFieldContainer[_daemon_pb2.ResourceDataPoint]
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., data_points: _Optional[_Iterable[_Union[_daemon_pb2.ResourceDataPoint, _Mapping]]] = ...) -> None: ...

class QueryNodeMetricsRequest(_message.Message):
    __slots__ = ("node_id", "type", "since_seconds", "limit")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SINCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    type: str
    since_seconds: int
    limit: int
    def __init__(self, node_id: _Optional[str] = ..., type: _Optional[str] = ..., since_seconds: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class QueryNodeMetricsResponse(_message.Message):
    __slots__ = ("node_id", "metrics")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    metrics: _containers.RepeatedCompositeFieldContainer[_manager_pb2.MetricData]
    def __init__(self, node_id: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[_manager_pb2.MetricData, _Mapping]]] = ...) -> None: ...

class PushUpdateRequest(_message.Message):
    __slots__ = ("node_id", "agent_id", "config_json", "version", "restart")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    config_json: str
    version: str
    restart: bool
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., config_json: _Optional[str] = ..., version: _Optional[str] = ..., restart: _Optional[bool] = ...) -> None: ...

class PushUpdateResponse(_message.Message):
    __slots__ = ("node_id", "result")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    result: _daemon_pb2.UpdateResponse
    def __init__(self, node_id: _Optional[str] = ..., result: _Optional[_Union[_daemon_pb2.UpdateResponse, _Mapping]] = ...) -> None: ...

class GetAgentConfigRequest(_message.Message):
    __slots__ = ("node_id", "agent_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ...) -> None: ...

class GetAgentConfigResponse(_message.Message):
    __slots__ = ("node_id", "config")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    config: _daemon_pb2.ConfigResponse
    def __init__(self, node_id: _Optional[str] = ..., config: _Optional[_Union[_daemon_pb2.ConfigResponse, _Mapping]] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("node_id", "force")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    force: bool
    def __init__(self, node_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class RemoveNodeResponse(_message.Message):
    __slots__ = ("removed", "message", "certificates_revoked")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATES_REVOKED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    message: str
    certificates_revoked: bool
    def __init__(self, removed: _Optional[bool] = ..., message: _Optional[str] = ..., certificates_revoked: _Optional[bool] = ...) -> None: ...

class GetAgentLogRequest(_message.Message):
    __slots__ = ("node_id", "agent_id", "stream", "lines")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    stream: str
    lines: int
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., stream: _Optional[str] = ..., lines: _Optional[int] = ...) -> None: ...

class GetAgentLogResponse(_message.Message):
    __slots__ = ("node_id", "log")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    log: _daemon_pb2.AgentLogResponse
    def __init__(self, node_id: _Optional[str] = ..., log: _Optional[_Union[_daemon_pb2.AgentLogResponse, _Mapping]] = ...) -> None: ...

class RolloutPolicy(_message.Message):
    __slots__ = ("max_unavailable", "max_failures", "auto_rollback", "healthy_deadline_seconds")
    MAX_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    AUTO_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    max_unavailable: str
    max_failures: int
    auto_rollback: bool
    healthy_deadline_seconds: int
    def __init__(self, max_unavailable: _Optional[str] = ..., max_failures: _Optional[int] = ..., auto_rollback: _Optional[bool] = ..., healthy_deadline_seconds: _Optional[int] = ...) -> None: ...

class Spec(_message.Message):
    __slots__ = ("name", "revision", "deleted", "next_revision", "updated_at", "updated_by", "target_labels", "target_nodes", "agent_ids", "node_count", "converged_count")
    class TargetLabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    NEXT_REVISION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    TARGET_LABELS_FIELD_NUMBER: _ClassVar[int]
    TARGET_NODES_FIELD_NUMBER: _ClassVar[int]
    AGENT_IDS_FIELD_NUMBER: _ClassVar[int]
    NODE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: int
    deleted: bool
    next_revision: int
    updated_at: int
    updated_by: str
    target_labels: _containers.ScalarMap[str, str]
    target_nodes: _containers.RepeatedScalarFieldContainer[str]
    agent_ids: _containers.RepeatedScalarFieldContainer[str]
    node_count: int
    converged_count: int
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[int] = ..., deleted: _Optional[bool] = ..., next_revision: _Optional[int] = ..., updated_at: _Optional[int] = ..., updated_by: _Optional[str] = ..., target_labels: _Optional[_Mapping[str, str]] = ..., target_nodes: _Optional[_Iterable[str]] = ..., agent_ids: _Optional[_Iterable[str]] = ..., node_count: _Optional[int] = ..., converged_count: _Optional[int] = ...) -> None: ...

class SpecRevision(_message.Message):
    __slots__ = ("name", "revision", "kind", "signed", "signed_by", "applied_by", "created_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIGNED_FIELD_NUMBER: _ClassVar[int]
    SIGNED_BY_FIELD_NUMBER: _ClassVar[int]
    APPLIED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: int
    kind: str
    signed: _daemon_pb2.SignedSpec
    signed_by: str
    applied_by: str
    created_at: int
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[int] = ..., kind: _Optional[str] = ..., signed: _Optional[_Union[_daemon_pb2.SignedSpec, _Mapping]] = ..., signed_by: _Optional[str] = ..., applied_by: _Optional[str] = ..., created_at: _Optional[int] = ...) -> None: ...

class SpecNodeStatus(_message.Message):
    __slots__ = ("node_id", "target_revision", "running_revision", "state", "reason", "updated_at")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_REVISION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REVISION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    target_revision: int
    running_revision: int
    state: str
    reason: str
    updated_at: int
    def __init__(self, node_id: _Optional[str] = ..., target_revision: _Optional[int] = ..., running_revision: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., updated_at: _Optional[int] = ...) -> None: ...

class Rollout(_message.Message):
    __slots__ = ("spec", "revision", "from_revision", "state", "reason", "policy", "total", "done", "failed", "in_progress", "pending", "failed_nodes", "started_at", "updated_at", "started_by")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    FAILED_NODES_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_BY_FIELD_NUMBER: _ClassVar[int]
    spec: str
    revision: int
    from_revision: int
    state: str
    reason: str
    policy: RolloutPolicy
    total: int
    done: int
    failed: int
    in_progress: int
    pending: int
    failed_nodes: _containers.RepeatedScalarFieldContainer[str]
    started_at: int
    updated_at: int
    started_by: str
    def __init__(self, spec: _Optional[str] = ..., revision: _Optional[int] = ..., from_revision: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., policy: _Optional[_Union[RolloutPolicy, _Mapping]] = ..., total: _Optional[int] = ..., done: _Optional[int] = ..., failed: _Optional[int] = ..., in_progress: _Optional[int] = ..., pending: _Optional[int] = ..., failed_nodes: _Optional[_Iterable[str]] = ..., started_at: _Optional[int] = ..., updated_at: _Optional[int] = ..., started_by: _Optional[str] = ...) -> None: ...

class NodePlan(_message.Message):
    __slots__ = ("node_id", "changes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    changes: _containers.RepeatedCompositeFieldContainer[_daemon_pb2.AgentChange]
    def __init__(self, node_id: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[_daemon_pb2.AgentChange, _Mapping]]] = ...) -> None: ...

class ApplySpecRequest(_message.Message):
    __slots__ = ("spec", "dry_run", "policy", "rollback")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    spec: _daemon_pb2.SignedSpec
    dry_run: bool
    policy: RolloutPolicy
    rollback: _daemon_pb2.SignedSpec
    def __init__(self, spec: _Optional[_Union[_daemon_pb2.SignedSpec, _Mapping]] = ..., dry_run: _Optional[bool] = ..., policy: _Optional[_Union[RolloutPolicy, _Mapping]] = ..., rollback: _Optional[_Union[_daemon_pb2.SignedSpec, _Mapping]] = ...) -> None: ...

class ApplySpecResponse(_message.Message):
    __slots__ = ("spec", "changed", "plan", "rollout")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    spec: Spec
    changed: bool
    plan: _containers.RepeatedCompositeFieldContainer[NodePlan]
    rollout: Rollout
    def __init__(self, spec: _Optional[_Union[Spec, _Mapping]] = ..., changed: _Optional[bool] = ..., plan: _Optional[_Iterable[_Union[NodePlan, _Mapping]]] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class ListSpecsRequest(_message.Message):
    __slots__ = ("include_deleted",)
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    include_deleted: bool
    def __init__(self, include_deleted: _Optional[bool] = ...) -> None: ...

class ListSpecsResponse(_message.Message):
    __slots__ = ("specs",)
    SPECS_FIELD_NUMBER: _ClassVar[int]
    specs: _containers.RepeatedCompositeFieldContainer[Spec]
    def __init__(self, specs: _Optional[_Iterable[_Union[Spec, _Mapping]]] = ...) -> None: ...

class GetSpecRequest(_message.Message):
    __slots__ = ("name", "history_limit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    history_limit: int
    def __init__(self, name: _Optional[str] = ..., history_limit: _Optional[int] = ...) -> None: ...

class GetSpecResponse(_message.Message):
    __slots__ = ("spec", "current", "history", "nodes", "rollout")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    spec: Spec
    current: SpecRevision
    history: _containers.RepeatedCompositeFieldContainer[SpecRevision]
    nodes: _containers.RepeatedCompositeFieldContainer[SpecNodeStatus]
    rollout: Rollout
    def __init__(self, spec: _Optional[_Union[Spec, _Mapping]] = ..., current: _Optional[_Union[SpecRevision, _Mapping]] = ..., history: _Optional[_Iterable[_Union[SpecRevision, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[SpecNodeStatus, _Mapping]]] = ..., rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class DeleteSpecRequest(_message.Message):
    __slots__ = ("name", "dry_run")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    name: str
    dry_run: bool
    def __init__(self, name: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class DeleteSpecResponse(_message.Message):
    __slots__ = ("spec", "plan")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    spec: Spec
    plan: _containers.RepeatedCompositeFieldContainer[NodePlan]
    def __init__(self, spec: _Optional[_Union[Spec, _Mapping]] = ..., plan: _Optional[_Iterable[_Union[NodePlan, _Mapping]]] = ...) -> None: ...

class GetRolloutRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: str
    def __init__(self, spec: _Optional[str] = ...) -> None: ...

class GetRolloutResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class SetRolloutStateRequest(_message.Message):
    __slots__ = ("spec", "action")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    spec: str
    action: str
    def __init__(self, spec: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class SetRolloutStateResponse(_message.Message):
    __slots__ = ("rollout",)
    ROLLOUT_FIELD_NUMBER: _ClassVar[int]
    rollout: Rollout
    def __init__(self, rollout: _Optional[_Union[Rollout, _Mapping]] = ...) -> None: ...

class ReloadDaemonRequest(_message.Message):
    __slots__ = ("node_id", "dry_run")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    dry_run: bool
    def __init__(self, node_id: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ReloadDaemonResponse(_message.Message):
    __slots__ = ("node_id", "result")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    result: _daemon_pb2.ReloadConfigResponse
    def __init__(self, node_id: _Optional[str] = ..., result: _Optional[_Union[_daemon_pb2.ReloadConfigResponse, _Mapping]] = ...) -> None: ...

class JoinToken(_message.Message):
    __slots__ = ("id", "created_at", "expires_at", "max_uses", "uses", "labels", "description", "created_by", "revoked_at", "status", "nodes")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    id: str
    created_at: int
    expires_at: int
    max_uses: int
    uses: int
    labels: _containers.ScalarMap[str, str]
    description: str
    created_by: str
    revoked_at: int
    status: str
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., created_at: _Optional[int] = ..., expires_at: _Optional[int] = ..., max_uses: _Optional[int] = ..., uses: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., description: _Optional[str] = ..., created_by: _Optional[str] = ..., revoked_at: _Optional[int] = ..., status: _Optional[str] = ..., nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ("ttl_seconds", "max_uses", "labels", "description")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ttl_seconds: int
    max_uses: int
    labels: _containers.ScalarMap[str, str]
    description: str
    def __init__(self, ttl_seconds: _Optional[int] = ..., max_uses: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., description: _Optional[str] = ...) -> None: ...

class CreateJoinTokenResponse(_message.Message):
    __slots__ = ("token", "info", "ca_hash", "enroll_address")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    CA_HASH_FIELD_NUMBER: _ClassVar[int]
    ENROLL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    token: str
    info: JoinToken
    ca_hash: str
    enroll_address: str
    def __init__(self, token: _Optional[str] = ..., info: _Optional[_Union[JoinToken, _Mapping]] = ..., ca_hash: _Optional[str] = ..., enroll_address: _Optional[str] = ...) -> None: ...

class ListJoinTokensRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class ListJoinTokensResponse(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[JoinToken]
    def __init__(self, tokens: _Optional[_Iterable[_Union[JoinToken, _Mapping]]] = ...) -> None: ...

class RevokeJoinTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RevokeJoinTokenResponse(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: JoinToken
    def __init__(self, token: _Optional[_Union[JoinToken, _Mapping]] = ...) -> None: ...

class Certificate(_message.Message):
    __slots__ = ("serial", "identity", "not_before", "not_after", "issued_at", "issued_by", "token_id", "revoked_at", "revoked_reason", "revoked_by")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    ISSUED_BY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_REASON_FIELD_NUMBER: _ClassVar[int]
    REVOKED_BY_FIELD_NUMBER: _ClassVar[int]
    serial: str
    identity: str
    not_before: int
    not_after: int
    issued_at: int
    issued_by: str
    token_id: str
    revoked_at: int
    revoked_reason: str
    revoked_by: str
    def __init__(self, serial: _Optional[str] = ..., identity: _Optional[str] = ..., not_before: _Optional[int] = ..., not_after: _Optional[int] = ..., issued_at: _Optional[int] = ..., issued_by: _Optional[str] = ..., token_id: _Optional[str] = ..., revoked_at: _Optional[int] = ..., revoked_reason: _Optional[str] = ..., revoked_by: _Optional[str] = ...) -> None: ...

class ListCertificatesRequest(_message.Message):
    __slots__ = ("node_id", "revoked", "all", "limit")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    revoked: bool
    all: bool
    limit: int
    def __init__(self, node_id: _Optional[str] = ..., revoked: _Optional[bool] = ..., all: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class ListCertificatesResponse(_message.Message):
    __slots__ = ("certificates",)
    CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    certificates: _containers.RepeatedCompositeFieldContainer[Certificate]
    def __init__(self, certificates: _Optional[_Iterable[_Union[Certificate, _Mapping]]] = ...) -> None: ...

class RevokeCertificateRequest(_message.Message):
    __slots__ = ("serial", "reason")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    serial: str
    reason: str
    def __init__(self, serial: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeCertificateResponse(_message.Message):
    __slots__ = ("certificate", "connections_closed")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_CLOSED_FIELD_NUMBER: _ClassVar[int]
    certificate: Certificate
    connections_closed: int
    def __init__(self, certificate: _Optional[_Union[Certificate, _Mapping]] = ..., connections_closed: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("id", "timestamp", "node_id", "agent_id", "kind", "message", "actor", "old_status", "new_status", "pid")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    OLD_STATUS_FIELD_NUMBER: _ClassVar[int]
    NEW_STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    id: int
    timestamp: int
    node_id: str
    agent_id: str
    kind: str
    message: str
    actor: str
    old_status: str
    new_status: str
    pid: int
    def __init__(self, id: _Optional[int] = ..., timestamp: _Optional[int] = ..., node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., kind: _Optional[str] = ..., message: _Optional[str] = ..., actor: _Optional[str] = ..., old_status: _Optional[str] = ..., new_status: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("node_id", "agent_id", "since", "limit", "kinds", "node_only")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    NODE_ONLY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    since: int
    limit: int
    kinds: _containers.RepeatedScalarFieldContainer[str]
    node_only: bool
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., since: _Optional[int] = ..., limit: _Optional[int] = ..., kinds: _Optional[_Iterable[str]] = ..., node_only: _Optional[bool] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class GetAgentRequest(_message.Message):
    __slots__ = ("node_id", "agent_id", "events")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    events: int
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., events: _Optional[int] = ...) -> None: ...

class GetAgentResponse(_message.Message):
    __slots__ = ("agent", "events", "last_exit", "last_exit_at")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_FIELD_NUMBER: _ClassVar[int]
    LAST_EXIT_AT_FIELD_NUMBER: _ClassVar[int]
    agent: Agent
    events: _containers.RepeatedCompositeFieldContainer[Event]
    last_exit: str
    last_exit_at: int
    def __init__(self, agent: _Optional[_Union[Agent, _Mapping]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., last_exit: _Optional[str] = ..., last_exit_at: _Optional[int] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("node_id", "agent_id", "kinds", "after_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    kinds: _containers.RepeatedScalarFieldContainer[str]
    after_id: int
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., kinds: _Optional[_Iterable[str]] = ..., after_id: _Optional[int] = ...) -> None: ...

class FollowAgentLogRequest(_message.Message):
    __slots__ = ("node_id", "agent_id", "stream", "lines")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    agent_id: str
    stream: str
    lines: int
    def __init__(self, node_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., stream: _Optional[str] = ..., lines: _Optional[int] = ...) -> None: ...

class FollowAgentLogResponse(_message.Message):
    __slots__ = ("node_id", "chunk")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    chunk: _daemon_pb2.AgentLogChunk
    def __init__(self, node_id: _Optional[str] = ..., chunk: _Optional[_Union[_daemon_pb2.AgentLogChunk, _Mapping]] = ...) -> None: ...
