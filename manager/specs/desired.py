"""What each node should run: the revision of every live spec chosen for it.

Pure functions over what the store holds (docs/specs.md, Manager side). For a spec whose
current revision is R:

* a node R does not target gets nothing (its agents of that spec are removed at once);
* while a rollout of R *pins* the spec (running, paused, or failed without rolling
  back), a node the rollout has not moved yet keeps the older revision it was offered
  last, as long as that revision still targets it: the Daemon then has nothing to do;
* every other targeted node gets R — at once when it runs no revision of the spec.

A node is in sync when it reports exactly the chosen revisions as the newest it was
offered (whatever it made of them: APPLIED, REFUSED or FAILED) and no other spec. The
controller pushes only to nodes out of sync, so a refused revision is not re-sent in a
loop: the Daemon already said what it thinks of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from common.specdoc import Target

if TYPE_CHECKING:
    from .catalog import StoredRevision

# SpecState.status values a Daemon reports.
STATUS_APPLIED = "APPLIED"
STATUS_REFUSED = "REFUSED"
STATUS_FAILED = "FAILED"
SPEC_STATUSES = (STATUS_APPLIED, STATUS_REFUSED, STATUS_FAILED)


class ReportedSpec(Protocol):
    """A SpecState as stored or received: ``revision`` is the newest offered."""

    @property
    def name(self) -> str: ...

    @property
    def revision(self) -> int: ...


@dataclass(frozen=True)
class Pin:
    """A rollout of a spec's current revision that keeps unmoved nodes where they are."""

    rollout_id: int
    moved: frozenset[str]


@dataclass(frozen=True)
class LiveSpec:
    """A spec that is not deleted: its current revision and the rollout pinning it."""

    name: str
    current: StoredRevision
    pin: Pin | None = None

    @property
    def revision(self) -> int:
        return self.current.revision


def kept_revision(
    current: int,
    node_id: str,
    labels: Mapping[str, str],
    seen: int,
    seen_target: Target | None,
) -> int:
    """The older revision a node not moved yet keeps during a rollout of revision
    ``current`` (0: none, it gets ``current`` at once). ``seen`` is the newest revision
    it was offered, ``seen_target`` that revision's target."""
    if 0 < seen < current and seen_target is not None:
        return seen if seen_target.matches(node_id, labels) else 0
    return 0


def desired_revisions(
    node_id: str,
    labels: Mapping[str, str],
    specs: Iterable[LiveSpec],
    reported: Mapping[str, ReportedSpec],
    targets: Mapping[tuple[str, int], Target],
) -> dict[str, int]:
    """spec name → the revision ``node_id`` should hold (module doc).

    ``targets`` holds the target of every older revision nodes reported (to know whether
    a revision a node keeps still targets it).
    """
    out: dict[str, int] = {}
    for spec in specs:
        if not spec.current.doc.target.matches(node_id, labels):
            continue
        revision = spec.revision
        if spec.pin is not None and node_id not in spec.pin.moved:
            state = reported.get(spec.name)
            if state is not None:
                seen = state.revision
                target = targets.get((spec.name, seen))
                kept = kept_revision(spec.revision, node_id, labels, seen, target)
                revision = kept or revision
        out[spec.name] = revision
    return out


def in_sync(desired: Mapping[str, int], reported: Mapping[str, ReportedSpec]) -> bool:
    """True when the node holds exactly the desired revisions (module doc)."""
    if set(desired) != set(reported):
        return False
    return all(reported[name].revision == revision for name, revision in desired.items())
