"""The Daemon assembled: agents, central specs, their two gRPC listeners, the Manager
link, /metrics, and live reload (:meth:`DaemonApp.reload`).

One grpclib ``Server`` serves one listener, so there are two: DaemonService on TCP with
mutual TLS for the Manager and admins (:mod:`daemon.services.control_service`), and the
agent API on a Unix socket (:mod:`daemon.services.agent_service`), mode 0600 in a
directory made 0700.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from prometheus_client.core import Metric

from common.conns import TLSAcceptor
from common.rpc import GuardedService, HardenedServer, Transport, make_server, wait_server_closed
from common.specdoc import SpecError, load_ca_certs
from common.tls import TLSFiles, warn_insecure
from schema import manager_pb

from .adoption import Marker
from .agents import Agents
from .certs import (
    CertificateError,
    CertRenewer,
    LiveTLS,
    Renewed,
    RenewPolicy,
    describe,
    recover_swap,
)
from .config import DaemonConfig, split_hostport
from .desired import ConfigLoader, DesiredState, ReloadOutcome, initial
from .history import History
from .hostinfo import HostMetrics, host_facts
from .manager_client import ManagerClient, NodeIdentity
from .metrics_http import MetricsServer, counter, gauge
from .outbox import Outbox
from .revocations import DaemonRevocations
from .services import agent_service, control_service
from .sockdir import UnsafeSocketPath, agent_socket_path, prepare_socket_dir
from .specs import SpecBook
from .supervisor import ACTIVE, AgentRunner

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The Daemon cannot start (bad socket directory, unreadable certificate…)."""


def lock_state_dir(state_dir: Path) -> int:
    """Take the state directory's lock, so two Daemons never fight over the same agents.

    The lock (``flock`` on ``state_dir/daemon.lock``) dies with the process, even on
    ``kill -9``; its file descriptor is not inherited by agents.
    """
    path = state_dir / "daemon.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StartupError(
            f"another Daemon (pid {holder}) is using the state directory {state_dir}"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as exc:  # a full disk: the lock holds all the same, only the pid is lost
        log.warning("cannot write the pid into %s: %s", path, exc)
    return fd


class DaemonApp:
    """Everything one ``fleet-daemon`` runs; lifecycle start/close/wait_closed.

    ``load_config`` re-reads the configuration exactly as ``__main__`` first built it
    (the same file, environment and flags) for :meth:`reload`; ``None`` when the Daemon
    runs without a config file. ``set_log_level`` applies a reloaded ``log.level``
    (logging belongs to the entry point).
    """

    def __init__(
        self,
        *,
        config: DaemonConfig,
        base_env: Mapping[str, str],
        load_config: ConfigLoader | None = None,
        config_file: Path | None = None,
        set_log_level: Callable[[str], None] = lambda _level: None,
    ) -> None:
        self.config = config
        self._base_env = dict(base_env)
        self._load_config = load_config
        self._config_file = config_file
        self._set_log_level = set_log_level
        self.socket_path = agent_socket_path(config)
        self.agents: Agents | None = None
        self.specs: SpecBook | None = None
        self.desired: DesiredState | None = None
        self.manager: ManagerClient | None = None
        self._stop_reason = "daemon shut down"
        self.outbox: Outbox | None = None
        self.tls: LiveTLS | None = None
        self.renewer: CertRenewer | None = None
        self.revocations: DaemonRevocations | None = None
        self._control: HardenedServer | None = None
        self._control_service: control_service.ControlService | None = None
        self._local: HardenedServer | None = None
        self._http: MetricsServer | None = None
        self.grpc_port = 0
        self.advertise = ""
        self._started = False
        self._lock_fd = -1
        self._rpc_counts: dict[tuple[str, str], int] = {}

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("DaemonApp already started")
        self._started = True
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = lock_state_dir(cfg.state_dir)
        tls = None
        ca_certs = []
        if cfg.tls_enabled:
            t = cfg.manager.tls
            files = TLSFiles(Path(t.cert_file), Path(t.key_file), Path(t.ca_file))
            try:
                recovered = recover_swap(files)
                if recovered:
                    log.warning("node certificate: %s", recovered)
                files.check_readable()
                ca_certs = load_ca_certs(Path(t.ca_file))  # what central specs chain to
                tls = self.tls = LiveTLS(files)
            except (OSError, SpecError, CertificateError) as exc:
                raise StartupError(str(exc)) from None
        else:
            warn_insecure("fleet-daemon")
        # Revocations only mean something with certificates; the list exists either way
        # so that central specs have one to check.
        self.revocations = DaemonRevocations(
            path=cfg.state_dir / "revocations.json", fetch=self._get_revocations
        )
        if tls is not None:
            self.revocations.load()
        # The IP reported is the one towards the first Manager listed (a name is looked
        # up in that thread, not on the event loop).
        manager_addr = split_hostport(cfg.manager.addresses[0])
        facts = await asyncio.to_thread(host_facts, manager_addr)
        host_metrics = HostMetrics()
        self.outbox = Outbox(directory=cfg.state_dir / "outbox", max_reports=cfg.outbox_max_reports)
        history = History(retention=cfg.history_retention, interval=cfg.history_interval)
        env = dict(self._base_env)
        env["FLEET_AGENT_SOCKET"] = str(self.socket_path)
        env["FLEET_NODE_ID"] = cfg.node_id
        self.specs = SpecBook(
            path=cfg.state_dir / "specs.json",
            ca_certs=ca_certs,
            base_env=env,
            euid=os.geteuid(),
            cwd=os.getcwd(),
            revocations=self.revocations.list,
        )
        self.specs.load()
        desired, first_plan = initial(cfg, self.specs)
        self.agents = Agents(
            desired=desired,
            state_dir=cfg.state_dir,
            base_env=env,
            history=history,
            marker=await asyncio.to_thread(Marker.load, cfg.state_dir),
            update_limits=cfg.update_limits,
            stop_on_exit=cfg.stop_agents_on_exit,
            check_peer=cfg.agent_check_peer,
            on_change=self._agents_changed,
        )
        self.desired = DesiredState(
            config=cfg,
            agents=self.agents,
            specs=self.specs,
            load_config=self._load_config,
            config_file=self._config_file,
            on_reload=self._reloaded,
            request_sync=self._request_sync,
        )

        control = control_service.ControlService(
            node_id=cfg.node_id,
            agents=self.agents,
            desired=self.desired,
            request_sync=self._request_sync,
        )
        self._control_service = control
        control_server = make_server(
            [
                GuardedService(
                    control,
                    policy=control_service.POLICY,
                    transport=Transport.TLS if tls else Transport.INSECURE,
                    observer=self._observe,
                    revocations=self.revocations.list if tls else None,
                    trust_roots=ca_certs if tls else None,
                    # The Manager relays every admin's log follows (and bounds each
                    # admin to 8); an admin dialling this Daemon directly gets 8.
                    max_streams_per_role={"manager": 256},
                )
            ],
            limits=cfg.grpc_limits,
            # The handshake after the connection caps (common.conns), not by the loop: it
            # would hold an uncounted socket for up to 60 s per idle TCP connection.
            tls=TLSAcceptor(ssl_context=tls.server, timeout=cfg.grpc_limits.preface_timeout)
            if tls
            else None,
            name="grpc.listen",
        )
        host, port = split_hostport(cfg.listen)
        # Kept only once started: close() on a grpclib Server that never started raises,
        # which turned "address already in use" into a traceback.
        await control_server.start(host, port)
        self._control = control_server
        self.grpc_port = _bound_port(self._control)

        try:
            prepare_socket_dir(self.socket_path)
        except UnsafeSocketPath as exc:
            raise StartupError(str(exc)) from None
        agent_api = agent_service.AgentService(
            agents=self.agents, max_bytes_without_metadata=cfg.agent_max_bytes_without_metadata
        )
        local_server = make_server(
            [
                GuardedService(
                    agent_api,
                    policy=agent_service.POLICY,
                    transport=Transport.LOCAL,
                    observer=self._observe,
                    # The agent's token is checked from the call's metadata, before its
                    # request is read (docs/agent-api.md).
                    authenticate=agent_api.header_auth(),
                )
            ],
            limits=cfg.grpc_limits,
            name="agent_api.socket",
        )
        await local_server.start(path=str(self.socket_path))
        self._local = local_server
        os.chmod(self.socket_path, 0o600)

        self.advertise = cfg.advertise or _advertise(host, self.grpc_port, facts.ip)
        self.manager = ManagerClient(
            settings=cfg.manager,
            node=NodeIdentity(
                node_id=cfg.node_id,
                labels=dict(cfg.labels),
                facts=facts,
                daemon_address=self.advertise,
            ),
            ssl_context=tls.client if tls else None,
            outbox=self.outbox,
            host_metrics=host_metrics,
            agent_states=lambda: [r.to_state() for r in self._runners()],
            spec_states=self.specs.states,
            on_revocations_version=self.revocations.seen_version if tls else lambda _v: None,
        )
        await self.agents.start()
        self.specs.commit(first_plan, {})
        await self.manager.start()
        if tls is not None:
            await self.revocations.start()
            if cfg.manager.tls.renew:
                self.renewer = CertRenewer(
                    node_id=cfg.node_id,
                    tls=tls,
                    policy=RenewPolicy(
                        renew_at=cfg.manager.tls.renew_at,
                        check_interval=cfg.manager.tls.renew_check_interval,
                    ),
                    renew=self._renew_certificate,
                    after_renewal=self.manager.reconnect,
                    roots=ca_certs,
                )
                await self.renewer.start()
        if cfg.http_listen:
            self._http = MetricsServer(
                listen=cfg.http_listen,
                collect=self._collect,
                max_connections=cfg.http_max_connections,
                max_connections_per_peer=cfg.http_max_connections_per_peer,
                read_timeout=cfg.http_read_timeout,
            )
            await self._http.start()
        log.info(
            "daemon ready: node %s, DaemonService on %s:%d (advertised as %s), agent socket %s, "
            "%d agent(s), Manager %s, state in %s%s",
            cfg.node_id,
            host,
            self.grpc_port,
            self.advertise,
            self.socket_path,
            len(self.agents.runners),
            cfg.manager.address,
            cfg.state_dir,
            f", metrics on http://{cfg.http_listen.rsplit(':', 1)[0]}:{self._http.port}/metrics"
            if self._http
            else "",
        )

    async def _renew_certificate(self, csr_pem: str) -> Renewed:
        if self.manager is None:
            raise RuntimeError("the Manager client has not started")
        reply = await self.manager.renew_certificate(csr_pem)
        return Renewed(cert_pem=reply.cert_pem, ca_pem=reply.ca_pem)

    async def _get_revocations(self, known_version: int) -> manager_pb.GetRevocationsResponse:
        if self.manager is None:
            raise RuntimeError("the Manager client has not started")
        return await self.manager.get_revocations(known_version)

    def _runners(self) -> list[AgentRunner]:
        return list(self.agents.runners.values()) if self.agents else []

    def _observe(self, method: str, code: str, seconds: float) -> None:
        key = (method, code)
        self._rpc_counts[key] = self._rpc_counts.get(key, 0) + 1

    def _agents_changed(self) -> None:
        if self.manager is not None:
            self.manager.request_sync()

    def _request_sync(self) -> None:
        if self.manager is not None:
            self.manager.request_sync()

    async def reload(self, *, dry_run: bool = False) -> ReloadOutcome:
        """Re-read the config file and apply the difference (SIGHUP, ReloadConfig)."""
        if self.desired is None:
            return ReloadOutcome("", error="the Daemon has not started yet")
        if self.tls is not None and not dry_run:
            self.reload_certificates()
        return await self.desired.reload(dry_run=dry_run)

    def reload_certificates(self) -> None:
        """Load the certificate, key and CA files again into the live TLS contexts (SIGHUP):
        new connections use them; a file that does not load keeps the old ones."""
        if self.tls is None:
            return
        try:
            cert = self.tls.reload()
        except CertificateError as exc:
            log.error("keeping the current node certificate: the files do not load: %s", exc)
            return
        log.info("re-read the node certificate files: %s", describe(cert))
        if self.manager is not None:
            self.manager.reconnect()

    def _reloaded(self, old: DaemonConfig, new: DaemonConfig) -> None:
        self.config = new
        if new.labels != old.labels and self.manager is not None:
            log.info("labels changed: registering again with the Manager")
            self.manager.update_labels(new.labels)
        if new.log_level != old.log_level:
            self._set_log_level(new.log_level)
        if new.stop_agents_on_exit != old.stop_agents_on_exit and self.agents is not None:
            self.agents.set_stop_on_exit(new.stop_agents_on_exit)
        if new.update_limits != old.update_limits and self.agents is not None:
            self.agents.set_update_limits(new.update_limits)

    def close(self, reason: str = "daemon shut down") -> None:
        """Stop taking requests; agents are stopped (or left running) in wait_closed, and
        the Manager is told the node stops (``reason``), so it shows "stopped" at once."""
        self._stop_reason = reason
        if self.desired is not None:
            self.desired.close()
        for part in (self.renewer, self.revocations):
            if part is not None:
                part.close()
        for server in (self._control, self._local):
            if server is not None:
                server.close()
                if server.tls is not None:
                    server.tls.close()
        if self._http is not None:
            self._http.close()

    async def wait_closed(self) -> None:
        # Both at once, each bounded: their peers (the Manager, agents) may hold idle
        # connections open, and from Python 3.12 wait_closed() would wait for them.
        await asyncio.gather(
            *(wait_server_closed(s) for s in (self._control, self._local) if s is not None)
        )
        if self.desired is not None:
            await self.desired.wait_closed()
        for part in (self.renewer, self.revocations):
            if part is not None:
                await part.wait_closed()
        if self.agents is not None:
            self.agents.close()
            await self.agents.wait_closed()
        if self.manager is not None:
            await self.manager.flush_states(timeout=2.0)
            await self.manager.say_goodbye(self._stop_reason, timeout=2.0)
            self.manager.close()
            await self.manager.wait_closed()
        if self._http is not None:
            await self._http.wait_closed()
        if self._lock_fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            os.close(self._lock_fd)
            self._lock_fd = -1
        log.info("daemon stopped")

    async def __aenter__(self) -> DaemonApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # ---- /metrics ----

    def _collect(self) -> Iterable[Metric]:
        runners = self._runners()
        states = gauge("fleet_daemon_agents", "Agents by state", ["state"])
        by_state: dict[str, int] = {}
        for r in runners:
            by_state[r.state] = by_state.get(r.state, 0) + 1
        for state, n in sorted(by_state.items()):
            states.add_metric([state], n)
        up = gauge("fleet_agent_up", "1 while the agent is STARTING or RUNNING", ["agent"])
        restarts = counter("fleet_agent_restarts", "Restarts of the agent", ["agent"])
        hb = gauge(
            "fleet_agent_last_heartbeat_seconds", "Unix time of the last heartbeat", ["agent"]
        )
        cpu = gauge(
            "fleet_agent_cpu_percent", "CPU of the process group (latest sample)", ["agent"]
        )
        rss = gauge("fleet_agent_memory_rss_bytes", "RSS of the process group", ["agent"])
        custom = gauge(
            "fleet_agent_metric",
            "Metrics agents report through ReportMetrics",
            ["agent", "name", "labels"],
        )
        for r in runners:
            up.add_metric([r.id], 1.0 if r.state in ACTIVE - {"BACKOFF", "STOPPING"} else 0.0)
            restarts.add_metric([r.id], r.record.restart_count)
            hb.add_metric([r.id], r.last_heartbeat)
            point = self.agents.history.latest(r.id) if self.agents else None
            if point is not None:
                cpu.add_metric([r.id], point.cpu)
                rss.add_metric([r.id], point.memory_rss)
            for (name, labels), value in r.custom_metrics.items():
                custom.add_metric([r.id, name, ",".join(f"{k}={v}" for k, v in labels)], value)
        refused = counter(
            "fleet_daemon_connections_refused",
            "Connections closed as soon as accepted: a connection cap was reached",
            ["port", "reason"],
        )
        for server in (self._control, self._local, self._http):
            if server is not None:
                for reason, n in sorted(server.conns.counts.items()):
                    refused.add_metric([server.conns.name, reason], n)
        yield refused
        rpcs = counter("fleet_daemon_rpc", "DaemonService calls served", ["method", "code"])
        for (method, code), n in sorted(self._rpc_counts.items()):
            rpcs.add_metric([method, code], n)
        yield from (states, up, restarts, hb, cpu, rss, custom, rpcs)
        if self._control_service is not None:
            followers = gauge("fleet_daemon_log_followers", "FollowAgentLog streams open")
            followers.add_metric([], self._control_service.followers)
            yield followers
        if self.outbox is not None:
            pending = gauge("fleet_daemon_outbox_reports", "Metric reports waiting for the Manager")
            pending.add_metric([], len(self.outbox))
            dropped = counter(
                "fleet_daemon_outbox_dropped", "Metric reports dropped because the outbox was full"
            )
            dropped.add_metric([], self.outbox.dropped)
            yield from (pending, dropped)
        if self.manager is not None:
            connected = gauge("fleet_daemon_manager_connected", "1 while the Manager answers")
            connected.add_metric([], 1.0 if self.manager.connected else 0.0)
            regs = counter("fleet_daemon_registrations", "Successful RegisterNode calls")
            regs.add_metric([], self.manager.registrations)
            yield from (connected, regs)
            yield from _manager_link_metrics(self.manager)


def _manager_link_metrics(manager: ManagerClient) -> Iterable[Metric]:
    """Which Manager the Daemon talks to (or tries), and how often it moved."""
    info = gauge(
        "fleet_daemon_manager_info",
        "The Manager endpoint in use or being tried (address), and the manager.address "
        "entry it comes from (configured); always 1",
        ["address", "configured"],
    )
    endpoint = manager.endpoint
    if endpoint is not None:
        info.add_metric([endpoint.address, endpoint.source], 1.0)
    switches = counter("fleet_daemon_manager_switches", "Moves from one Manager address to another")
    switches.add_metric([], manager.switches)
    took = gauge(
        "fleet_daemon_manager_switch_seconds",
        "From losing a Manager to the first answer of the next one, at the last switch",
    )
    took.add_metric([], manager.last_switch_seconds)
    yield from (info, switches, took)


def _bound_port(server: HardenedServer) -> int:
    listener = server._server
    sockets = listener.sockets if isinstance(listener, asyncio.Server) else ()
    return int(sockets[0].getsockname()[1]) if sockets else 0


def _advertise(host: str, port: int, ip: str) -> str:
    if host in ("", "0.0.0.0", "::"):
        host = ip
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
