"""The manager-facing half of DaemonService (TCP, mutual TLS; Manager or admin certs).

``SyncAgentStates`` called *on the Daemon* means "push your agent states now": the Daemon
answers at once and then sends its full, authoritative list through
``ManagerService.SyncAgentStates``. Any states in the request are ignored — the Daemon
is the authority on what runs on its host.

``FollowAgentLog`` streams an agent's log as it grows (:mod:`daemon.logfollow`), polling
the file every :data:`FOLLOW_POLL_SECONDS`; :attr:`ControlService.followers` counts the
open follows (``fleet_daemon_log_followers`` on /metrics).

``ReloadConfig`` and ``ApplySpecs`` change what runs (:mod:`daemon.desired`). A refused
reload is answered in-band (``success = false`` and the reason), so the caller sees which
file, line and key; a refused spec is a ``REFUSED`` SpecState with its reason. For
ApplySpecs the caller's role is only the first gate: every spec must carry an admin's
signature that chains to the fleet CA.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from common.errors import InvalidArgument, NotFound
from common.validate import check_id, check_log_request
from schema import daemon_pb

from .. import logtail
from ..agents import Agents, UpdateFailed
from ..desired import DesiredState
from ..logfollow import Chunk, LogFollower
from ..specs import Envelope

log = logging.getLogger(__name__)

POLICY = {
    name: {"manager", "admin"}
    for name in (
        "PushUpdate",
        "ListAgents",
        "OperateAgent",
        "GetAgentMetrics",
        "SyncAgentStates",
        "GetAgentConfig",
        "GetAgentLog",
        "FollowAgentLog",
        "ReloadConfig",
        "ApplySpecs",
    )
}
MAX_SPECS = 1000
# How often a follow looks at the agent's log file (one stat when nothing changed).
FOLLOW_POLL_SECONDS = 0.25


class ControlService(daemon_pb.DaemonServiceBase):
    """ListAgents, OperateAgent, GetAgentMetrics, SyncAgentStates, PushUpdate, GetAgentConfig,
    GetAgentLog, FollowAgentLog, ReloadConfig, ApplySpecs.

    The agent-facing methods are left to the base class (``UNIMPLEMENTED``) and are in
    any case outside this listener's policy.
    """

    def __init__(
        self,
        *,
        node_id: str,
        agents: Agents,
        desired: DesiredState,
        request_sync: Callable[[], None],
        follow_poll: float = FOLLOW_POLL_SECONDS,
    ) -> None:
        self._node_id = node_id
        self._agents = agents
        self._desired = desired
        self._request_sync = request_sync
        self._follow_poll = follow_poll
        self.followers = 0  # FollowAgentLog streams open now

    async def list_agents(
        self, list_agents_request: daemon_pb.ListAgentsRequest
    ) -> daemon_pb.ListAgentsResponse:
        return daemon_pb.ListAgentsResponse(
            agents=[r.to_info() for r in self._agents.runners.values()]
        )

    async def operate_agent(
        self, agent_operation_request: daemon_pb.AgentOperationRequest
    ) -> daemon_pb.AgentOperationResponse:
        req = agent_operation_request
        check_id("agent_id", req.agent_id)
        runner, error = await self._agents.operate(req.agent_id, req.operation.strip().lower())
        return daemon_pb.AgentOperationResponse(
            success=error is None, error_message=error or "", agent=runner.to_info()
        )

    async def get_agent_metrics(
        self, agent_metrics_request: daemon_pb.AgentMetricsRequest
    ) -> daemon_pb.AgentMetricsResponse:
        req = agent_metrics_request
        check_id("agent_id", req.agent_id)
        if req.duration_seconds <= 0:
            raise InvalidArgument(f"duration_seconds must be > 0 (got {req.duration_seconds})")
        self._agents.get(req.agent_id)
        points = self._agents.history.window(req.agent_id, req.duration_seconds, time.time())
        return daemon_pb.AgentMetricsResponse(
            agent_id=req.agent_id, data_points=[p.to_pb() for p in points]
        )

    async def sync_agent_states(
        self, sync_agent_states_request: daemon_pb.SyncAgentStatesRequest
    ) -> daemon_pb.SyncAgentStatesResponse:
        req = sync_agent_states_request
        if req.node_id and req.node_id != self._node_id:
            raise InvalidArgument(f"this is node {self._node_id!r}, not {req.node_id!r}")
        self._request_sync()
        return daemon_pb.SyncAgentStatesResponse(
            success=True,
            message=f"pushing {len(self._agents.runners)} agent state(s) to the Manager",
        )

    async def push_update(
        self, update_request: daemon_pb.UpdateRequest
    ) -> daemon_pb.UpdateResponse:
        req = update_request
        check_id("agent_id", req.agent_id)
        try:
            runner = await self._agents.push_update(
                req.agent_id,
                config_json=req.config_json,
                version=req.version.strip(),
                restart=req.restart,
            )
        except UpdateFailed as exc:
            runner = self._agents.get(req.agent_id)
            return daemon_pb.UpdateResponse(
                success=False,
                status="FAILED",
                error_message=str(exc),
                agent_id=req.agent_id,
                config_hash=runner.config_hash,
            )
        return daemon_pb.UpdateResponse(
            success=True, status="APPLIED", agent_id=req.agent_id, config_hash=runner.config_hash
        )

    async def get_agent_config(
        self, agent_config_request: daemon_pb.AgentConfigRequest
    ) -> daemon_pb.ConfigResponse:
        check_id("agent_id", agent_config_request.agent_id)
        return config_response(self._agents, agent_config_request.agent_id)

    async def get_agent_log(
        self, agent_log_request: daemon_pb.AgentLogRequest
    ) -> daemon_pb.AgentLogResponse:
        req = agent_log_request
        check_id("agent_id", req.agent_id)
        stream, lines = check_log_request(req.stream, req.lines)
        stdout, stderr = self._agents.get(req.agent_id).log_files
        path = (stdout if stream == "stdout" else stderr).path
        found = await asyncio.to_thread(logtail.tail, path, lines)
        return daemon_pb.AgentLogResponse(
            agent_id=req.agent_id,
            stream=stream,
            text=found.text(),
            line_count=len(found.lines),
            truncated=found.truncated,
            path=str(path),
            size_bytes=found.size,
        )

    async def follow_agent_log(
        self, agent_log_request: daemon_pb.AgentLogRequest
    ) -> AsyncIterator[daemon_pb.AgentLogChunk]:
        """The last ``lines`` lines (0 = none), then new lines as they are written, until
        the caller goes away (GuardedService closes this generator) or the Daemon stops.
        The first chunk always comes at once (empty without history): the follow is on."""
        req = agent_log_request
        agent_id = req.agent_id
        check_id("agent_id", agent_id)
        stream, _ = check_log_request(req.stream, req.lines)
        stdout, stderr = self._agents.get(agent_id).log_files
        follower = LogFollower((stdout if stream == "stdout" else stderr).path)

        def message(chunk: Chunk) -> daemon_pb.AgentLogChunk:
            return daemon_pb.AgentLogChunk(
                agent_id=agent_id,
                stream=stream,
                text=chunk.text,
                skipped=chunk.skipped,
                rotated=chunk.rotated,
            )

        self.followers += 1
        try:
            for chunk in await asyncio.to_thread(follower.history, req.lines):
                yield message(chunk)
            while True:
                await asyncio.sleep(self._follow_poll)
                if agent_id not in self._agents.runners:
                    raise NotFound(f"agent {agent_id!r} was removed from this node")
                if not follower.changed():
                    continue
                for chunk in await asyncio.to_thread(follower.poll):
                    yield message(chunk)
        finally:
            self.followers -= 1

    async def reload_config(
        self, reload_config_request: daemon_pb.ReloadConfigRequest
    ) -> daemon_pb.ReloadConfigResponse:
        outcome = await self._desired.reload(dry_run=reload_config_request.dry_run)
        return daemon_pb.ReloadConfigResponse(
            success=outcome.success,
            error_message=outcome.error,
            changes=[c.to_pb() for c in outcome.result.changes],
            unchanged=list(outcome.result.unchanged),
            config_file=outcome.config_file,
        )

    async def apply_specs(
        self, apply_specs_request: daemon_pb.ApplySpecsRequest
    ) -> daemon_pb.ApplySpecsResponse:
        signed = apply_specs_request.specs
        if len(signed) > MAX_SPECS:
            raise InvalidArgument(f"{len(signed)} specs in one set; at most {MAX_SPECS}")
        states, result = await self._desired.apply_specs([Envelope.from_pb(s) for s in signed])
        return daemon_pb.ApplySpecsResponse(
            specs=states, changes=[c.to_pb() for c in result.changes]
        )


def config_response(agents: Agents, agent_id: str) -> daemon_pb.ConfigResponse:
    import json

    runner = agents.get(agent_id)
    config = runner.config
    return daemon_pb.ConfigResponse(
        agent_id=agent_id,
        config_json=json.dumps(config, sort_keys=True, ensure_ascii=False),
        config_hash=runner.config_hash,
        version=runner.version,
    )
