"""ManagerService: what Daemons call (node certificates only).

Every call names a ``node_id`` that must be the node in the caller's certificate: one
node can never speak for another. Order of checks: an empty ``node_id`` is
``INVALID_ARGUMENT``; a malformed one too; then a mismatch with the certificate is
``PERMISSION_DENIED`` (logged, nothing changed); then the rest of the input is validated.

Duplicate Daemons: a RegisterNode with a *new* ``instance_id`` wins (a restarted Daemon
re-registers before its old grace period ended, which must work), and the instance it
replaced becomes *superseded*. A superseded instance that is still running is refused
with ``ALREADY_EXISTS`` — its heartbeats, and its attempts to register again for as long
as the current instance is alive — and the first refusal is recorded as a node event, so
two live Daemons with one node identity are visible instead of silently taking turns.
(The superseded set lives in this Manager's memory: after a Manager restart an old
instance may take over once more, and is then refused again.)

Liveness by report: an accepted ``ReportMetrics`` or ``SyncAgentStates`` counts as the
node's liveness, exactly as a heartbeat would (the same :class:`HeartbeatBuffer` path:
coalesced writes, offline→online, the liveness sweep's guards), and its answer says so
(``liveness = true``), so the Daemon may skip its next heartbeat. It counts only when the
HTTP/2 connection it came on was *bound* to the node's Daemon instance by an accepted
``Heartbeat`` or ``RegisterNode`` carrying an ``instance_id``, and that instance is still
the registered one: reports carry no instance id, and a replaced Daemon's connection
must not keep the node alive. A client that sends no ``instance_id`` (a seed client)
binds nothing, so its reports never count and it behaves as before; a report refused
(invalid, over its quota, shed, the database failing) never counts.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import grpclib.const

from common import validate
from common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FleetError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)
from common.ratelimit import LogLimiter
from common.rpc import current_call
from schema import manager_pb, manager_pb2

from ..agent_restarts import AgentRestartCounter
from ..config import ManagerConfig, split_host_port
from ..daemon_pool import DaemonClientPool
from ..enroll import EnrollmentLabels, NodeIssuer, merge_labels
from ..heartbeats import HeartbeatBuffer
from ..known_nodes import KnownNodes
from ..liveness import log_transitions
from ..metrics import ManagerMetrics
from ..quotas import MetricsQuota
from ..revocations import ManagerRevocations
from ..specs.controller import SpecController
from ..store import ONLINE, Store, Transition
from .agent_sync import (
    AGENT_STATUSES,
    MAX_AGENTS_PER_SYNC,
    MAX_SPECS_PER_SYNC,
    SyncProblems,
    check_agent_states,
    check_spec_states,
)

__all__ = ["AGENT_STATUSES", "MAX_AGENTS_PER_SYNC", "MAX_SPECS_PER_SYNC", "ManagerService"]

log = logging.getLogger(__name__)

MAX_HEARTBEAT_INTERVAL = 86_400
_MAX_TRACKED = 10_000
_MAX_CACHED_NAMES = 4096
_SHORT = 64
# Requests decoded by protobuf's upb runtime instead of betterproto (see __mapping__).
_UPB_REQUESTS = {
    "ReportMetrics": manager_pb2.ReportMetricsRequest,
    "SyncAgentStates": manager_pb2.SyncAgentStatesRequest,
}


def check_node_caller(node_id: str) -> str:
    """The node_id checks shared by every ManagerService call (see module doc)."""
    if not node_id:
        raise InvalidArgument("node_id is required")
    validate.check_id("node_id", node_id)
    identity = current_call().identity
    if identity.role == "insecure":
        return node_id
    if identity.role != "node" or identity.name != node_id:
        log.warning(
            "refused %s: %s (from %s) tried to act as node %s",
            current_call().method,
            identity,
            current_call().peer,
            node_id,
        )
        raise PermissionDenied(f"certificate of {identity} may not speak for node {node_id}")
    return node_id


class ManagerService(manager_pb.ManagerServiceBase):
    """The Daemon-facing gRPC service."""

    def __init__(
        self,
        *,
        config: ManagerConfig,
        store: Store,
        heartbeats: HeartbeatBuffer,
        pool: DaemonClientPool,
        known: KnownNodes,
        metrics: ManagerMetrics,
        specs: SpecController,
        metrics_quota: MetricsQuota | None = None,
        issuer: NodeIssuer | None = None,
        enrolled: EnrollmentLabels | None = None,
        revocations: ManagerRevocations | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._revocations = revocations
        self._quota = metrics_quota
        self._issuer = issuer
        self._enrolled = enrolled
        self._sync_log = LogLimiter(interval=60.0)
        self._restarts = AgentRestartCounter(metrics=metrics)
        self._specs = specs
        self._store = store
        self._heartbeats = heartbeats
        self._pool = pool
        self._metrics = metrics
        self._clock = clock
        self._known = known
        # (node_id, instance_id) pairs replaced by a newer Daemon instance.
        self._superseded: set[tuple[str, str]] = set()
        self._duplicates_reported: set[tuple[str, str]] = set()
        # HTTP/2 connection -> (node_id, instance_id) of the Daemon instance whose
        # Heartbeat or RegisterNode was last accepted on it (see "Liveness by report").
        self._bound: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()
        # Metric type names and value keys that passed validation: Daemons send the same
        # few in every report, so each is checked once (bounded: cleared when full).
        self._metric_types: set[str] = set()
        self._metric_keys: set[str] = set()

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        """grpclib's handler table, with ReportMetrics and SyncAgentStates decoded by
        protobuf's upb runtime.

        A batch of 100 samples x 10 values decodes in ~0.3 ms with upb and ~2.6 ms with
        betterproto (whose Python ``__setattr__``/``__getattribute__`` hooks run for every
        field of every sample): at 100,000 values/s that is a quarter of a core. Same wire
        contract: ``schema.manager_pb2`` is generated from the same ``.proto``. The
        largest SyncAgentStates the walk lets through (1,000 agents and 1,000 spec states,
        every field set) took ~100 ms of betterproto and takes ~1 ms of upb
        (``bench/decode_worst.py``); its handler reads fields by name, as either has them.
        """
        mapping = super().__mapping__()
        for name, request_type in _UPB_REQUESTS.items():
            path = f"/fleet.manager.v1.ManagerService/{name}"
            func, cardinality, _request_type, reply_type = mapping[path]
            mapping[path] = grpclib.const.Handler(func, cardinality, request_type, reply_type)
        return mapping

    async def register_node(
        self, request: manager_pb.RegisterNodeRequest
    ) -> manager_pb.RegisterNodeResponse:
        node_id = check_node_caller(request.node_id)
        interval = self._check_interval(request.heartbeat_interval_seconds)
        facts: dict[str, object] = {
            "hostname": validate.check_text("hostname", request.hostname, max_len=255),
            "ip": validate.check_text("ip", request.ip, max_len=_SHORT),
            "os": validate.check_text("os", request.os, max_len=_SHORT),
            "arch": validate.check_text("arch", request.arch, max_len=_SHORT),
            "labels": validate.check_labels("labels", request.labels),
            "daemon_version": validate.check_text(
                "daemon_version", request.daemon_version, max_len=_SHORT
            ),
            "agent_version": validate.check_text(
                "agent_version", request.agent_version, max_len=_SHORT
            ),
            "daemon_address": self._check_address(request.daemon_address),
            "heartbeat_interval": interval,
            "instance_id": validate.check_text("instance_id", request.instance_id, max_len=128),
        }
        now = self._clock()
        if request.instance_id and (node_id, request.instance_id) in self._superseded:
            await self._refuse_superseded_register(node_id, request.instance_id, now)
        if self._enrolled is not None:
            # The labels the node joined with win over those its Daemon reports.
            enrolled = await self._enrolled.labels_for(node_id, request.instance_id)
            facts["labels"] = merge_labels(request.labels, enrolled)
        grace = self._config.grace_for(interval)
        result = await self._store.register_node(node_id=node_id, facts=facts, now=now, grace=grace)
        self._known.remember(node_id, request.instance_id)
        if result.previous_instance and result.previous_instance != request.instance_id:
            if len(self._superseded) > _MAX_TRACKED:
                self._superseded.clear()
            self._superseded.add((node_id, result.previous_instance))
        self._superseded.discard((node_id, request.instance_id))
        self._bind(node_id, request.instance_id)
        if result.previous_address and result.previous_address != request.daemon_address:
            self._pool.forget(node_id)
        if result.transition is not None:
            log_transitions([result.transition], self._metrics)
        # New, back, restarted or relabelled: the node may need other specs.
        self._specs.node_registered(node_id)
        log.info(
            "node %s %s (daemon %s at %s, instance %s)",
            node_id,
            "registered" if result.created else "re-registered",
            request.daemon_version or "?",
            request.daemon_address or "no address",
            request.instance_id or "-",
        )
        return manager_pb.RegisterNodeResponse(success=True, message=f"node {node_id} registered")

    async def heartbeat(self, request: manager_pb.HeartbeatRequest) -> manager_pb.HeartbeatResponse:
        node_id = check_node_caller(request.node_id)
        now = self._clock()
        reported = (
            validate.check_timestamp("timestamp", request.timestamp, now=now)
            if request.timestamp
            else int(now)
        )
        validate.check_text("instance_id", request.instance_id, max_len=128)
        await self._check_instance(node_id, request.instance_id, now)
        await self._heartbeats.submit(node_id, reported)
        self._bind(node_id, request.instance_id)
        return manager_pb.HeartbeatResponse(
            success=True,
            message="ok",
            revocations_version=self._revocations.version if self._revocations else 0,
        )

    async def leave(self, request: manager_pb.LeaveRequest) -> manager_pb.LeaveResponse:
        """The node's Daemon is stopping cleanly: ``stopped`` now, not offline later."""
        node_id = check_node_caller(request.node_id)
        instance_id = validate.check_text("instance_id", request.instance_id, max_len=128)
        reason = validate.check_text("reason", request.reason, max_len=255) or "daemon left"
        await self._require_registered(node_id)
        self._unbind()
        await self._heartbeats.forget(node_id)
        transition = await self._store.mark_stopped(
            node_id, instance_id=instance_id, reason=reason, now=self._clock()
        )
        if transition is None:
            return manager_pb.LeaveResponse(success=True, message="nothing to do")
        log_transitions([transition], self._metrics)
        self._known.discard(node_id)
        return manager_pb.LeaveResponse(success=True, message=f"node {node_id} stopped")

    async def get_revocations(
        self, request: manager_pb.GetRevocationsRequest
    ) -> manager_pb.GetRevocationsResponse:
        """The revocation list this Manager enforces (from memory: no database read)."""
        if request.known_version < 0:
            raise InvalidArgument(f"known_version {request.known_version} is negative")
        if self._revocations is None:
            unchanged = request.known_version == 0
            return manager_pb.GetRevocationsResponse(version=0, unchanged=unchanged)
        held = self._revocations.list
        if request.known_version == held.version:
            return manager_pb.GetRevocationsResponse(version=held.version, unchanged=True)
        return manager_pb.GetRevocationsResponse(
            version=held.version,
            revocations=[
                manager_pb.Revocation(
                    serial=entry.serial,
                    identity=entry.identity,
                    not_before_max=int(entry.not_before_max),
                    revoked_at=int(entry.revoked_at),
                    reason=entry.reason,
                )
                for entry in held.entries()
            ],
        )

    async def renew_certificate(
        self, request: manager_pb.RenewCertificateRequest
    ) -> manager_pb.RenewCertificateResponse:
        """A new certificate for the calling node's own identity (never the CSR's)."""
        identity = current_call().identity
        if identity.role != "node":
            raise PermissionDenied(f"{identity} has no node certificate to renew")
        if self._issuer is None:
            raise FailedPrecondition("this Manager does not sign node certificates")
        issued = await self._issuer.renew(node_id=identity.name, csr_pem=request.csr_pem)
        log.info(
            "node %s renewed its certificate (from %s): %s until %s",
            identity.name,
            current_call().peer,
            issued.serial,
            time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(issued.not_after)),
        )
        return manager_pb.RenewCertificateResponse(
            cert_pem=issued.cert_pem.decode(),
            ca_pem=issued.ca_pem.decode(),
            serial=issued.serial,
            not_after=issued.not_after,
        )

    async def _refuse_superseded_register(self, node_id: str, instance_id: str, now: float) -> None:
        """ALREADY_EXISTS while the instance that replaced ``instance_id`` is alive."""
        node = await self._store.get_node(node_id)
        if node is None or node.instance_id == instance_id:
            return
        if node.status == ONLINE and now < node.offline_after:
            await self._report_duplicate(node_id, instance_id, node.instance_id, now)
            raise AlreadyExists(
                f"node {node_id} is served by another live Daemon instance "
                f"({node.instance_id}); this one ({instance_id}) was superseded"
            )

    async def _report_duplicate(self, node_id: str, stale: str, current: str, now: float) -> None:
        key = (node_id, stale)
        if key in self._duplicates_reported:
            return
        if len(self._duplicates_reported) > _MAX_TRACKED:
            self._duplicates_reported.clear()
        self._duplicates_reported.add(key)
        reason = (
            f"duplicate daemon: instance {stale} still running while instance {current} "
            "is registered"
        )
        log.warning("node %s: %s", node_id, reason)
        await self._store.record_event(Transition(node_id, "", "", reason), now)

    async def _check_instance(self, node_id: str, instance_id: str, now: float) -> None:
        known = self._known.get(node_id)
        if known is None or (instance_id and known != instance_id):
            row = await self._store.node_identity(node_id)
            if row is None:
                self._known.discard(node_id)
                raise NotFound(f"node {node_id} is not registered: call RegisterNode first")
            known = row[0]
            self._known.remember(node_id, known)
        if instance_id and known and instance_id != known:
            await self._report_duplicate(node_id, instance_id, known, now)
            raise AlreadyExists(
                f"node {node_id} is registered by another Daemon instance ({known}); "
                f"this one ({instance_id}) was superseded"
            )

    def _bind(self, node_id: str, instance_id: str) -> None:
        """The calling connection now speaks for ``instance_id`` of ``node_id``."""
        connection = current_call().connection
        if connection is None:
            return
        if instance_id:
            self._bound[connection] = (node_id, instance_id)
        else:
            self._bound.pop(connection, None)

    def _unbind(self) -> None:
        connection = current_call().connection
        if connection is not None:
            self._bound.pop(connection, None)

    async def _report_liveness(self, node_id: str, method: str) -> bool:
        """Count an accepted report or sync as ``node_id``'s liveness, when its connection
        is bound to the node's registered instance (see "Liveness by report")."""
        connection = current_call().connection
        bound = self._bound.get(connection) if connection is not None else None
        if bound is None or bound[0] != node_id:
            return False
        if self._known.get(node_id) != bound[1]:
            return False  # replaced by another instance (or not cached: no read for this)
        try:
            # reported=0: a report carries no heartbeat timestamp of the Daemon's own, and
            # last_heartbeat_reported keeps the largest one (GREATEST/MAX).
            await self._heartbeats.submit(node_id, 0, heartbeat=False)
        except FleetError as exc:
            # Stored, but not counted: the Daemon heartbeats, and learns of the failure.
            log.debug("node %s: %s not counted as liveness: %s", node_id, method, exc)
            return False
        self._metrics.liveness_by_report.labels(method).inc()
        return True

    async def _require_registered(self, node_id: str) -> None:
        if node_id in self._known:
            return
        row = await self._store.node_identity(node_id)
        if row is None:
            raise NotFound(f"node {node_id} is not registered: call RegisterNode first")
        self._known.remember(node_id, row[0])

    async def report_metrics(
        self, request: manager_pb.ReportMetricsRequest | manager_pb2.ReportMetricsRequest
    ) -> manager_pb.ReportMetricsResponse:
        """Validate and store a batch (decoded by upb when it comes over gRPC)."""
        node_id = check_node_caller(request.node_id)
        metrics = request.metrics
        cfg = self._config
        if len(metrics) > cfg.max_samples_per_report:
            raise InvalidArgument(
                f"metrics has {len(metrics)} samples (max {cfg.max_samples_per_report})"
            )
        if self._quota is not None:
            await self._within_quota(node_id, len(metrics))
        now = self._clock()
        latest = now + validate.MAX_FUTURE_SKEW
        max_values = cfg.max_values_per_sample
        types, keys = self._metric_types, self._metric_keys
        samples: list[tuple[str, int, dict[str, float]]] = []
        for i, m in enumerate(metrics):
            kind, ts, entries = m.type, m.timestamp, m.values
            values = {key: entries[key] for key in entries}  # 2x dict(upb map)
            # Fast path: a type and keys already validated, and finite values (a sum
            # is finite only when every term is). Anything else takes the full checks,
            # in their order, so the error named is always the same.
            if kind not in types:
                self._check_metric_type(f"metrics[{i}]", kind)
            if ts < validate.MIN_TIMESTAMP or ts > latest:
                validate.check_timestamp(f"metrics[{i}].timestamp", ts, now=now)
            if len(values) > max_values:
                raise InvalidArgument(
                    f"metrics[{i}].values has {len(values)} entries (max {max_values})"
                )
            if not (keys.issuperset(values) and math.isfinite(sum(values.values()))):
                self._check_metric_values(f"metrics[{i}]", values)
            samples.append((kind, ts, values))
        await self._require_registered(node_id)
        written = await self._store.save_metrics(node_id, samples)
        self._metrics.metric_rows.inc(written)
        message = f"stored {written} samples"
        if written < len(samples):
            message += f" ({len(samples) - written} already stored)"
        alive = await self._report_liveness(node_id, "ReportMetrics")
        return manager_pb.ReportMetricsResponse(
            success=True, message=message, accepted=written, liveness=alive
        )

    def _check_metric_type(self, where: str, kind: str) -> None:
        """Full checks of a metric type name not seen yet; remembers it when valid."""
        if not kind:
            raise InvalidArgument(f"{where}.type is required")
        validate.check_id(f"{where}.type", kind)
        if len(kind) > 32:
            raise InvalidArgument(f"{where}.type is longer than 32 characters")
        if len(self._metric_types) >= _MAX_CACHED_NAMES:
            self._metric_types.clear()
        self._metric_types.add(kind)

    def _check_metric_values(self, where: str, values: Mapping[str, float]) -> None:
        """Full checks of a sample's values, key by key; remembers the keys when valid."""
        keys = self._metric_keys
        for key, value in values.items():
            if key not in keys:
                if not key:
                    raise InvalidArgument(f"{where}.values has an empty key")
                validate.check_text(f"{where}.values key", key, max_len=_SHORT)
            validate.check_finite(f"{where}.values[{key}]", value)
        if len(keys) + len(values) > _MAX_CACHED_NAMES:
            keys.clear()
        keys.update(values)

    async def _within_quota(self, node_id: str, samples: int) -> None:
        """Raise RESOURCE_EXHAUSTED, with a retry hint, for a report over the node's
        metrics quota; the start and the end of a throttled stretch are node events."""
        assert self._quota is not None
        answer = self._quota.take(node_id, samples)
        quota = self._quota.describe()
        if answer.ended:
            reason = f"metrics no longer throttled ({answer.ended} report(s) refused meanwhile)"
            log.info("node %s: %s", node_id, reason)
            await self._store.record_event(Transition(node_id, "", "", reason), self._clock())
        if not answer.retry:
            return
        retry = max(1, math.ceil(answer.retry))
        if answer.started:
            reason = f"metrics throttled: over its quota of {quota}"
            log.warning("node %s: %s; refusing its reports until they fit", node_id, reason)
            await self._store.record_event(Transition(node_id, "", "", reason), self._clock())
        raise ResourceExhausted(
            f"node {node_id} is over its metrics quota ({quota}): retry in {retry} s, when "
            f"this report of {samples} samples fits"
        )

    async def sync_agent_states(
        self, request: manager_pb.SyncAgentStatesRequest | manager_pb2.SyncAgentStatesRequest
    ) -> manager_pb.SyncAgentStatesResponse:
        node_id = check_node_caller(request.node_id)
        problems = SyncProblems()
        records = check_agent_states(request.states, problems)
        spec_states = check_spec_states(request.specs, problems) if request.full else None
        await self._require_registered(node_id)
        upserted, removed = await self._store.sync_agents(
            node_id=node_id, states=records, full=request.full, now=self._clock()
        )
        self._restarts.observe(node_id, records, full=request.full)
        await self._specs.node_synced(node_id, spec_states)
        message = f"synced {upserted} agents, removed {removed}"
        if problems:
            message += f"; {self._report_problems(node_id, problems)}"
        alive = await self._report_liveness(node_id, "SyncAgentStates")
        return manager_pb.SyncAgentStatesResponse(success=True, message=message, liveness=alive)

    def _report_problems(self, node_id: str, problems: SyncProblems) -> str:
        """Count, log (once a minute per node) and describe what a sync could not store
        as sent."""
        self._metrics.agent_sync_problems.labels("sanitised").inc(len(problems.sanitised))
        summary = problems.summary()
        held = self._sync_log.allow(node_id, time.monotonic())
        if held is not None:
            more = f" ({held} more such syncs since the last line)" if held else ""
            log.warning(
                "node %s: SyncAgentStates stored with changes: %s%s", node_id, summary, more
            )
        return summary

    @staticmethod
    def _check_address(address: str) -> str:
        if not address:
            return ""
        validate.check_text("daemon_address", address, max_len=255)
        try:
            host, _port = split_host_port(address, "daemon_address")
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if not host or host == "0.0.0.0":
            raise InvalidArgument(f"daemon_address {address!r} is not a reachable address")
        return address

    @staticmethod
    def _check_interval(seconds: int) -> float:
        if seconds < 0 or seconds > MAX_HEARTBEAT_INTERVAL:
            raise InvalidArgument(
                f"heartbeat_interval_seconds {seconds} is outside 0..{MAX_HEARTBEAT_INTERVAL}"
            )
        return float(seconds)
