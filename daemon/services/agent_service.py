"""The agent-facing half of DaemonService, served only on the Daemon's Unix socket.

Every call names the agent and carries the token the Daemon put in that agent's
environment at spawn (``FLEET_AGENT_TOKEN``); a wrong or missing token — including
another agent's — is ``PERMISSION_DENIED``. See ``docs/agent-api.md``.
"""

from __future__ import annotations

import logging

from common.errors import InvalidArgument
from common.rpc import current_call
from common.validate import check_finite, check_id, check_labels, check_text
from schema import daemon_pb

from ..agents import Agents
from ..supervisor import AgentRunner
from .control_service import config_response

log = logging.getLogger(__name__)

POLICY = {name: {"local"} for name in ("Register", "Heartbeat", "ReportMetrics", "GetConfig")}
MAX_METRICS_PER_CALL = 1000
MAX_METRIC_SERIES_PER_AGENT = 1000


class AgentService(daemon_pb.DaemonServiceBase):
    """Register, Heartbeat, ReportMetrics, GetConfig (manager-facing methods: UNIMPLEMENTED)."""

    def __init__(self, *, agents: Agents) -> None:
        self._agents = agents

    def _authenticate(self, agent_id: str, token: str) -> AgentRunner:
        return self._agents.authenticate(agent_id, token, peer_pid=current_call().peer_pid)

    async def register(
        self, register_request: daemon_pb.RegisterRequest
    ) -> daemon_pb.RegisterResponse:
        req = register_request
        check_id("agent_id", req.agent_id)
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
        check_id("agent_id", req.agent_id)
        runner = self._authenticate(req.agent_id, req.token)
        runner.health = check_text("health", req.health, max_len=256)
        runner.heard_from()
        return daemon_pb.HeartbeatResponse(success=True, config_hash=runner.config_hash)

    async def report_metrics(
        self, metrics_request: daemon_pb.MetricsRequest
    ) -> daemon_pb.MetricsResponse:
        req = metrics_request
        check_id("agent_id", req.agent_id)
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
        check_id("agent_id", config_request.agent_id)
        self._authenticate(config_request.agent_id, config_request.token)
        return config_response(self._agents, config_request.agent_id)
