from schema.gen.pb2.fleet.manager.v1 import manager_pb2 as _manager_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterRequest(_message.Message):
    __slots__ = ("agent_id", "token", "pid", "version", "info")
    class InfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    token: str
    pid: int
    version: str
    info: _containers.ScalarMap[str, str]
    def __init__(self, agent_id: _Optional[str] = ..., token: _Optional[str] = ..., pid: _Optional[int] = ..., version: _Optional[str] = ..., info: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("success", "message", "config_hash", "heartbeat_interval_seconds")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    config_hash: str
    heartbeat_interval_seconds: int
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., config_hash: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("agent_id", "token", "timestamp", "health")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    token: str
    timestamp: int
    health: str
    def __init__(self, agent_id: _Optional[str] = ..., token: _Optional[str] = ..., timestamp: _Optional[int] = ..., health: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("success", "message", "config_hash")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    config_hash: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., config_hash: _Optional[str] = ...) -> None: ...

class AgentMetric(_message.Message):
    __slots__ = ("name", "value", "timestamp", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    timestamp: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., timestamp: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ("agent_id", "token", "metrics")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    token: str
    metrics: _containers.RepeatedCompositeFieldContainer[AgentMetric]
    def __init__(self, agent_id: _Optional[str] = ..., token: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[AgentMetric, _Mapping]]] = ...) -> None: ...

class MetricsResponse(_message.Message):
    __slots__ = ("success", "message", "accepted")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    accepted: int
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., accepted: _Optional[int] = ...) -> None: ...

class ConfigRequest(_message.Message):
    __slots__ = ("agent_id", "token")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    token: str
    def __init__(self, agent_id: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class ConfigResponse(_message.Message):
    __slots__ = ("agent_id", "config_json", "config_hash", "version")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    config_json: str
    config_hash: str
    version: str
    def __init__(self, agent_id: _Optional[str] = ..., config_json: _Optional[str] = ..., config_hash: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class UpdateRequest(_message.Message):
    __slots__ = ("agent_id", "config_json", "version", "restart")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    config_json: str
    version: str
    restart: bool
    def __init__(self, agent_id: _Optional[str] = ..., config_json: _Optional[str] = ..., version: _Optional[str] = ..., restart: _Optional[bool] = ...) -> None: ...

class UpdateResponse(_message.Message):
    __slots__ = ("success", "status", "error_message", "agent_id", "config_hash")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    success: bool
    status: str
    error_message: str
    agent_id: str
    config_hash: str
    def __init__(self, success: _Optional[bool] = ..., status: _Optional[str] = ..., error_message: _Optional[str] = ..., agent_id: _Optional[str] = ..., config_hash: _Optional[str] = ...) -> None: ...

class ListAgentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAgentsResponse(_message.Message):
    __slots__ = ("agents",)
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    def __init__(self, agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("id", "type", "status", "pid", "version", "start_time", "restart_count", "last_heartbeat", "status_reason", "config_hash", "last_exit_code", "spec", "spec_revision")
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
    LAST_EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_REVISION_FIELD_NUMBER: _ClassVar[int]
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
    last_exit_code: int
    spec: str
    spec_revision: int
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., status: _Optional[str] = ..., pid: _Optional[int] = ..., version: _Optional[str] = ..., start_time: _Optional[int] = ..., restart_count: _Optional[int] = ..., last_heartbeat: _Optional[int] = ..., status_reason: _Optional[str] = ..., config_hash: _Optional[str] = ..., last_exit_code: _Optional[int] = ..., spec: _Optional[str] = ..., spec_revision: _Optional[int] = ...) -> None: ...

class AgentOperationRequest(_message.Message):
    __slots__ = ("agent_id", "operation")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    operation: str
    def __init__(self, agent_id: _Optional[str] = ..., operation: _Optional[str] = ...) -> None: ...

class AgentOperationResponse(_message.Message):
    __slots__ = ("success", "error_message", "agent")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error_message: str
    agent: AgentInfo
    def __init__(self, success: _Optional[bool] = ..., error_message: _Optional[str] = ..., agent: _Optional[_Union[AgentInfo, _Mapping]] = ...) -> None: ...

class AgentMetricsRequest(_message.Message):
    __slots__ = ("agent_id", "duration_seconds")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    duration_seconds: int
    def __init__(self, agent_id: _Optional[str] = ..., duration_seconds: _Optional[int] = ...) -> None: ...

class AgentMetricsResponse(_message.Message):
    __slots__ = ("agent_id", "data_points")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_POINTS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    data_points: _containers.RepeatedCompositeFieldContainer[ResourceDataPoint]
    def __init__(self, agent_id: _Optional[str] = ..., data_points: _Optional[_Iterable[_Union[ResourceDataPoint, _Mapping]]] = ...) -> None: ...

class ResourceDataPoint(_message.Message):
    __slots__ = ("timestamp", "cpu", "memory_rss", "memory_vms", "disk_read_bytes", "disk_write_bytes", "open_files")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RSS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_VMS_FIELD_NUMBER: _ClassVar[int]
    DISK_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OPEN_FILES_FIELD_NUMBER: _ClassVar[int]
    timestamp: int
    cpu: float
    memory_rss: int
    memory_vms: int
    disk_read_bytes: int
    disk_write_bytes: int
    open_files: int
    def __init__(self, timestamp: _Optional[int] = ..., cpu: _Optional[float] = ..., memory_rss: _Optional[int] = ..., memory_vms: _Optional[int] = ..., disk_read_bytes: _Optional[int] = ..., disk_write_bytes: _Optional[int] = ..., open_files: _Optional[int] = ...) -> None: ...

class AgentState(_message.Message):
    __slots__ = ("agent_id", "status", "pid", "last_heartbeat")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    status: str
    pid: int
    last_heartbeat: int
    def __init__(self, agent_id: _Optional[str] = ..., status: _Optional[str] = ..., pid: _Optional[int] = ..., last_heartbeat: _Optional[int] = ...) -> None: ...

class SyncAgentStatesRequest(_message.Message):
    __slots__ = ("node_id", "states")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    states: _containers.RepeatedCompositeFieldContainer[AgentState]
    def __init__(self, node_id: _Optional[str] = ..., states: _Optional[_Iterable[_Union[AgentState, _Mapping]]] = ...) -> None: ...

class SyncAgentStatesResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class AgentConfigRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class AgentLogRequest(_message.Message):
    __slots__ = ("agent_id", "stream", "lines")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    stream: str
    lines: int
    def __init__(self, agent_id: _Optional[str] = ..., stream: _Optional[str] = ..., lines: _Optional[int] = ...) -> None: ...

class AgentLogChunk(_message.Message):
    __slots__ = ("agent_id", "stream", "text", "skipped", "rotated")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ROTATED_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    stream: str
    text: str
    skipped: int
    rotated: bool
    def __init__(self, agent_id: _Optional[str] = ..., stream: _Optional[str] = ..., text: _Optional[str] = ..., skipped: _Optional[int] = ..., rotated: _Optional[bool] = ...) -> None: ...

class AgentLogResponse(_message.Message):
    __slots__ = ("agent_id", "stream", "text", "line_count", "truncated", "path", "size_bytes")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LINE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    stream: str
    text: str
    line_count: int
    truncated: bool
    path: str
    size_bytes: int
    def __init__(self, agent_id: _Optional[str] = ..., stream: _Optional[str] = ..., text: _Optional[str] = ..., line_count: _Optional[int] = ..., truncated: _Optional[bool] = ..., path: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class FieldChange(_message.Message):
    __slots__ = ("field", "old", "new")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    OLD_FIELD_NUMBER: _ClassVar[int]
    NEW_FIELD_NUMBER: _ClassVar[int]
    field: str
    old: str
    new: str
    def __init__(self, field: _Optional[str] = ..., old: _Optional[str] = ..., new: _Optional[str] = ...) -> None: ...

class AgentChange(_message.Message):
    __slots__ = ("agent_id", "action", "fields", "source", "error")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    action: str
    fields: _containers.RepeatedCompositeFieldContainer[FieldChange]
    source: str
    error: str
    def __init__(self, agent_id: _Optional[str] = ..., action: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[FieldChange, _Mapping]]] = ..., source: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class ReloadConfigRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class ReloadConfigResponse(_message.Message):
    __slots__ = ("success", "error_message", "changes", "unchanged", "config_file")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FILE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    error_message: str
    changes: _containers.RepeatedCompositeFieldContainer[AgentChange]
    unchanged: _containers.RepeatedScalarFieldContainer[str]
    config_file: str
    def __init__(self, success: _Optional[bool] = ..., error_message: _Optional[str] = ..., changes: _Optional[_Iterable[_Union[AgentChange, _Mapping]]] = ..., unchanged: _Optional[_Iterable[str]] = ..., config_file: _Optional[str] = ...) -> None: ...

class SignedSpec(_message.Message):
    __slots__ = ("payload", "signature", "signer_cert")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNER_CERT_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    signer_cert: bytes
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., signer_cert: _Optional[bytes] = ...) -> None: ...

class ApplySpecsRequest(_message.Message):
    __slots__ = ("specs",)
    SPECS_FIELD_NUMBER: _ClassVar[int]
    specs: _containers.RepeatedCompositeFieldContainer[SignedSpec]
    def __init__(self, specs: _Optional[_Iterable[_Union[SignedSpec, _Mapping]]] = ...) -> None: ...

class ApplySpecsResponse(_message.Message):
    __slots__ = ("specs", "changes")
    SPECS_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    specs: _containers.RepeatedCompositeFieldContainer[_manager_pb2.SpecState]
    changes: _containers.RepeatedCompositeFieldContainer[AgentChange]
    def __init__(self, specs: _Optional[_Iterable[_Union[_manager_pb2.SpecState, _Mapping]]] = ..., changes: _Optional[_Iterable[_Union[AgentChange, _Mapping]]] = ...) -> None: ...
