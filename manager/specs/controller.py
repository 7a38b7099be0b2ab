"""SpecController: pushes every online node that is out of sync its complete set of specs.

What a node should hold is decided by :mod:`manager.specs.desired`; this module decides
*when* to look and does the pushing:

* **Triggers** (none of them waits for the push): an apply, delete, rollback, resume or
  wave (:meth:`reconcile_all`, :meth:`reconcile_nodes`); a RegisterNode (a new node, a
  node back from offline, labels changed); a full SyncAgentStates whose spec states
  changed; and a periodic drift sweep over every node (``specs.sweep_interval``), which
  also runs once at start so pushes interrupted by a Manager restart are made again.
* **Batches**: requests queue as a set of node ids (or "all"); one runner task loads
  what it needs for the whole batch in a few queries, computes each node's desired set,
  and starts a push only for the nodes whose reported states differ.
* **Pushes**: ``DaemonService.ApplySpecs`` with the node's complete set, through the
  :class:`~manager.daemon_pool.DaemonClientPool`, at most ``concurrency`` at once and
  one at a time per node (a request for a node being pushed runs again after it). The
  reply's spec states are recorded at once. An unreachable Daemon is retried on the
  gRPC backoff schedule (re-computing what to push each time), up to ``max_attempts``
  in a row, then left to the next trigger. A Daemon that answers UNIMPLEMENTED (it
  predates specs) gets its specs recorded as REFUSED with that reason, and is not asked
  again until it registers anew.

Reported spec states come in through :meth:`node_synced` and are written only when they
differ from what this Manager recorded last (kept in memory per node), so the periodic
full syncs of a settled fleet cost no database write; the writes of concurrent nodes are
group-committed (SpecStore.replace_spec_states). Nothing here is on the heartbeat path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from grpclib.const import Status

from common.backoff import Backoff
from common.errors import DeadlineExceeded, Unavailable
from schema import daemon_pb

from ..daemon_pool import DaemonClientPool, DaemonError
from ..leases import Lease
from ..periodic import Periodic
from ..store import ONLINE
from ..store.specs import NodeFacts, SpecStateRecord, SpecStore
from .catalog import RevisionCatalog
from .desired import STATUS_REFUSED, desired_revisions, in_sync

log = logging.getLogger(__name__)

_RETRYABLE = (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.RESOURCE_EXHAUSTED)
UNSUPPORTED_REASON = "the Daemon does not implement ApplySpecs (older than specs): upgrade it"
# How long close() lets pushes in flight finish before cancelling them.
_DRAIN_SECONDS = 5.0
# After a failed batch (database unavailable), try again this much later.
_BATCH_RETRY_SECONDS = 5.0


def _states_key(states: Iterable[SpecStateRecord]) -> tuple[SpecStateRecord, ...]:
    return tuple(sorted(states, key=lambda s: s.name))


class SpecController:
    """Converges nodes on their desired specs (see module doc)."""

    def __init__(
        self,
        *,
        store: SpecStore,
        catalog: RevisionCatalog,
        pool: DaemonClientPool,
        sweep_interval: float = 60.0,
        concurrency: int = 64,
        max_attempts: int = 5,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        on_reported: Callable[[str], None] = lambda node_id: None,
        lease: Lease | None = None,
        on_recorded: Callable[[str], None] = lambda node_id: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._lease = lease
        # Told when a node's spec states were written: another Manager's _reported entry
        # for that node (it may have reported there before a failover) is stale now.
        self._on_recorded = on_recorded
        self._catalog = catalog
        self._pool = pool
        self._limit = asyncio.Semaphore(concurrency)
        self._max_attempts = max_attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._on_reported = on_reported
        self._clock = clock
        self._sweeper = Periodic(name="spec-drift-sweep", interval=sweep_interval, step=self._sweep)
        self._wake = asyncio.Event()
        self._pending: set[str] = set()
        self._all = False
        self._all_retry_at: float | None = None
        self._retry_at: dict[str, float] = {}  # node → loop time of its next attempt
        self._backoffs: dict[str, Backoff] = {}
        self._attempts: dict[str, int] = {}
        self._inflight: set[str] = set()
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reported: dict[str, tuple[SpecStateRecord, ...]] = {}
        self._unsupported: set[str] = set()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False

    # ---- triggers ----

    def reconcile_all(self) -> None:
        """Look at every node (after an apply, delete, rollback or resume)."""
        self._all = True
        self._wake.set()

    def reconcile_nodes(self, node_ids: Iterable[str]) -> None:
        self._pending.update(node_ids)
        self._wake.set()

    def node_registered(self, node_id: str) -> None:
        """A node (re-)registered: maybe new, back, upgraded or with other labels."""
        self._unsupported.discard(node_id)
        self._attempts.pop(node_id, None)
        self._backoffs.pop(node_id, None)
        self._retry_at.pop(node_id, None)
        self.reconcile_nodes([node_id])

    async def node_synced(self, node_id: str, states: Sequence[SpecStateRecord] | None) -> None:
        """A SyncAgentStates arrived; ``states`` is its spec states when it was full."""
        if (
            states is not None
            and node_id not in self._unsupported
            and await self._record(node_id, states, only_if_changed=True)
        ):
            self.reconcile_nodes([node_id])
        self._on_reported(node_id)

    async def _sweep(self) -> None:
        # The drift sweep is the duties lease holder's; an apply, a registration or a
        # node back online is reconciled by the Manager that sees it.
        if self._lease is None or self._lease.held:
            self.reconcile_all()

    # ---- lifecycle ----

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("spec controller already started")
        self._runner = asyncio.create_task(self._run(), name="spec-controller")
        await self._sweeper.start()  # its first step reconciles every node

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._sweeper.close()
        self._wake.set()

    async def wait_closed(self) -> None:
        await self._sweeper.wait_closed()
        if self._runner is not None:
            await self._runner
        if self._tasks:
            _done, late = await asyncio.wait(set(self._tasks), timeout=_DRAIN_SECONDS)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # ---- the runner ----

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            deadlines = list(self._retry_at.values())
            if self._all_retry_at is not None:
                deadlines.append(self._all_retry_at)
            timeout = max(0.0, min(deadlines) - loop.time()) if deadlines else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if self._closing:
                return
            self._wake.clear()
            now = loop.time()
            for node_id, at in list(self._retry_at.items()):
                if at <= now:
                    del self._retry_at[node_id]
                    self._pending.add(node_id)
            if self._all_retry_at is not None and self._all_retry_at <= now:
                self._all_retry_at = None
                self._all = True
            everything, nodes = self._all, self._pending
            self._all, self._pending = False, set()
            if not everything and not nodes:
                continue
            try:
                await self._reconcile(None if everything else sorted(nodes))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("spec controller: cannot reconcile now (%s); retrying", exc)
                if everything:
                    self._all_retry_at = now + _BATCH_RETRY_SECONDS
                else:
                    for node_id in nodes:
                        self._retry_at.setdefault(node_id, now + _BATCH_RETRY_SECONDS)

    async def _reconcile(self, node_ids: Sequence[str] | None) -> None:
        """Start a push for every online node of ``node_ids`` (None: all) out of sync."""
        specs = await self._catalog.live_specs(node_ids)
        facts = [
            f
            for f in await self._store.node_facts(node_ids)
            if f.status == ONLINE and f.address and f.node_id not in self._unsupported
        ]
        if not facts:
            return
        ids = [f.node_id for f in facts]
        rows = await self._store.spec_states(node_ids=None if node_ids is None else ids)
        reported: dict[str, dict[str, SpecStateRecord]] = {}
        for row in rows:
            reported.setdefault(row.node_id, {})[row.name] = SpecStateRecord(
                row.name, row.revision, row.status, row.reason, row.running_revision
            )
        targets = await self._catalog.targets_of((r.name, r.revision) for r in rows)
        for node in facts:
            have = reported.get(node.node_id, {})
            desired = desired_revisions(node.node_id, node.labels, specs, have, targets)
            if in_sync(desired, have):
                self._attempts.pop(node.node_id, None)
                continue
            self._start_push(node, desired)

    def _start_push(self, node: NodeFacts, desired: Mapping[str, int]) -> None:
        if node.node_id in self._inflight:
            self._again.add(node.node_id)
            return
        self._inflight.add(node.node_id)
        task = asyncio.create_task(
            self._push(node, dict(desired)), name=f"apply-specs-{node.node_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- pushing ----

    async def _push(self, node: NodeFacts, desired: dict[str, int]) -> None:
        node_id = node.node_id
        try:
            await self._push_once(node, desired)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("node %s: pushing specs failed", node_id)
        finally:
            self._inflight.discard(node_id)
            if node_id in self._again and not self._closing:
                self._again.discard(node_id)
                self.reconcile_nodes([node_id])

    async def _push_once(self, node: NodeFacts, desired: dict[str, int]) -> None:
        node_id = node.node_id
        signed: list[daemon_pb.SignedSpec] = []
        for name, revision in sorted(desired.items()):
            stored = await self._catalog.get(name, revision)
            if stored is None:
                log.error("node %s: spec %s revision %d is not stored", node_id, name, revision)
                return
            signed.append(stored.signed)
        wanted = ", ".join(f"{n}@{r}" for n, r in sorted(desired.items())) or "no specs"
        try:
            async with self._limit:
                if self._closing:
                    return
                reply = await self._pool.call(
                    node_id,
                    node.address,
                    "apply_specs",
                    daemon_pb.ApplySpecsRequest(specs=signed),
                )
        except DaemonError as exc:
            if exc.status == Status.UNIMPLEMENTED:
                log.warning("node %s: %s", node_id, UNSUPPORTED_REASON)
                self._unsupported.add(node_id)
                states = [
                    SpecStateRecord(n, r, STATUS_REFUSED, UNSUPPORTED_REASON)
                    for n, r in desired.items()
                ]
                await self._record(node_id, states, only_if_changed=False)
                return
            if exc.status in _RETRYABLE:
                self._retry(node_id, str(exc))
                return
            log.warning("node %s: ApplySpecs (%s) failed: %s", node_id, wanted, exc)
            return
        except (Unavailable, DeadlineExceeded) as exc:
            self._retry(node_id, str(exc))
            return
        self._attempts.pop(node_id, None)
        self._backoffs.pop(node_id, None)
        changes = ", ".join(
            f"{c.agent_id} {c.action}" + (f" ({c.error})" if c.error else "") for c in reply.changes
        )
        log.info("node %s: applied specs %s%s", node_id, wanted, f": {changes}" if changes else "")
        states = [
            SpecStateRecord(
                name=s.name[:128],
                revision=max(0, s.revision),
                status=s.status[:16],
                reason=s.reason[:1024],
                running_revision=max(0, s.running_revision),
            )
            for s in reply.specs
            # A spec just removed may be reported with revision 0: it holds nothing.
            if s.name and (s.revision > 0 or s.running_revision > 0)
        ]
        # The Daemon's own sync of the same states may have arrived first.
        await self._record(node_id, states, only_if_changed=True)
        self._on_reported(node_id)

    def _retry(self, node_id: str, why: str) -> None:
        attempts = self._attempts.get(node_id, 0) + 1
        if attempts >= self._max_attempts or self._closing:
            self._attempts.pop(node_id, None)
            self._backoffs.pop(node_id, None)
            log.warning(
                "node %s: specs not pushed after %d attempts (%s); next try on its next "
                "registration or the drift sweep",
                node_id,
                attempts,
                why,
            )
            return
        self._attempts[node_id] = attempts
        backoff = self._backoffs.setdefault(
            node_id, Backoff(initial=self._backoff_initial, maximum=self._backoff_max)
        )
        delay = backoff.next_delay()
        log.info("node %s: specs not pushed (%s); retry in %.1fs", node_id, why, delay)
        self._retry_at[node_id] = asyncio.get_running_loop().time() + delay
        self._wake.set()

    async def _record(
        self, node_id: str, states: Collection[SpecStateRecord], *, only_if_changed: bool
    ) -> bool:
        """Store a node's complete spec states; True if they differ from the last ones
        recorded (or none were recorded by this Manager yet)."""
        key = _states_key(states)
        last = self._reported.get(node_id)
        if only_if_changed and last == key:
            return False
        await self._store.replace_spec_states(node_id, list(key), self._clock())
        self._reported[node_id] = key
        self._on_recorded(node_id)
        return last != key

    def recorded_elsewhere(self, node_id: str | None) -> None:
        """Another Manager wrote ``node_id``'s spec states (None: maybe any node's): the
        next report is written."""
        if node_id is None:
            self._reported.clear()
        else:
            self._reported.pop(node_id, None)

    def forget(self, node_id: str) -> None:
        """A node was removed: drop what is remembered about it."""
        self._reported.pop(node_id, None)
        self._unsupported.discard(node_id)
        self._attempts.pop(node_id, None)
        self._backoffs.pop(node_id, None)
        self._retry_at.pop(node_id, None)
