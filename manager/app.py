"""ManagerApp: owns and wires every part of a running Manager.

Start order: the SQLite lock (one Manager per SQLite file) → database (migrations) →
change feed and duties lease (several Managers on PostgreSQL: manager/notify.py,
manager/leases.py) → revocation list (loaded before any call is taken)
→ stall clock → heartbeat flusher → retention loop → gRPC server (ManagerService,
AdminService, grpc.health.v1, reflection; with TLS, behind the handshake gate) →
liveness loop (its restart guard counts from here) → spec controller and rollout driver
→ HTTP side, then one ``manager ready`` log line.
``close()`` stops intake; ``wait_closed()`` writes the pending heartbeats, answers the
calls waiting on them, then stops the rest in reverse order. ``reload_tls()`` (SIGHUP)
re-reads the Manager's certificate, key and CA file into the live TLS contexts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from pathlib import Path
from typing import Any

from grpclib.health.check import ServiceCheck
from grpclib.health.service import Health

from common.overload import MethodLimit
from common.rpc import GuardedService, HardenedServer, Transport, make_server, wait_server_closed
from common.specdoc import load_ca_certs
from common.tls import client_context, server_context, warn_insecure
from common.wirelimits import manager_report_metrics_limits

from .config import ManagerConfig, split_host_port
from .daemon_pool import DaemonClientPool
from .enroll import Enrollment
from .events import AgentEventQuota, EventRecorder
from .handshakes import GatedServer, TLSGate
from .heartbeats import HeartbeatBuffer
from .http import HttpServer
from .known_nodes import KnownNodes
from .leases import Lease, SqliteLock
from .liveness import LivenessMonitor, log_transitions
from .metrics import ManagerMetrics
from .notify import ChangeFeed
from .quotas import EventQuota, MetricsQuota
from .reflection import with_reflection
from .retention import MetricRetention
from .revocations import ManagerRevocations
from .services import AdminService, ManagerService
from .services.spec_admin import SpecAdmin
from .specs.catalog import RevisionCatalog
from .specs.controller import SpecController
from .specs.rollouts import RolloutDriver
from .stalls import StallClock
from .store import ONLINE, Database, Store, Transition
from .store.database import sqlite_path
from .store.events import EventStore
from .store.revocations import RevocationStore
from .store.specs import SpecStore
from .tls_reload import TLSReloader
from .watch import EventWatch

log = logging.getLogger(__name__)

# The certificate files are also checked for changes this often (SIGHUP reloads at once).
TLS_POLL_INTERVAL = 60.0

MANAGER_POLICY = {
    name: {"node"}
    for name in (
        "RegisterNode",
        "Heartbeat",
        "ReportMetrics",
        "SyncAgentStates",
        "GetRevocations",
        "RenewCertificate",
        "Leave",
    )
}
ADMIN_POLICY = {
    name: {"admin"}
    for name in (
        "ListNodes",
        "GetNode",
        "ListAgents",
        "OperateAgent",
        "GetAgentMetrics",
        "QueryNodeMetrics",
        "PushUpdate",
        "GetAgentConfig",
        "GetAgentLog",
        "FollowAgentLog",
        "RemoveNode",
        "ApplySpec",
        "ListSpecs",
        "GetSpec",
        "DeleteSpec",
        "GetRollout",
        "SetRolloutState",
        "CreateJoinToken",
        "ListJoinTokens",
        "RevokeJoinToken",
        "ListCertificates",
        "ReloadDaemon",
        "RevokeCertificate",
        "ListEvents",
        "GetAgent",
        "WatchEvents",
    )
}


def manager_budgets(cfg: ManagerConfig) -> dict[str, int | MethodLimit]:
    """ManagerService's admission budgets (common/overload.py). RegisterNode's refusal is
    UNAVAILABLE (a Daemon tries its next Manager); the others are RESOURCE_EXHAUSTED with a
    hint the Daemon waits for, keeping its reports."""
    return {
        "RegisterNode": cfg.max_concurrent_registrations,
        "Heartbeat": MethodLimit(cfg.heartbeat_in_flight),
        "ReportMetrics": MethodLimit(cfg.report_metrics_in_flight),
        "SyncAgentStates": MethodLimit(cfg.sync_in_flight),
        # Rare per node, but a whole fleet does them together after a revocation or
        # a restart: the registrations' budget (a signature each) and the syncs'.
        "RenewCertificate": MethodLimit(cfg.max_concurrent_registrations),
        "GetRevocations": MethodLimit(cfg.sync_in_flight),
        "Leave": MethodLimit(cfg.sync_in_flight),
    }


def default_name(config: ManagerConfig) -> str:
    """``manager.name`` when unset: this host and the gRPC port (the pid when the port
    is chosen by the OS), unique among the Managers of one database."""
    _, port = split_host_port(config.grpc_listen, "grpc.listen")
    return f"{socket.gethostname()}:{port}" if port else f"{socket.gethostname()}/{os.getpid()}"


class ManagerApp:
    """A whole Manager (see module doc). Use ``async with ManagerApp(config=...)``."""

    def __init__(self, *, config: ManagerConfig, worker: int | None = None) -> None:
        self.config = config
        # Worker ``worker`` of several sharing this host's ports (manager/workers.py).
        self.worker = worker
        self.metrics = ManagerMetrics()
        self.database = Database(url=config.db_url)
        # Every context made from the Manager's certificate files (reload_tls).
        self.tls_reloader: TLSReloader | None = (
            TLSReloader(files=config.tls_files, poll_interval=TLS_POLL_INTERVAL)
            if config.tls_enabled
            else None
        )
        self.event_quota = EventQuota(
            events=config.events_node_quota,
            window=config.events_node_quota_window,
            metrics=self.metrics,
        )
        self.metrics_quota = MetricsQuota(
            samples=config.metrics_node_quota,
            window=config.metrics_node_quota_window,
            metrics=self.metrics,
        )
        self.event_store = EventStore(database=self.database)
        # Agent event history (manager/events.py); WatchEvents subscribes to it.
        self.events = EventRecorder(
            store=self.event_store,
            quota=AgentEventQuota(
                events=config.events_agent_quota,
                window=config.events_agent_quota_window,
                metrics=self.metrics,
            ),
        )
        self.store = Store(
            database=self.database, event_filter=self.event_quota, agent_events=self.events
        )
        # Several Managers on one PostgreSQL: the duties that must run once run under
        # this lease; the change feed tells the others what this one changed.
        self.name = config.manager_name or default_name(config)
        if worker is not None:
            self.name = f"{self.name}/w{worker}"
        postgres = None if self.database.backend == "sqlite" else config.db_url
        self.sqlite_lock = (
            SqliteLock(database_path=sqlite_path(config.db_url))
            if postgres is None and sqlite_path(config.db_url)
            else None
        )
        self.lease = Lease(
            name="duties",
            holder=self.name,
            url=postgres,
            metrics=self.metrics,
            retry_interval=config.lease_retry_interval,
            check_timeout=config.lease_check_timeout,
            on_change=self._lease_changed,
        )
        self.feed = ChangeFeed(
            url=postgres,
            name=self.name,
            on_change=self._changed_elsewhere,
            on_reset=self._all_changed_elsewhere,
            retry_interval=config.lease_retry_interval,
            check_timeout=config.lease_check_timeout,
        )
        self.known_nodes = KnownNodes(on_forget=lambda node_id: self.feed.publish("node", node_id))
        self.heartbeats = HeartbeatBuffer(
            store=self.store,
            flush_interval=config.heartbeat_flush_interval,
            max_batch=config.heartbeat_max_batch,
            ack=config.heartbeat_ack,
            grace_for=config.grace_for,
            metrics=self.metrics,
            on_transitions=self._heartbeat_transitions,
            on_missing=self.known_nodes.discard_all,
        )
        self.stalls = StallClock(metrics=self.metrics, threshold=config.stall_threshold)
        self.liveness = LivenessMonitor(
            store=self.store,
            heartbeats=self.heartbeats,
            metrics=self.metrics,
            stalls=self.stalls,
            sweep_interval=config.sweep_interval,
            mass_offline_share=config.mass_offline_share,
            mass_offline_min_nodes=config.mass_offline_min_nodes,
            mass_offline_hold=config.mass_offline_hold,
            lease=self.lease,
        )
        self.retention = MetricRetention(
            store=self.store,
            metrics=self.metrics,
            retention=config.metrics_retention,
            interval=config.retention_interval,
            batch=config.retention_batch,
            events_retention=config.events_retention,
            lease=self.lease,
            event_store=self.event_store,
        )
        self.pool = DaemonClientPool(
            ssl_context=self._daemon_ssl(),
            call_timeout=config.daemon_call_timeout,
            connect_timeout=config.daemon_connect_timeout,
            connect_attempts=config.daemon_connect_attempts,
            backoff_initial=config.daemon_backoff_initial,
            backoff_max=config.daemon_backoff_max,
        )
        self.spec_store = SpecStore(database=self.database)
        self.catalog = RevisionCatalog(store=self.spec_store)
        self.specs = SpecController(
            store=self.spec_store,
            catalog=self.catalog,
            pool=self.pool,
            sweep_interval=config.spec_sweep_interval,
            concurrency=config.spec_push_concurrency,
            on_reported=lambda node_id: self.rollouts.node_reported(node_id),
            lease=self.lease,
            on_recorded=lambda node_id: self.feed.publish("states", node_id),
        )
        self.rollouts = RolloutDriver(
            store=self.spec_store,
            catalog=self.catalog,
            controller=self.specs,
            interval=config.rollout_interval,
            lease=self.lease,
            elsewhere=lambda: self.feed.publish("rollouts"),
        )
        self.revocation_store = RevocationStore(database=self.database)
        self.revocations = ManagerRevocations(
            store=self.revocation_store,
            refresh=config.revocation_refresh,
            on_change=lambda: self.feed.publish("revocations"),
        )
        # Join tokens, the enrollment listener, node certificates (manager/enroll).
        self.enrollment = Enrollment(config=config, database=self.database, metrics=self.metrics)
        self.grpc: HardenedServer | None = None
        self.tls_gate: TLSGate | None = None
        self.http: HttpServer | None = None
        self.grpc_address = ""
        self.http_address = ""
        self._started = False
        self._closing = False

    def _daemon_ssl(self) -> ssl.SSLContext | None:
        """One client context for every Daemon; the pool checks each node's name."""
        if not self.config.tls_enabled:
            return None
        context = client_context(self.config.tls_files, expect_role="node")
        if self.tls_reloader is not None:
            self.tls_reloader.track(context)
        return context

    def _lease_changed(self, held: bool) -> None:
        if held:
            # Taken over (or first taken): resume the rollouts and look at every node now.
            self.rollouts.poke()
            self.specs.reconcile_all()

    async def _changed_elsewhere(self, topic: str, key: str) -> None:
        """Another Manager on the database changed something this one caches."""
        if topic == "node":
            self.known_nodes.invalidate(key)
            # Join labels are cached per Daemon instance, which a new join changes anyway
            # (manager/enroll/labels.py); dropped too, as it costs nothing.
            self.enrollment.labels.forget(key)
        elif topic == "states":
            self.specs.recorded_elsewhere(key)
        elif topic == "revocations":
            await self.revocations.refresh()
        elif topic == "rollouts" and self.lease.held:
            self.rollouts.poke()

    async def _all_changed_elsewhere(self) -> None:
        """The change feed was deaf for a while: drop what others may have changed."""
        self.known_nodes.clear()
        self.specs.recorded_elsewhere(None)
        if self.lease.held:
            self.rollouts.poke()
        await self.revocations.refresh()

    def _heartbeat_transitions(self, transitions: list[Transition]) -> None:
        log_transitions(transitions, self.metrics)
        back = [t.node_id for t in transitions if t.new == ONLINE]
        if back:
            # A Daemon back from an outage heartbeats without registering again: it may
            # have missed applies meanwhile, so look at its specs now, not at the sweep.
            self.specs.reconcile_nodes(back)

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("manager already started")
        self._started = True
        cfg = self.config
        server_ssl = None
        if cfg.tls_enabled:
            cfg.tls_files.check_readable()
            server_ssl = server_context(cfg.tls_files)
            transport = Transport.TLS
        else:
            warn_insecure("fleet-manager")
            transport = Transport.INSECURE
        # The issuing CA first: a bad one stops the start with one line.
        self.enrollment.load_ca()
        if self.sqlite_lock is not None:
            self.sqlite_lock.acquire()
        await self.database.start()
        await self.feed.start()
        await self.lease.start()
        # Loaded before the gRPC server takes a call: a revoked certificate never gets one.
        await self.revocations.start()
        await self.stalls.start()
        await self.heartbeats.start()
        await self.retention.start()

        guard: dict[str, Any] = {
            "transport": transport,
            "max_message_bytes": cfg.max_message_bytes,
            "observer": self.metrics.observe_rpc,
        }
        if server_ssl is not None:
            guard["revocations"] = self.revocations.list
            # Manager and admin roles only in certificates a fleet root signed directly.
            guard["trust_roots"] = load_ca_certs(Path(cfg.ca_file))
        manager_service = ManagerService(
            config=cfg,
            store=self.store,
            heartbeats=self.heartbeats,
            pool=self.pool,
            known=self.known_nodes,
            metrics=self.metrics,
            specs=self.specs,
            metrics_quota=self.metrics_quota,
            issuer=self.enrollment.issuer,
            enrolled=self.enrollment.labels,
            revocations=self.revocations,
        )
        spec_admin = SpecAdmin(
            store=self.spec_store,
            catalog=self.catalog,
            controller=self.specs,
            rollouts=self.rollouts,
            # Signed specs are verified against the fleet CA: none without TLS.
            ca_certs=load_ca_certs(Path(cfg.ca_file)) if cfg.tls_enabled else None,
        )
        admin_service = AdminService(
            store=self.store,
            pool=self.pool,
            known=self.known_nodes,
            specs=spec_admin,
            enroll=self.enrollment.admin,
            revocations=self.revocations,
            events=self.events,
            event_store=self.event_store,
            watch=EventWatch(recorder=self.events, store=self.event_store, metrics=self.metrics),
        )
        guarded_manager = GuardedService(
            manager_service,
            policy=MANAGER_POLICY,
            max_in_flight=manager_budgets(cfg),
            retry_after=cfg.retry_after,
            shed_observer=self.metrics.observe_shed,
            # The wire-level bound follows the ingest limits an operator may raise.
            decode_limits={
                "ReportMetrics": manager_report_metrics_limits(
                    max_samples_per_report=cfg.max_samples_per_report,
                    max_values_per_sample=cfg.max_values_per_sample,
                )
            },
            **guard,
        )
        guarded_admin = GuardedService(
            admin_service,
            policy=ADMIN_POLICY,
            max_in_flight={name: MethodLimit(cfg.admin_in_flight) for name in ADMIN_POLICY},
            retry_after=cfg.retry_after,
            shed_observer=self.metrics.observe_shed,
            **guard,
        )
        # grpc.health.v1: both services (and the overall "") are SERVING while the
        # database takes writes, NOT_SERVING when it does not (as /readyz).
        db_check = ServiceCheck(self.database.writable, check_ttl=5, check_timeout=5)
        health = Health({guarded_manager: [db_check], guarded_admin: [db_check]})
        services: list[Any] = [guarded_manager, guarded_admin, health]
        grpc: HardenedServer
        if server_ssl is not None:
            assert self.tls_reloader is not None
            self.tls_reloader.track(server_ssl)
            await self.tls_reloader.start()
            # The gate does the TLS handshakes itself, to log the ones it refuses.
            self.tls_gate = TLSGate(
                ssl_context=server_ssl, metrics=self.metrics, timeout=cfg.tls_handshake_timeout
            )
            grpc = GatedServer(
                with_reflection(services), limits=cfg.grpc_limits, gate=self.tls_gate
            )
        else:
            grpc = make_server(with_reflection(services), limits=cfg.grpc_limits)
        host, port = split_host_port(cfg.grpc_listen, "grpc.listen")
        try:
            await grpc.start(host, port, reuse_address=True, reuse_port=self.worker is not None)
        except OSError as exc:
            raise OSError(f"cannot serve gRPC on {host}:{port}: {exc.strerror or exc}") from None
        self.grpc = grpc
        # The restart guard counts from when heartbeats can arrive again.
        await self.liveness.start()
        # Desired state: converge nodes (a sweep at once) and resume rollouts.
        await self.specs.start()
        await self.rollouts.start()
        # Port 0 asks the OS for a free port: report the one actually bound.
        sockets = getattr(grpc._server, "sockets", None) or ()
        bound_port = sockets[0].getsockname()[1] if sockets else port
        self.grpc_address = f"{host}:{bound_port}"
        await self.enrollment.start(
            grpc_address=self.grpc_address, reuse_port=self.worker is not None
        )
        if self.tls_reloader is not None and self.enrollment.listener is not None:
            # A reloaded certificate is served on the enrollment port too.
            self.tls_reloader.track(self.enrollment.listener.ssl_context)

        if cfg.http_listen:
            self.http = HttpServer(
                listen=cfg.http_listen,
                ready=self.database.write_status,
                render_metrics=self.render_metrics,
                read_timeout=cfg.http_read_timeout,
                write_timeout=cfg.http_write_timeout,
                max_connections=cfg.http_max_connections,
                max_connections_per_peer=cfg.http_max_connections_per_peer,
                header_timeout=cfg.http_header_timeout,
                on_refused=lambda reason: self.metrics.connections_refused.labels(
                    "server.listen", reason
                ).inc(),
                reuse_port=self.worker is not None,
            )
            await self.http.start()
            self.http_address = self.http.address
        log.info(
            "manager %s: duties lease %s",
            self.name,
            "held" if self.lease.held else "held by another Manager (taken over if it stops)",
        )
        if self.worker is None:
            log.info("%s", self.ready_line())
        else:  # the parent says "manager ready" once every worker is
            log.info("worker %d ready (pid %d)", self.worker, os.getpid())

    def ready_line(self) -> str:
        """The ``manager ready`` log line: where it serves, on what."""
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        return (
            f"manager ready: grpc={self.grpc_address} http={self.http_address or 'disabled'} "
            f"db={self.database.backend} tls={'on' if self.config.tls_enabled else 'OFF'} "
            f"loop={loop} data={self.database.location}"
        )

    def reload_tls(self) -> bool:
        """Re-read the certificate, key and CA files into every live TLS context (the
        gRPC server's, the Daemon pool's, and those given to ``tls_reloader.track``):
        new connections get the new certificate, open ones go on. False (logged, the
        old certificate kept) when the files are unusable or TLS is off."""
        if self.tls_reloader is None:
            log.warning("TLS reload asked for, but TLS is off")
            return False
        return self.tls_reloader.reload()

    async def render_metrics(self) -> bytes:
        """Refresh the gauges read from the database, then render every metric."""
        try:
            nodes, agents = await self.store.status_counts()
            self.metrics.set_status_counts(nodes, agents)
        except Exception as exc:  # still serve the process metrics
            log.warning("metrics: status counts unavailable: %s", exc)
        self.metrics.set_pool_states(self.pool.states())
        self.metrics.throttled_nodes.labels("metrics").set(self.metrics_quota.throttled_count())
        self.metrics.database_writable.set(0 if await self.database.write_status() else 1)
        return self.metrics.render()

    def close(self) -> None:
        """Stop intake (idempotent): no new heartbeats, no new HTTP requests."""
        if self._closing:
            return
        self._closing = True
        log.info("manager shutting down")
        self.heartbeats.close()
        self.liveness.close()
        self.retention.close()
        self.revocations.close()
        if self.tls_reloader is not None:
            self.tls_reloader.close()
        self.rollouts.close()
        self.specs.close()
        self.enrollment.close()
        if self.http is not None:
            self.http.close()
        self.lease.close()
        self.feed.close()

    async def wait_closed(self) -> None:
        """Drain: final heartbeat flush, answer waiting calls, then stop everything."""
        try:
            await self.heartbeats.wait_closed()
            if self.grpc is not None:
                # Let the handlers whose heartbeats were just flushed send their answers.
                await asyncio.sleep(0.1)
                self.grpc.close()
                if self.tls_gate is not None:
                    self.tls_gate.close()
                    await self.tls_gate.wait_closed()
                # Bounded: Daemons keep idle channels open, and from Python 3.12
                # wait_closed() would wait for every one of them to hang up.
                await wait_server_closed(self.grpc)
            await self.enrollment.wait_closed()
            await self.liveness.wait_closed()
            self.stalls.close()
            await self.stalls.wait_closed()
            await self.retention.wait_closed()
            await self.revocations.wait_closed()
            if self.tls_reloader is not None:
                await self.tls_reloader.wait_closed()
            await self.rollouts.wait_closed()
            await self.specs.wait_closed()
            if self.http is not None:
                await self.http.wait_closed()
            self.pool.close()
            await self.pool.wait_closed()
            # Duties stopped: hand the lease over now, not when the process exits.
            await self.lease.wait_closed()
            await self.feed.wait_closed()
        finally:
            await self.database.close()
            if self.sqlite_lock is not None:
                self.sqlite_lock.release()
        log.info("manager stopped")

    async def __aenter__(self) -> ManagerApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()
