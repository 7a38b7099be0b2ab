"""The Daemon's side of ManagerService: register, heartbeat, metrics, agent states.

Four tasks share one grpclib channel:

* **link** registers (with the host's facts, our DaemonService address and a random
  instance id), then heartbeats every ``heartbeat_interval``. A ``NOT_FOUND`` heartbeat
  (the Manager forgot us) registers again at once; any other failure marks the Manager
  unreachable and retries with gRPC's backoff (1 s, ×1.6, ±20 %, capped by
  ``reconnect_interval``) — the Daemon never exits because the Manager is away.
* **metrics** samples host metrics every ``metrics_interval`` into the on-disk outbox.
* **sender** drains the outbox oldest-first whenever the Manager is reachable.
* **sync** pushes the full agent list on every change (coalesced), on every reconnect and
  every ``sync_interval``; agent states are never queued, only the latest is sent. Each
  full sync carries the state of every central spec too.

New labels (a reload changed them) are sent by registering again at once.

Every call carries ``manager.timeout`` as its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from common.backoff import Backoff
from schema import manager_pb

from .config import ManagerSettings, split_hostport
from .hostinfo import HostFacts, HostMetrics
from .outbox import Outbox

log = logging.getLogger(__name__)

StatesProvider = Callable[[], Sequence[manager_pb.AgentState]]
SpecStatesProvider = Callable[[], Sequence[manager_pb.SpecState]]


@dataclass(frozen=True)
class NodeIdentity:
    """What we tell the Manager about ourselves at registration."""

    node_id: str
    labels: dict[str, str]
    facts: HostFacts
    daemon_address: str
    instance_id: str = ""


class RefusedError(Exception):
    """The Manager answered but said no (``success = false``)."""


def new_instance_id() -> str:
    return uuid.uuid4().hex


class ManagerClient:
    """Keeps this node registered and reporting; see the module docstring."""

    def __init__(
        self,
        *,
        settings: ManagerSettings,
        node: NodeIdentity,
        ssl_context: ssl.SSLContext | None,
        outbox: Outbox,
        host_metrics: HostMetrics,
        agent_states: StatesProvider,
        spec_states: SpecStatesProvider = lambda: (),
    ) -> None:
        self._settings = settings
        self._node = node
        self._instance_id = node.instance_id or new_instance_id()
        self._ssl = ssl_context
        self._outbox = outbox
        self._host_metrics = host_metrics
        self._agent_states = agent_states
        self._spec_states = spec_states
        self._reregister = False
        self._channel: Channel | None = None
        self._stub: manager_pb.ManagerServiceStub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        self._wake_link = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self._sync_wanted = asyncio.Event()
        self._closing = False
        self.registrations = 0
        self.reports_sent = 0
        self.last_contact = 0.0
        self.last_error = ""

    # ---- lifecycle ----

    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError("ManagerClient already started")
        host, port = split_hostport(self._settings.address)
        self._channel = Channel(host, port, ssl=self._ssl)
        self._stub = manager_pb.ManagerServiceStub(self._channel)
        self._tasks = [
            asyncio.create_task(self._link_loop(), name="manager-link"),
            asyncio.create_task(self._metrics_loop(), name="manager-metrics"),
            asyncio.create_task(self._sender_loop(), name="manager-sender"),
            asyncio.create_task(self._sync_loop(), name="manager-sync"),
        ]

    def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()

    async def wait_closed(self) -> None:
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._channel is not None:
            self._channel.close()

    async def __aenter__(self) -> ManagerClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # ---- public ----

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def request_sync(self) -> None:
        """Push the agent list soon (called on every agent state change)."""
        self._sync_wanted.set()

    def update_labels(self, labels: Mapping[str, str]) -> None:
        """New labels (after a reload): register again at once so the Manager has them."""
        self._node = replace(self._node, labels=dict(labels))
        self._reregister = True
        self._wake_link.set()

    def _full_sync(self) -> manager_pb.SyncAgentStatesRequest:
        return manager_pb.SyncAgentStatesRequest(
            node_id=self._node.node_id,
            states=list(self._agent_states()),
            full=True,
            specs=list(self._spec_states()),
        )

    async def flush_states(self, *, timeout: float) -> None:
        """Best effort at shutdown: tell the Manager the agents' final states."""
        if self._stub is None or not self._connected.is_set():
            return
        request = self._full_sync()
        try:
            await self._stub.sync_agent_states(
                request, timeout=min(timeout, self._settings.timeout)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("could not send final agent states: %s", _describe(exc))

    # ---- internals ----

    def _lost(self, reason: str) -> None:
        if self._connected.is_set():
            log.warning("lost the Manager at %s: %s", self._settings.address, reason)
        self.last_error = reason
        self._connected.clear()
        self._wake_link.set()

    def _up(self) -> None:
        self.last_contact = time.time()
        if not self._connected.is_set():
            self._connected.set()
            self._sync_wanted.set()
            self._outbox_ready.set()

    async def _register(self) -> None:
        assert self._stub is not None
        n, f = self._node, self._node.facts
        reply = await self._stub.register_node(
            manager_pb.RegisterNodeRequest(
                node_id=n.node_id,
                hostname=f.hostname,
                ip=f.ip,
                os=f.os,
                arch=f.arch,
                labels=dict(n.labels),
                daemon_version=f.daemon_version,
                agent_version=f.daemon_version,
                daemon_address=n.daemon_address,
                heartbeat_interval_seconds=max(1, round(self._settings.heartbeat_interval)),
                instance_id=self._instance_id,
            ),
            timeout=self._settings.timeout,
        )
        if not reply.success:
            raise RefusedError(f"RegisterNode refused: {reply.message or 'no reason given'}")
        self.registrations += 1

    def _new_backoff(self) -> Backoff:
        reconnect = self._settings.reconnect_interval
        return Backoff(initial=min(1.0, reconnect), maximum=reconnect)

    async def _link_loop(self) -> None:
        backoff = self._new_backoff()
        must_register = True
        while True:
            if self._reregister:
                self._reregister = False
                must_register = True
            try:
                if must_register:
                    await self._register()
                    must_register = False
                    log.info(
                        "registered node %s with the Manager at %s",
                        self._node.node_id,
                        self._settings.address,
                    )
                else:
                    assert self._stub is not None
                    beat = await self._stub.heartbeat(
                        manager_pb.HeartbeatRequest(
                            node_id=self._node.node_id,
                            timestamp=int(time.time()),
                            instance_id=self._instance_id,
                        ),
                        timeout=self._settings.timeout,
                    )
                    if not beat.success:
                        raise RefusedError(f"Heartbeat refused: {beat.message or 'no reason'}")
                self._up()
                backoff.reset()
                self._wake_link.clear()
                if self._reregister:
                    continue  # labels changed while we were talking
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake_link.wait(), self._settings.heartbeat_interval
                    )
            except asyncio.CancelledError:
                raise
            except GRPCError as exc:
                if exc.status is Status.NOT_FOUND and not must_register:
                    log.info(
                        "the Manager does not know node %s: registering again", self._node.node_id
                    )
                    must_register = True
                    continue
                await self._fail(backoff, _describe(exc), refused=exc.status in _REFUSALS)
                must_register = True
            except Exception as exc:
                await self._fail(backoff, _describe(exc))
                must_register = True

    async def _fail(self, backoff: Backoff, reason: str, *, refused: bool = False) -> None:
        self._lost(reason)
        delay = backoff.next_delay()
        if refused:
            # Reached, but it said no: retrying will not help until the config is fixed.
            log.error(
                "the Manager at %s refuses node %s (%s) — check node_id and the node "
                "certificate (manager.tls.cert_file); retrying in %.1fs",
                self._settings.address,
                self._node.node_id,
                reason,
                delay,
            )
        else:
            log.warning(
                "Manager at %s unreachable (%s); retrying in %.1fs",
                self._settings.address,
                reason,
                delay,
            )
        await asyncio.sleep(delay)

    async def _metrics_loop(self) -> None:
        lost, lost_logged = 0, 0.0  # reports that could not be queued (full disk)
        while True:
            await asyncio.sleep(self._settings.metrics_interval)
            try:
                metrics = await asyncio.to_thread(self._host_metrics.sample)
                report = manager_pb.ReportMetricsRequest(
                    node_id=self._node.node_id, metrics=metrics
                )
                self._outbox.put(bytes(report))
                self._outbox_ready.set()
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                # The outbox is on disk: a full or read-only state directory loses this
                # report. One line a minute while it lasts, not a traceback per sample.
                lost += 1
                now = time.monotonic()
                if lost == 1 or now - lost_logged >= 60:
                    log.error("cannot queue a metrics report (%d lost so far): %s", lost, exc)
                    lost_logged = now
            except Exception:
                log.exception("sampling host metrics failed")

    async def _sender_loop(self) -> None:
        assert self._stub is not None
        # Its own backoff: a Manager that answers heartbeats but fails reports (say, its
        # database is down) must not be hammered in a tight lost/up loop.
        retry = self._new_backoff()
        while True:
            await self._connected.wait()
            self._outbox_ready.clear()
            item = self._outbox.peek()
            if item is None:
                await self._outbox_ready.wait()
                continue
            seq, payload = item
            try:
                report = manager_pb.ReportMetricsRequest().parse(payload)
                await self._stub.report_metrics(report, timeout=self._settings.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, GRPCError) and exc.status in _POISON:
                    log.error(
                        "the Manager refused queued report %d (%s): dropping it", seq, exc.message
                    )
                    self._outbox.remove(seq)
                elif _transient(exc):
                    self._lost(f"ReportMetrics: {_describe(exc)}")
                    await asyncio.sleep(retry.next_delay())
                else:
                    log.warning(
                        "ReportMetrics failed (%s); keeping the report queued", _describe(exc)
                    )
                    await asyncio.sleep(self._settings.reconnect_interval)
                continue
            retry.reset()
            self._outbox.remove(seq)
            self.reports_sent += 1
            log.debug("sent metrics report %d (%d still queued)", seq, len(self._outbox))
            self._up()

    async def _sync_loop(self) -> None:
        assert self._stub is not None
        while True:
            await self._connected.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sync_wanted.wait(), self._settings.sync_interval)
            if not self._connected.is_set():
                continue
            self._sync_wanted.clear()
            request = self._full_sync()
            try:
                await self._stub.sync_agent_states(request, timeout=self._settings.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _transient(exc):
                    self._sync_wanted.set()
                    self._lost(f"SyncAgentStates: {_describe(exc)}")
                    # Don't spin while the link loop re-establishes contact.
                    await asyncio.sleep(min(1.0, self._settings.reconnect_interval))
                else:
                    log.warning("SyncAgentStates refused: %s", _describe(exc))


_POISON = frozenset({Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED})
_REFUSALS = frozenset({Status.PERMISSION_DENIED, Status.UNAUTHENTICATED})
_TRANSIENT = frozenset(
    {
        Status.UNAVAILABLE,
        Status.DEADLINE_EXCEEDED,
        Status.CANCELLED,
        Status.UNKNOWN,
        Status.NOT_FOUND,
    }
)


def _transient(exc: BaseException) -> bool:
    """A failure of the link (retry after reconnecting) rather than a refusal."""
    return not isinstance(exc, GRPCError) or exc.status in _TRANSIENT


def _describe(exc: BaseException) -> str:
    if isinstance(exc, GRPCError):
        return f"{exc.status.name}: {exc.message}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
