from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node_id", "hostname", "ip", "os", "arch", "labels", "daemon_version", "agent_version", "daemon_address", "heartbeat_interval_seconds", "instance_id")
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
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    ip: str
    os: str
    arch: str
    labels: _containers.ScalarMap[str, str]
    daemon_version: str
    agent_version: str
    daemon_address: str
    heartbeat_interval_seconds: int
    instance_id: str
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., ip: _Optional[str] = ..., os: _Optional[str] = ..., arch: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., daemon_version: _Optional[str] = ..., agent_version: _Optional[str] = ..., daemon_address: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[int] = ..., instance_id: _Optional[str] = ...) -> None: ...

class RegisterNodeResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "timestamp", "instance_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    timestamp: int
    instance_id: str
    def __init__(self, node_id: _Optional[str] = ..., timestamp: _Optional[int] = ..., instance_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("success", "message", "revocations_version")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_VERSION_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    revocations_version: int
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., revocations_version: _Optional[int] = ...) -> None: ...

class MetricData(_message.Message):
    __slots__ = ("type", "timestamp", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    type: str
    timestamp: int
    values: _containers.ScalarMap[str, float]
    def __init__(self, type: _Optional[str] = ..., timestamp: _Optional[int] = ..., values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ReportMetricsRequest(_message.Message):
    __slots__ = ("node_id", "metrics")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    metrics: _containers.RepeatedCompositeFieldContainer[MetricData]
    def __init__(self, node_id: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[MetricData, _Mapping]]] = ...) -> None: ...

class ReportMetricsResponse(_message.Message):
    __slots__ = ("success", "message", "accepted", "liveness")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    accepted: int
    liveness: bool
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., accepted: _Optional[int] = ..., liveness: _Optional[bool] = ...) -> None: ...

class AgentState(_message.Message):
    __slots__ = ("agent_id", "status", "pid", "last_heartbeat", "type", "version", "start_time", "restart_count", "status_reason", "config_hash", "spec", "spec_revision")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    RESTART_COUNT_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_HASH_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SPEC_REVISION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    status: str
    pid: int
    last_heartbeat: int
    type: str
    version: str
    start_time: int
    restart_count: int
    status_reason: str
    config_hash: str
    spec: str
    spec_revision: int
    def __init__(self, agent_id: _Optional[str] = ..., status: _Optional[str] = ..., pid: _Optional[int] = ..., last_heartbeat: _Optional[int] = ..., type: _Optional[str] = ..., version: _Optional[str] = ..., start_time: _Optional[int] = ..., restart_count: _Optional[int] = ..., status_reason: _Optional[str] = ..., config_hash: _Optional[str] = ..., spec: _Optional[str] = ..., spec_revision: _Optional[int] = ...) -> None: ...

class SpecState(_message.Message):
    __slots__ = ("name", "revision", "status", "reason", "running_revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RUNNING_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: int
    status: str
    reason: str
    running_revision: int
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[int] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., running_revision: _Optional[int] = ...) -> None: ...

class SyncAgentStatesRequest(_message.Message):
    __slots__ = ("node_id", "states", "full", "specs")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    SPECS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    states: _containers.RepeatedCompositeFieldContainer[AgentState]
    full: bool
    specs: _containers.RepeatedCompositeFieldContainer[SpecState]
    def __init__(self, node_id: _Optional[str] = ..., states: _Optional[_Iterable[_Union[AgentState, _Mapping]]] = ..., full: _Optional[bool] = ..., specs: _Optional[_Iterable[_Union[SpecState, _Mapping]]] = ...) -> None: ...

class SyncAgentStatesResponse(_message.Message):
    __slots__ = ("success", "message", "liveness")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    liveness: bool
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ..., liveness: _Optional[bool] = ...) -> None: ...

class RenewCertificateRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    def __init__(self, csr_pem: _Optional[str] = ...) -> None: ...

class RenewCertificateResponse(_message.Message):
    __slots__ = ("cert_pem", "ca_pem", "serial", "not_after")
    CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    cert_pem: str
    ca_pem: str
    serial: str
    not_after: int
    def __init__(self, cert_pem: _Optional[str] = ..., ca_pem: _Optional[str] = ..., serial: _Optional[str] = ..., not_after: _Optional[int] = ...) -> None: ...

class Revocation(_message.Message):
    __slots__ = ("serial", "identity", "not_before_max", "revoked_at", "reason")
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_MAX_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    serial: str
    identity: str
    not_before_max: int
    revoked_at: int
    reason: str
    def __init__(self, serial: _Optional[str] = ..., identity: _Optional[str] = ..., not_before_max: _Optional[int] = ..., revoked_at: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class GetRevocationsRequest(_message.Message):
    __slots__ = ("known_version",)
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    known_version: int
    def __init__(self, known_version: _Optional[int] = ...) -> None: ...

class GetRevocationsResponse(_message.Message):
    __slots__ = ("version", "unchanged", "revocations")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    REVOCATIONS_FIELD_NUMBER: _ClassVar[int]
    version: int
    unchanged: bool
    revocations: _containers.RepeatedCompositeFieldContainer[Revocation]
    def __init__(self, version: _Optional[int] = ..., unchanged: _Optional[bool] = ..., revocations: _Optional[_Iterable[_Union[Revocation, _Mapping]]] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("node_id", "instance_id", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    instance_id: str
    reason: str
    def __init__(self, node_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LeaveResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...
