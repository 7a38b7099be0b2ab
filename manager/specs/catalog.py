"""RevisionCatalog: stored spec revisions, parsed once and kept (they never change), and
the live specs as the controller sees them (current revision and pinning rollout)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common.specdoc import SpecDoc, SpecError, Target, parse_payload
from schema import daemon_pb

from ..store.models import FAILED, PAUSED, RUNNING
from ..store.specs import SpecStore
from .desired import LiveSpec, Pin

log = logging.getLogger(__name__)

_MAX_CACHED = 4096
# A rollout in these states keeps the nodes it has not moved on their older revision.
PINNING_STATES = (RUNNING, PAUSED, FAILED)


@dataclass(frozen=True)
class StoredRevision:
    """One signed revision: the envelope as sent to Daemons and its parsed document."""

    name: str
    revision: int
    signed: daemon_pb.SignedSpec
    doc: SpecDoc


class RevisionCatalog:
    """``(spec, revision)`` → :class:`StoredRevision`, read from the store on a miss.

    A revision is immutable once stored, so entries never go stale; the cache is bounded
    (least recently used out). Delete revisions have no document and are never returned.
    """

    def __init__(self, *, store: SpecStore) -> None:
        self._store = store
        self._cache: OrderedDict[tuple[str, int], StoredRevision] = OrderedDict()

    async def get(self, name: str, revision: int) -> StoredRevision | None:
        key = (name, revision)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
            return found
        row = await self._store.get_revision(name, revision)
        if row is None or not row.payload:
            return None
        payload = bytes(row.payload)
        try:
            doc = parse_payload(payload)
        except SpecError:  # verified when applied: only a damaged row gets here
            return None
        found = StoredRevision(
            name=name,
            revision=revision,
            signed=daemon_pb.SignedSpec(
                payload=payload,
                signature=bytes(row.signature),
                signer_cert=bytes(row.signer_cert),
            ),
            doc=doc,
        )
        self._cache[key] = found
        if len(self._cache) > _MAX_CACHED:
            self._cache.popitem(last=False)
        return found

    async def targets_of(self, pairs: Iterable[tuple[str, int]]) -> dict[tuple[str, int], Target]:
        """The target of each (spec, revision) that is stored (others are left out)."""
        out: dict[tuple[str, int], Target] = {}
        for name, revision in set(pairs):
            found = await self.get(name, revision) if revision > 0 else None
            if found is not None:
                out[(name, revision)] = found.doc.target
        return out

    async def live_specs(self, node_ids: Sequence[str] | None = None) -> list[LiveSpec]:
        """Every spec that is not deleted, with the rollout that pins it, if any (the
        moved nodes of that rollout limited to ``node_ids`` when given)."""
        specs = await self._store.list_specs()
        latest = await self._store.latest_rollouts([s.name for s in specs])
        pinning = {
            s.name: latest[s.name]
            for s in specs
            if s.name in latest
            and latest[s.name].revision == s.revision
            and latest[s.name].state in PINNING_STATES
        }
        moved: dict[int, set[str]] = {r.id: set() for r in pinning.values()}
        for row in await self._store.rollout_nodes(list(moved), node_ids):
            moved[row.rollout_id].add(row.node_id)
        out: list[LiveSpec] = []
        for spec in specs:
            current = await self.get(spec.name, spec.revision)
            if current is None:
                log.error("spec %s: revision %d is not stored", spec.name, spec.revision)
                continue
            rollout = pinning.get(spec.name)
            pin = Pin(rollout.id, frozenset(moved[rollout.id])) if rollout else None
            out.append(LiveSpec(name=spec.name, current=current, pin=pin))
        return out
