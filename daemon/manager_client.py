"""The Daemon's side of ManagerService: register, heartbeat, metrics, agent states.

Four tasks share one grpclib channel:

* **link** registers (with the host's facts, our DaemonService address and a random
  instance id), then heartbeats every ``heartbeat_interval``. A ``NOT_FOUND`` heartbeat
  (the Manager forgot us) registers again at once. A Manager that cannot be reached
  (``UNAVAILABLE``, a deadline, a dropped or refused connection, a failed handshake) is
  left for the next address of ``manager.address`` (:mod:`daemon.manager_addresses`);
  every attempt after a failure waits for gRPC's backoff (1 s, ×1.6, ±20 %, capped by
  ``reconnect_interval``) — the Daemon never exits because the Manager is away. Moving
  to another Manager does not register again: the Managers share one database, so the
  next heartbeat goes there, and only a ``NOT_FOUND`` answer brings a ``RegisterNode``.
  A refusal (the Manager answered no) stays on the same address and registers again.
  A heartbeat falls due every ``heartbeat_interval``; one is **skipped** when, within the
  interval before it fell due, the Manager acknowledged a report or sync *and said it
  counted as this node's liveness* (``liveness = true`` in its answer: the report came
  on the connection this instance heartbeated or registered on, see
  manager/services/manager_service.py). At most ``heartbeat_max_skip`` are skipped in a
  row, so a real heartbeat — the instance id that detects a replaced Daemon, the
  revocation list's version in its answer — goes at least every ``1 + heartbeat_max_skip``
  intervals; a Manager that never says ``liveness`` (a seed one) gets every heartbeat,
  and when reports fail or stop counting the heartbeats resume at the next due time.
  Skipping follows a fixed grid (due times do not move with the reports): reports at
  a multiple of the heartbeat interval would otherwise lock onto the heartbeats' phase
  and never replace one. The liveness signals are then at most two intervals apart.
* **metrics** samples host metrics every ``metrics_interval`` into the on-disk outbox.
* **sender** drains the outbox oldest-first whenever the Manager is reachable. A report
  leaves the outbox only once a Manager acknowledged it, so the reports queued or in
  flight when a Manager dies go to the next one (the Managers keep one row per node,
  type and timestamp, so a report resent after a lost answer is not stored twice).
* **sync** pushes the full agent list on every change (coalesced), on every reconnect and
  every ``sync_interval``; agent states are never queued, only the latest is sent. Each
  full sync carries the state of every central spec too.

New labels (a reload changed them) are sent by registering again at once.

A Manager that sheds load answers with a hint, ``retry in N s`` (``common/overload.py``),
and every call honours it: the hint plus up to 20 % jitter is waited and the same thing
is sent again, on the same link. A refused heartbeat neither registers again nor leaves
the Manager (a busy Manager is not a dead one, and a re-register storm is the last thing
it needs); a refused sync stays wanted; a refused report stays in the outbox; a
``RegisterNode`` refused ``UNAVAILABLE`` with a hint waits at least the hint before the
next address. These refusals are counted per method (``shed``) and logged at most every
30 s.

Every heartbeat answer's ``revocations_version`` goes to ``on_revocations_version``
(:mod:`daemon.revocations` fetches the list when it changed). :meth:`renew_certificate`
and :meth:`get_revocations` are calls on the current link for the Daemon's other parts;
after a certificate renewal :meth:`reconnect` makes the link task open a fresh channel to
the same Manager, so the next calls present the new certificate.

Every call carries ``manager.timeout`` as its deadline. All four tasks use the current
:class:`_Link` (one channel to one Manager); only the link task replaces it, and a
failure seen on a link that was already replaced is not held against the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
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

from .config import ManagerSettings
from .hostinfo import HostFacts, HostMetrics
from .manager_addresses import Endpoint, ManagerAddresses, Resolver
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


class NoAddressError(Exception):
    """No address of ``manager.address`` resolves (yet)."""


class NotConnectedError(Exception):
    """A call for another part of the Daemon while no Manager answers."""


@dataclass(eq=False)
class _Link:
    """One channel to one Manager endpoint; replaced (and closed) on a switch."""

    endpoint: Endpoint
    channel: Channel
    stub: manager_pb.ManagerServiceStub


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
        resolve: Resolver | None = None,
        on_revocations_version: Callable[[int], None] = lambda _version: None,
    ) -> None:
        self._settings = settings
        self._addresses = ManagerAddresses(
            configured=settings.addresses,
            start_key=node.node_id,
            timeout=settings.timeout,
            resolve=resolve,
        )
        self._node = node
        self._instance_id = node.instance_id or new_instance_id()
        self._ssl = ssl_context
        self._outbox = outbox
        self._host_metrics = host_metrics
        self._agent_states = agent_states
        self._spec_states = spec_states
        self._reregister = False
        self._on_revocations_version = on_revocations_version
        self._fresh_channel = False  # reconnect() asked for a new channel
        self._link: _Link | None = None
        self._lost_at = 0.0  # monotonic time the last working link failed (0: none)
        self._lost_from: Endpoint | None = None
        self._lookup_errors: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._connected = asyncio.Event()
        self._wake_link = asyncio.Event()
        self._outbox_ready = asyncio.Event()
        self._sync_wanted = asyncio.Event()
        self._closing = False
        self.registrations = 0
        self.reports_sent = 0
        self.heartbeats_sent = 0
        self.heartbeats_skipped = 0  # due, but a report or sync counted as liveness
        # monotonic time of the last report or sync acknowledged on the current link with
        # liveness = true (None: none yet on this link)
        self._liveness_at: float | None = None
        self.last_contact = 0.0
        self.last_error = ""
        self.switches = 0  # moves from one Manager endpoint to another
        self.last_switch_seconds = 0.0  # from losing a Manager to reaching the next
        self.shed: dict[str, int] = {}  # calls the Manager refused with a retry hint
        self._shed_unlogged: dict[str, int] = {}  # of those, not logged yet
        self._shed_logged: float | None = None  # monotonic time of the last such line

    # ---- lifecycle ----

    async def start(self) -> None:
        if self._tasks:
            raise RuntimeError("ManagerClient already started")
        if not self._addresses.needs_lookup:  # IP addresses only: the link is known now
            self._use(await self._addresses.resolve())
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
        if self._link is not None:
            self._link.channel.close()

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

    @property
    def _stub(self) -> manager_pb.ManagerServiceStub | None:
        """The current link's stub (tests wrap its methods to watch the calls)."""
        return self._link.stub if self._link is not None else None

    @property
    def endpoint(self) -> Endpoint | None:
        """The Manager endpoint in use (or being tried); None until an address resolves."""
        return self._link.endpoint if self._link is not None else None

    def request_sync(self) -> None:
        """Push the agent list soon (called on every agent state change)."""
        self._sync_wanted.set()

    def update_labels(self, labels: Mapping[str, str]) -> None:
        """New labels (after a reload): register again at once so the Manager has them."""
        self._node = replace(self._node, labels=dict(labels))
        self._reregister = True
        self._wake_link.set()

    def reconnect(self) -> None:
        """Open a new channel to the same Manager soon (after the node certificate changed:
        new handshakes present the new one). Calls in flight on the old channel are
        ended and retried on the new one, as after a switch between Managers."""
        self._fresh_channel = True
        self._wake_link.set()

    def _connected_link(self) -> _Link:
        link = self._link
        if link is None or not self._connected.is_set():
            raise NotConnectedError("no Manager answers at the moment")
        return link

    async def renew_certificate(self, csr_pem: str) -> manager_pb.RenewCertificateResponse:
        """``RenewCertificate`` on the current Manager (:class:`NotConnectedError` if none)."""
        link = self._connected_link()
        return await link.stub.renew_certificate(
            manager_pb.RenewCertificateRequest(csr_pem=csr_pem), timeout=self._settings.timeout
        )

    async def get_revocations(self, known_version: int) -> manager_pb.GetRevocationsResponse:
        """``GetRevocations`` on the current Manager (:class:`NotConnectedError` if none)."""
        link = self._connected_link()
        return await link.stub.get_revocations(
            manager_pb.GetRevocationsRequest(known_version=known_version),
            timeout=self._settings.timeout,
        )

    def _full_sync(self) -> manager_pb.SyncAgentStatesRequest:
        return manager_pb.SyncAgentStatesRequest(
            node_id=self._node.node_id,
            states=list(self._agent_states()),
            full=True,
            specs=list(self._spec_states()),
        )

    async def flush_states(self, *, timeout: float) -> None:
        """Best effort at shutdown: tell the Manager the agents' final states."""
        link = self._link
        if link is None or not self._connected.is_set():
            return
        request = self._full_sync()
        try:
            await link.stub.sync_agent_states(request, timeout=min(timeout, self._settings.timeout))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("could not send final agent states: %s", _describe(exc))

    async def say_goodbye(self, reason: str, *, timeout: float) -> bool:
        """Best effort at a clean stop: ``Leave``, so the node shows "stopped" at once
        instead of going offline after the grace. False when the Manager could not be
        told (it then finds out through the grace, as for a crash)."""
        link = self._link
        if link is None or not self._connected.is_set():
            return False
        try:
            await link.stub.leave(
                manager_pb.LeaveRequest(
                    node_id=self._node.node_id, instance_id=self._instance_id, reason=reason
                ),
                timeout=min(timeout, self._settings.timeout),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a seed Manager (UNIMPLEMENTED), or gone
            log.info("could not tell the Manager this Daemon is stopping: %s", _describe(exc))
            return False
        log.info("told the Manager at %s this Daemon is stopping", link.endpoint)
        return True

    # ---- internals ----

    def _lost(self, reason: str, link: _Link | None, *, quiet: bool = False) -> None:
        """A call on ``link`` failed as if the Manager were gone: let the link task look.

        Ignored for a link already replaced (its calls fail when it is closed). ``quiet``:
        the link task itself, which logs the failure its own way."""
        if link is not self._link:
            return
        if self._connected.is_set():
            if not quiet:
                log.info("lost the Manager at %s: %s", link.endpoint if link else "?", reason)
            self._lost_at = time.monotonic()
            self._lost_from = link.endpoint if link else None
        self.last_error = reason
        self._connected.clear()
        self._wake_link.set()

    def _up(self, link: _Link) -> None:
        if link is not self._link:
            return
        self.last_contact = time.time()
        if not self._connected.is_set():
            self._connected.set()
            self._sync_wanted.set()
            self._outbox_ready.set()
            if self._lost_at and self._lost_from != link.endpoint:
                self.last_switch_seconds = time.monotonic() - self._lost_at
                log.info(
                    "now talking to the Manager at %s, %.1fs after losing %s",
                    link.endpoint,
                    self.last_switch_seconds,
                    self._lost_from,
                )
            self._lost_at, self._lost_from = 0.0, None

    def _use(self, endpoint: Endpoint | None, *, fresh: bool = False) -> _Link | None:
        """Dial ``endpoint`` from now on (closing the old channel aborts its calls);
        ``fresh``: a new channel even to the endpoint in use."""
        old = self._link
        if old is not None and endpoint == old.endpoint and not fresh:
            return old
        self._liveness_at = None  # counted by the old Manager, not by this one
        if endpoint is None:
            self._link = None
        else:
            channel = Channel(endpoint.host, endpoint.port, ssl=self._ssl)
            self._link = _Link(endpoint, channel, manager_pb.ManagerServiceStub(channel))
        if old is not None:
            old.channel.close()
        return self._link

    async def _register(self, link: _Link) -> None:
        n, f = self._node, self._node.facts
        reply = await link.stub.register_node(
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
        if self._link is None:
            self._use(await self._addresses.resolve())
            self._log_lookup_errors()
        while True:
            if self._reregister:
                self._reregister = False
                must_register = True
            if self._fresh_channel:
                self._fresh_channel = False
                if self._link is not None:
                    log.info("reconnecting to the Manager at %s", self._link.endpoint)
                    self._use(self._link.endpoint, fresh=True)
            link = self._link
            try:
                if link is None:
                    raise NoAddressError("; ".join(self._addresses.errors) or "no address")
                if must_register:
                    await self._register(link)
                    must_register = False
                    log.info(
                        "registered node %s with the Manager at %s",
                        self._node.node_id,
                        link.endpoint,
                    )
                else:
                    beat = await link.stub.heartbeat(
                        manager_pb.HeartbeatRequest(
                            node_id=self._node.node_id,
                            timestamp=int(time.time()),
                            instance_id=self._instance_id,
                        ),
                        timeout=self._settings.timeout,
                    )
                    if not beat.success:
                        raise RefusedError(f"Heartbeat refused: {beat.message or 'no reason'}")
                    self.heartbeats_sent += 1
                    self._on_revocations_version(beat.revocations_version)
                self._up(link)
                self._addresses.succeeded()
                backoff.reset()
                self._wake_link.clear()
                if self._reregister or self._fresh_channel:
                    continue  # labels or the certificate changed while we were talking
                await self._until_heartbeat_due()
            except asyncio.CancelledError:
                raise
            except GRPCError as exc:
                hinted = throttle_delay(exc)
                if hinted is not None and link is not None:
                    # Busy, not gone: the same call on the same link once the hint passed
                    # (a heartbeat refused stays a heartbeat: no RegisterNode, no switch).
                    call = "RegisterNode" if must_register else "Heartbeat"
                    self._note_shed(call, link, _describe(exc), hinted, "keeping the link")
                    await asyncio.sleep(hinted)
                    continue
                if exc.status is Status.NOT_FOUND and not must_register:
                    log.info(
                        "the Manager at %s does not know node %s: registering again",
                        link.endpoint if link else "?",
                        self._node.node_id,
                    )
                    must_register = True
                    continue
                if exc.status in _UNREACHABLE:
                    await self._next_manager(
                        backoff, link, _describe(exc), at_least=busy_delay(exc)
                    )
                else:
                    await self._fail(backoff, link, _describe(exc), refused=exc.status in _REFUSALS)
                    must_register = True
            except RefusedError as exc:
                await self._fail(backoff, link, str(exc))
                must_register = True
            except Exception as exc:
                # Refused or dropped connections, failed handshakes (a server that is not
                # a Manager of our CA included), name lookups: try the next address.
                await self._next_manager(backoff, link, _describe(exc))

    async def _until_heartbeat_due(self) -> None:
        """Wait for the next heartbeat that must really be sent (see the module doc):
        every ``heartbeat_interval``, skipping those due within an interval of a report
        or sync counted as liveness, at most ``heartbeat_max_skip`` in a row. Returns at
        once when the link task is woken."""
        interval = self._settings.heartbeat_interval
        skipped = 0
        while True:
            await _wait(self._wake_link, interval)
            counted = self._liveness_at
            if (
                self._wake_link.is_set()
                or skipped >= self._settings.heartbeat_max_skip
                or not self._connected.is_set()
                or counted is None
                or time.monotonic() - counted >= interval
            ):
                return
            skipped += 1
            self.heartbeats_skipped += 1

    def _counted_as_liveness(self, link: _Link, counted: bool) -> None:
        """A report or sync acknowledged on ``link``; ``counted``: as liveness too."""
        if counted and link is self._link:
            self._liveness_at = time.monotonic()

    async def _next_manager(
        self, backoff: Backoff, link: _Link | None, reason: str, *, at_least: float | None = None
    ) -> None:
        """``link``'s Manager cannot be reached: move to the next address, after backoff.

        One line per attempt: ``Manager A unavailable (why); switching to B in 1.1s``, or
        with one address ``Manager at A unreachable (why); retrying in 1.1s``. A node
        registered stays registered: the next heartbeat goes to the next Manager.
        ``at_least``: the Manager said it is busy and when to come back (``busy_delay``);
        the wait is never shorter, so a busy Manager is not asked again before then."""
        delay = backoff.next_delay()
        if at_least is not None:
            delay = max(delay, at_least)
        failed = link.endpoint if link is not None else None
        following = await self._addresses.advance()
        self._log_lookup_errors()
        self._lost(reason, link, quiet=True)
        self._use(following)
        if following is None:
            log.warning(
                "no Manager address resolves (%s); retrying in %.1fs",
                "; ".join(self._addresses.errors) or reason,
                delay,
            )
        elif failed is None:
            log.info("trying the Manager at %s in %.1fs", following, delay)
        elif following == failed:
            log.warning(
                "Manager at %s unreachable (%s); retrying in %.1fs",
                following,
                reason,
                delay,
            )
        else:
            self.switches += 1
            log.warning(
                "Manager %s unavailable (%s); switching to %s in %.1fs",
                failed,
                reason,
                following,
                delay,
            )
        await asyncio.sleep(delay)

    def _log_lookup_errors(self) -> None:
        """Names that do not resolve (while others do): logged when that changes."""
        errors = self._addresses.errors if self._addresses.endpoints else []
        if errors != self._lookup_errors:
            for error in errors:
                log.warning("manager.address: %s (trying the other addresses)", error)
            self._lookup_errors = list(errors)

    async def _fail(
        self, backoff: Backoff, link: _Link | None, reason: str, *, refused: bool = False
    ) -> None:
        """The Manager answered, but not as it should: the same address, after backoff."""
        self._lost(reason, link, quiet=True)
        delay = backoff.next_delay()
        where = link.endpoint if link is not None else self._settings.address
        if refused:
            # Reached, but it said no: retrying will not help until the config is fixed.
            log.error(
                "the Manager at %s refuses node %s (%s) — check node_id and the node "
                "certificate (manager.tls.cert_file); retrying in %.1fs",
                where,
                self._node.node_id,
                reason,
                delay,
            )
        else:
            log.warning("the Manager at %s failed (%s); retrying in %.1fs", where, reason, delay)
        await asyncio.sleep(delay)

    def _note_shed(self, method: str, link: _Link, reason: str, delay: float, keeping: str) -> None:
        """The Manager refused ``method`` for now, saying when to come back: counted, and
        logged at most every ``_SHED_LOG_EVERY`` seconds (with what was refused since), so
        an operator sees a busy Manager without a line per refusal."""
        self.shed[method] = self.shed.get(method, 0) + 1
        now = time.monotonic()
        if self._shed_logged is not None and now - self._shed_logged < _SHED_LOG_EVERY:
            self._shed_unlogged[method] = self._shed_unlogged.get(method, 0) + 1
            return
        since = ", ".join(f"{n} {m}" for m, n in sorted(self._shed_unlogged.items()))
        self._shed_unlogged.clear()
        self._shed_logged = now
        log.warning(
            "the Manager at %s refused %s for now (%s): %s, next try in %.1fs%s",
            link.endpoint,
            method,
            reason,
            keeping,
            delay,
            f" (also refused since the last such line: {since})" if since else "",
        )

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
                log.debug(
                    "queued metrics report %d: %d samples at %s",
                    self._outbox.newest,
                    len(metrics),
                    metrics[0].timestamp if metrics else "-",
                )
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
            link = self._link
            if link is None:  # not while connected; but never spin on it
                await asyncio.sleep(min(1.0, self._settings.reconnect_interval))
                continue
            try:
                report = manager_pb.ReportMetricsRequest().parse(payload)
                reply = await link.stub.report_metrics(report, timeout=self._settings.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if link is not self._link:
                    # Sent to a Manager we have left since (closing its channel ended the
                    # call): the report is still queued, for the next one.
                    continue
                throttled = throttle_delay(exc)
                if throttled is not None:
                    # The Manager is busy, or this node over its metrics quota: the report
                    # is kept and sent once the hint has passed.
                    self._note_shed(
                        "ReportMetrics", link, _describe(exc), throttled, f"report {seq} kept"
                    )
                    await asyncio.sleep(throttled)
                elif isinstance(exc, GRPCError) and exc.status in _POISON:
                    log.error(
                        "the Manager refused queued report %d (%s): dropping it", seq, exc.message
                    )
                    self._outbox.remove(seq)
                elif _transient(exc):
                    self._lost(f"ReportMetrics: {_describe(exc)}", link)
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
            self._counted_as_liveness(link, reply.liveness)
            log.debug(
                "sent metrics report %d to %s (%d still queued)",
                seq,
                link.endpoint,
                len(self._outbox),
            )
            self._up(link)

    async def _sync_loop(self) -> None:
        while True:
            await self._connected.wait()
            await _wait(self._sync_wanted, self._settings.sync_interval)
            link = self._link
            if not self._connected.is_set() or link is None:
                continue
            self._sync_wanted.clear()
            request = self._full_sync()
            try:
                reply = await link.stub.sync_agent_states(request, timeout=self._settings.timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if link is not self._link:
                    self._sync_wanted.set()  # to the Manager we moved to
                elif (throttled := throttle_delay(exc)) is not None:
                    # Busy: the latest states go once the hint has passed.
                    self._sync_wanted.set()
                    self._note_shed("SyncAgentStates", link, _describe(exc), throttled, "sync kept")
                    await asyncio.sleep(throttled)
                elif _transient(exc):
                    self._sync_wanted.set()
                    self._lost(f"SyncAgentStates: {_describe(exc)}", link)
                    # Don't spin while the link loop re-establishes contact.
                    await asyncio.sleep(min(1.0, self._settings.reconnect_interval))
                else:
                    log.warning("SyncAgentStates refused: %s", _describe(exc))
            else:
                self._counted_as_liveness(link, reply.liveness)


_POISON = frozenset({Status.INVALID_ARGUMENT, Status.RESOURCE_EXHAUSTED})
# A RESOURCE_EXHAUSTED that says when to come back is a quota or a busy Manager, not a
# report too large.
_RETRY_HINT = re.compile(r"retry in (\d+(?:\.\d+)?) ?s\b")
# Refusals with a hint are logged at most this often (with the count in between).
_SHED_LOG_EVERY = 30.0


def throttle_delay(exc: BaseException) -> float | None:
    """Seconds to wait when ``exc`` is the Manager throttling us (``RESOURCE_EXHAUSTED``
    "… retry in N s": over a quota, or shedding load), with up to 20 % added so that
    throttled Daemons do not all come back at once; else None."""
    return _hinted_delay(exc, Status.RESOURCE_EXHAUSTED)


def busy_delay(exc: BaseException) -> float | None:
    """The same for ``UNAVAILABLE`` "server busy … retry in N s" (a busy RegisterNode:
    the Daemon waits at least this long before its next address); else None."""
    return _hinted_delay(exc, Status.UNAVAILABLE)


def _hinted_delay(exc: BaseException, status: Status) -> float | None:
    if not isinstance(exc, GRPCError) or exc.status != status:
        return None
    match = _RETRY_HINT.search(exc.message or "")
    if match is None:
        return None
    return float(match.group(1)) * (1.0 + 0.2 * random.random())


_REFUSALS = frozenset({Status.PERMISSION_DENIED, Status.UNAUTHENTICATED})
# The Manager at this address cannot serve us now: try the next address.
_UNREACHABLE = frozenset(
    {Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.CANCELLED, Status.UNKNOWN}
)
_TRANSIENT = frozenset(
    {
        Status.UNAVAILABLE,
        Status.DEADLINE_EXCEEDED,
        Status.CANCELLED,
        Status.UNKNOWN,
        Status.NOT_FOUND,
    }
)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """``event.wait()`` for at most ``seconds``.

    Not ``asyncio.wait_for``: before Python 3.12 it returns normally when the cancellation
    arrives just as the event is set (gh-86296), and the task, its cancellation lost,
    would outlive ``close()`` — a stop that hung until the next interval, or forever.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def _transient(exc: BaseException) -> bool:
    """A failure of the link (retry after reconnecting) rather than a refusal."""
    return not isinstance(exc, GRPCError) or exc.status in _TRANSIENT


def _describe(exc: BaseException) -> str:
    if isinstance(exc, GRPCError):
        return f"{exc.status.name}: {exc.message}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
