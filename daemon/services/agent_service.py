"""The agent-facing half of DaemonService, served only on the Daemon's Unix socket.

Every call names the agent and carries the token the Daemon put in that agent's
environment at spawn (``FLEET_AGENT_TOKEN``), in the call's metadata (``fleet-agent-id``,
``fleet-agent-token``: checked from the HEADERS, before the request is read; a wrong one
is ``UNAUTHENTICATED``) or, as in the original contract, in the request's ``agent_id``
and ``token`` fields (a wrong or missing token — including another agent's — is
``PERMISSION_DENIED``). A request without the metadata may be at most
``agent_api.max_request_bytes_without_metadata`` long. See ``docs/agent-api.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpclib.const

from common.errors import InvalidArgument, PermissionDenied, Unauthenticated
from common.rpc import HeaderAuth, current_call
from common.validate import check_finite, check_id, check_labels, check_text
from schema import daemon_pb, daemon_pb2

from ..agents import Agents
from ..supervisor import AgentRunner
from .control_service import config_response

log = logging.getLogger(__name__)

POLICY = {name: {"local"} for name in ("Register", "Heartbeat", "ReportMetrics", "GetConfig")}
MAX_METRICS_PER_CALL = 1000
MAX_METRIC_SERIES_PER_AGENT = 1000
# Metadata naming the calling agent and carrying its token (checked before the body).
ID_HEADER = "fleet-agent-id"
TOKEN_HEADER = "fleet-agent-token"
# The largest request taken with the token only in the body (agent_api.
# max_request_bytes_without_metadata): Register, Heartbeat, GetConfig and a ReportMetrics
# of a few hundred metrics fit; a stranger cannot make the Daemon read more unchecked.
DEFAULT_MAX_BYTES_WITHOUT_METADATA = 64 * 1024


class AgentService(daemon_pb.DaemonServiceBase):
    """Register, Heartbeat, ReportMetrics, GetConfig (manager-facing methods: UNIMPLEMENTED)."""

    def __init__(
        self,
        *,
        agents: Agents,
        max_bytes_without_metadata: int = DEFAULT_MAX_BYTES_WITHOUT_METADATA,
    ) -> None:
        self._agents = agents
        self._max_without = max_bytes_without_metadata

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        """grpclib's handler table, with ReportMetrics decoded by protobuf's upb runtime:
        the largest request the decode bounds let through (1,000 metrics, 16,384 labels)
        takes ~37 ms of betterproto and ~3.5 ms of upb (``bench/decode_worst.py``). The
        handler reads fields by name, as both have them."""
        mapping = super().__mapping__()
        path = "/fleet.daemon.v1.DaemonService/ReportMetrics"
        func, cardinality, _request_type, reply_type = mapping[path]
        mapping[path] = grpclib.const.Handler(
            func, cardinality, daemon_pb2.MetricsRequest, reply_type
        )
        return mapping

    def header_auth(self) -> HeaderAuth:
        """The metadata check :class:`~common.rpc.GuardedService` makes before reading a
        request (``authenticate=``)."""
        return HeaderAuth(
            check=self.check_metadata,
            max_bytes_without=self._max_without,
            hint=f"the agent's id and token in metadata ({ID_HEADER}, {TOKEN_HEADER})",
        )

    def check_metadata(
        self, method: str, metadata: Mapping[str, str], peer_pid: int
    ) -> tuple[str, str] | None:
        """(agent id, token) when the metadata authenticates a running agent (and, with
        ``check_peer``, the caller is in its process group); None without credentials."""
        agent_id, token = metadata.get(ID_HEADER), metadata.get(TOKEN_HEADER)
        if agent_id is None and token is None:
            return None
        runner = self._agents.runners.get(agent_id or "")
        if runner is None or not token or not runner.token_matches(token):
            raise Unauthenticated(
                f"{method}: agent {agent_id!r}: unknown agent or wrong token in metadata"
            )
        self._agents.authenticate(runner.id, token, peer_pid=peer_pid)
        return runner.id, token

    def _authenticate(self, agent_id: str, token: str) -> AgentRunner:
        call = current_call()
        if call.principal is None:
            check_id("agent_id", agent_id)
            return self._agents.authenticate(agent_id, token, peer_pid=call.peer_pid)
        # Authenticated from the metadata (again now: the agent may have been restarted
        # while the request was read). The body may name the same agent, or none.
        own_id, own_token = call.principal
        if agent_id and agent_id != own_id:
            raise PermissionDenied(f"agent {own_id!r} may not act as agent {agent_id!r}")
        if token and token != own_token:
            raise PermissionDenied(f"agent {own_id!r}: the token in the request is not its own")
        return self._agents.authenticate(own_id, own_token, peer_pid=call.peer_pid)

    async def register(
        self, register_request: daemon_pb.RegisterRequest
    ) -> daemon_pb.RegisterResponse:
        req = register_request
        runner = self._authenticate(req.agent_id, req.token)
        runner.reported_version = check_text("version", req.version, max_len=128)
        runner.info = check_labels("info", req.info)
        runner.registered = True
        runner.heard_from()
        log.info("agent %s registered (pid %d, version %s)", runner.id, req.pid, req.version or "-")
        return daemon_pb.RegisterResponse(
            success=True,
            message=f"registered {runner.id}",
            config_hash=runner.config_hash,
            heartbeat_interval_seconds=max(1, round(runner.spec.heartbeat_interval)),
        )

    async def heartbeat(
        self, heartbeat_request: daemon_pb.HeartbeatRequest
    ) -> daemon_pb.HeartbeatResponse:
        req = heartbeat_request
        runner = self._authenticate(req.agent_id, req.token)
        runner.health = check_text("health", req.health, max_len=256)
        runner.heard_from()
        return daemon_pb.HeartbeatResponse(success=True, config_hash=runner.config_hash)

    async def report_metrics(
        self, metrics_request: daemon_pb.MetricsRequest | daemon_pb2.MetricsRequest
    ) -> daemon_pb.MetricsResponse:
        req = metrics_request
        runner = self._authenticate(req.agent_id, req.token)
        if len(req.metrics) > MAX_METRICS_PER_CALL:
            raise InvalidArgument(
                f"{len(req.metrics)} metrics in one call (max {MAX_METRICS_PER_CALL})"
            )
        accepted = 0
        for i, metric in enumerate(req.metrics):
            check_id(f"metrics[{i}].name", metric.name)
            check_finite(f"metrics[{i}].value", metric.value)
            labels = check_labels(f"metrics[{i}].labels", metric.labels)
            key = (metric.name, tuple(sorted(labels.items())))
            if key not in runner.custom_metrics and (
                len(runner.custom_metrics) >= MAX_METRIC_SERIES_PER_AGENT
            ):
                continue
            runner.custom_metrics[key] = metric.value
            accepted += 1
        runner.heard_from()
        return daemon_pb.MetricsResponse(success=True, accepted=accepted)

    async def get_config(self, config_request: daemon_pb.ConfigRequest) -> daemon_pb.ConfigResponse:
        runner = self._authenticate(config_request.agent_id, config_request.token)
        return config_response(self._agents, runner.id)
