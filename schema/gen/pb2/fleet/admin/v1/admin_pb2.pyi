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
    __slots__ = ("node_id", "id", "type", "status", "pid", "version", "start_time", "restart_count", "last_heartbeat", "status_reason", "config_hash", "updated_at", "node_status")
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
    def __init__(self, node_id: _Optional[str] = ..., id: _Optional[str] = ..., type: _Optional[str] = ..., status: _Optional[str] = ..., pid: _Optional[int] = ..., version: _Optional[str] = ..., start_time: _Optional[int] = ..., restart_count: _Optional[int] = ..., last_heartbeat: _Optional[int] = ..., status_reason: _Optional[str] = ..., config_hash: _Optional[str] = ..., updated_at: _Optional[int] = ..., node_status: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("removed", "message")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    message: str
    def __init__(self, removed: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

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
