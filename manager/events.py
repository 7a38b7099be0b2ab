"""Agent event history: what happened to each agent, and who asked (issue 13 item 1).

Derived from synced states. When a SyncAgentStates changes a node's stored agents, the
Store (manager/store/store.py) hands :meth:`EventRecorder.derive` the node's agents as
stored before the sync — the rows it reads for the upsert anyway, inside the same
transaction, so the comparison is right across Manager restarts and several Managers —
and writes the events with one bulk INSERT in that transaction. A sync that changes
nothing costs nothing more. Per agent, comparing the stored state with the new one:

* ``started``: it entered RUNNING (or runs with another pid), message "started (pid N)";
* ``exited``: it entered EXITED or BACKOFF; the message is the Daemon's reason, e.g.
  "exited with code 3; restarting in 0.2s", "killed by signal 9";
* ``fatal``: it entered FATAL (the Daemon gave up), with the reason;
* ``restarted``: its restart_count rose (a crash restart by its Daemon), "crash restart N";
* ``status``: any other change of status, "STOPPING -> STOPPED: stopped by request";
* ``added`` / ``removed``: it appeared, or a full sync no longer lists it.

Recorded for operations the Manager relayed (AdminService): ``operation`` (OperateAgent:
"restart by admin/alice: ok"), ``config`` (PushUpdate, with the version), ``reload``
(ReloadDaemon, a node event: agent_id ""), each with ``actor`` = the admin identity.

Bounded: at most ``quota`` derived events per agent per ``window`` (a token bucket, in
memory, per Manager). Past it, events are counted, not written; the next event written
for that agent is preceded by a ``suppressed`` event "N more events not recorded: over
the quota of Q per W". A crash-looping agent thus writes at most about Q rows a window.
Operations are not counted against the quota. Retention: ``events.retention``
(manager/retention.py), as for node events.

Publish hook (for following: WatchEvents). :meth:`EventRecorder.subscribe` registers a
callback ``callback(row: EventRow) -> None``; it is called on the event loop, once per
event, after the event's transaction committed, in id order within one write, with the
committed row (its ``id`` is the table's, increasing). It must not block or await
anything (e.g. ``queue.put_nowait``); an exception it raises is logged and ignored.
``subscribe`` returns a function that removes the callback. Node status events, which
the Store writes to ``fleet_node_event`` (registration, heartbeat flushes, liveness
sweeps, Leave), are published here too once committed, shaped as ListEvents merges them
in (kind "status", agent_id ""): their ids are that table's own sequence, increasing
too, but not comparable with agent events' ids.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from common.durations import format_duration
from common.errors import FleetError
from common.ratelimit import TokenBuckets

from .metrics import ManagerMetrics
from .store import AgentRecord
from .store.events import (
    ADDED,
    CONFIG,
    EXITED,
    FATAL,
    OPERATION,
    RELOAD,
    REMOVED,
    RESTARTED,
    STARTED,
    STATUS,
    SUPPRESSED,
    EventRow,
    EventStore,
    NewEvent,
)

log = logging.getLogger(__name__)

__all__ = [
    "AgentEventQuota",
    "EventRecorder",
    "EventRow",
    "derive_agent_events",
    "exit_message",
]

RUNNING = "RUNNING"
FATAL_STATUS = "FATAL"
_EXIT_STATUSES = frozenset({"EXITED", "BACKOFF"})
_EARLY = "exited within start_seconds: "
_MAX_DROPPED_KEYS = 100_000

Subscriber = Callable[[EventRow], None]


def exit_message(reason: str) -> str:
    """The Daemon's reason for an exit as an operator reads it: "exit code 3; …" becomes
    "exited with code 3; …" (within start_seconds said after the code)."""
    early = reason.startswith(_EARLY)
    if early:
        reason = reason[len(_EARLY) :]
    if reason.startswith("exit code "):
        reason = "exited with code " + reason[len("exit code ") :]
    if early:
        head, sep, tail = reason.partition(";")
        reason = f"{head} within start_seconds{sep}{tail}"
    return reason or "exited"


def _agent_events(
    node_id: str, old: AgentRecord | None, new: AgentRecord, now: float
) -> list[NewEvent]:
    def event(kind: str, message: str) -> NewEvent:
        return NewEvent(
            now,
            node_id,
            new.agent_id,
            kind,
            message,
            old_status="" if old is None else old.status,
            new_status=new.status,
            pid=new.pid,
        )

    if old is None:
        pid = f" (pid {new.pid})" if new.pid else ""
        return [event(ADDED, f"added: {new.status}{pid}")]
    events: list[NewEvent] = []
    rise = new.restart_count - old.restart_count
    if rise < 0:  # the Daemon counts from 0 again (it restarted)
        rise = new.restart_count
    status_changed = new.status != old.status
    if status_changed and new.status == FATAL_STATUS:
        events.append(event(FATAL, exit_message(new.status_reason)))
    elif status_changed and new.status in _EXIT_STATUSES:
        events.append(event(EXITED, exit_message(new.status_reason)))
    if rise > 0:
        events.append(event(RESTARTED, f"crash restart {new.restart_count}"))
    if new.status == RUNNING and (status_changed or (new.pid and new.pid != old.pid)):
        message = f"started (pid {new.pid})" if new.pid else "started"
        if new.status_reason:
            message += f": {new.status_reason}"
        events.append(event(STARTED, message))
    elif status_changed and new.status not in _EXIT_STATUSES and new.status != FATAL_STATUS:
        message = f"{old.status} -> {new.status}"
        if new.status_reason:
            message += f": {new.status_reason}"
        events.append(event(STATUS, message))
    return events


def derive_agent_events(
    node_id: str,
    previous: Mapping[str, AgentRecord],
    states: Sequence[AgentRecord],
    full: bool,
    now: float,
) -> list[NewEvent]:
    """Every event one sync of ``node_id`` implies (module doc), without the quota."""
    events: list[NewEvent] = []
    for state in states:
        events.extend(_agent_events(node_id, previous.get(state.agent_id), state, now))
    if full:
        listed = {state.agent_id for state in states}
        for agent_id in sorted(set(previous) - listed):
            old = previous[agent_id]
            events.append(
                NewEvent(
                    now,
                    node_id,
                    agent_id,
                    REMOVED,
                    "no longer configured on the node",
                    old_status=old.status,
                )
            )
    return events


class AgentEventQuota:
    """At most ``events`` derived events per agent per ``window`` seconds (0: all)."""

    def __init__(
        self,
        *,
        events: int,
        window: float,
        metrics: ManagerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.events = events
        self.window = window
        self._clock = clock
        self._buckets = TokenBuckets(capacity=events, window=window) if events else None
        # (node, agent) -> events not recorded since the last one that was
        self._dropped: dict[tuple[str, str], int] = {}
        self._refused = metrics.quota_refusals.labels("agent_events") if metrics else None

    def describe(self) -> str:
        return f"{self.events} per {format_duration(self.window)}"

    def admit(self, events: Sequence[NewEvent]) -> list[NewEvent]:
        """The events to write: those within their agent's quota, each agent's first
        one after drops preceded by a ``suppressed`` summary."""
        if self._buckets is None:
            return list(events)
        now = self._clock()
        kept: list[NewEvent] = []
        for event in events:
            key = (event.node_id, event.agent_id)
            if self._buckets.take(key, 1, now):
                if len(self._dropped) < _MAX_DROPPED_KEYS or key in self._dropped:
                    self._dropped[key] = self._dropped.get(key, 0) + 1
                if self._refused is not None:
                    self._refused.inc()
                continue
            dropped = self._dropped.pop(key, 0)
            if dropped:
                kept.append(
                    event._replace(
                        kind=SUPPRESSED,
                        message=f"{dropped} more events not recorded: over the quota of "
                        f"{self.describe()}",
                        old_status="",
                        new_status="",
                        pid=0,
                    )
                )
            kept.append(event)
        return kept

    def pending(self, node_id: str, agent_id: str) -> int:
        """Events of an agent not recorded since its last recorded one."""
        return self._dropped.get((node_id, agent_id), 0)


class EventRecorder:
    """Derives and records agent events, and publishes them once committed (module doc).

    The Store calls :meth:`derive` and :meth:`committed` (it is the Store's
    :class:`~manager.store.events.AgentEventSink`); AdminService calls
    :meth:`record_operation`.
    """

    def __init__(
        self,
        *,
        store: EventStore,
        quota: AgentEventQuota | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._quota = quota
        self._clock = clock
        self._subscribers: list[Subscriber] = []

    # ---- the publish hook ----

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(row)`` for every event committed from now on; returns the
        function that unsubscribes it."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subscribers.remove(callback)

        return unsubscribe

    @property
    def subscriber_count(self) -> int:
        """Callbacks subscribed now (one per open WatchEvents stream)."""
        return len(self._subscribers)

    def committed(self, events: Sequence[EventRow]) -> None:
        for row in events:
            for callback in tuple(self._subscribers):
                try:
                    callback(row)
                except Exception:
                    log.exception("event subscriber %r failed on event %d", callback, row.id)

    # ---- derived from syncs (called by the Store) ----

    def derive(
        self,
        node_id: str,
        previous: Mapping[str, AgentRecord],
        states: Sequence[AgentRecord],
        full: bool,
        now: float,
    ) -> list[NewEvent]:
        events = derive_agent_events(node_id, previous, states, full, now)
        if events and self._quota is not None:
            events = self._quota.admit(events)
        return events

    # ---- operations relayed by the Manager ----

    async def record_operation(
        self,
        *,
        node_id: str,
        agent_id: str,
        kind: str,
        message: str,
        actor: str,
        new_status: str = "",
        pid: int = 0,
    ) -> EventRow | None:
        """Record one operation (``operation``, ``config``, ``reload``) and publish it.

        The operation already happened: a database that cannot take the event is logged,
        not raised (None then)."""
        assert kind in (OPERATION, CONFIG, RELOAD), kind
        event = NewEvent(
            self._clock(),
            node_id,
            agent_id,
            kind,
            message,
            actor=actor,
            new_status=new_status,
            pid=pid,
        )
        try:
            rows = await self._store.add([event])
        except FleetError as exc:
            log.warning("%s event for %s/%s not recorded: %s", kind, node_id, agent_id, exc)
            return None
        self.committed(rows)
        return rows[0] if rows else None
