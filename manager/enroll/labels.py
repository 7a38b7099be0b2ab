"""The labels nodes got when they joined, for RegisterNode to store over the reported ones.

RegisterNode is hot at fleet start, so the answer is cached per ``(node, Daemon
instance)``: a Daemon that registers again (after a Manager failover or restart of the
link) costs nothing, while a node that joins again — on this Manager or on another one
sharing the database — always comes back as a new Daemon process with a new instance
id, which misses the cache and reads the table. Misses of concurrent registrations are
read with one SELECT per batch (:meth:`EnrollStore.enrollment_labels`). A Daemon that
sends no instance id is read every time.
"""

from __future__ import annotations

from ..store.enroll import EnrollStore

_MAX_CACHED = 100_000


class EnrollmentLabels:
    """``node_id -> (instance_id, join labels or None)`` (see module doc)."""

    def __init__(self, *, store: EnrollStore) -> None:
        self._store = store
        self._cache: dict[str, tuple[str, dict[str, str] | None]] = {}

    async def labels_for(self, node_id: str, instance_id: str) -> dict[str, str] | None:
        """The labels ``node_id`` joined with (None: it did not join with a token)."""
        cached = self._cache.get(node_id)
        if cached is not None and instance_id and cached[0] == instance_id:
            return cached[1]
        labels = await self._store.enrollment_labels(node_id)
        if instance_id:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[node_id] = (instance_id, labels)
        return labels

    def joined(self, node_id: str) -> None:
        """``node_id`` joined through this Manager: read its labels afresh."""
        self._cache.pop(node_id, None)

    def forget(self, node_id: str) -> None:
        """``node_id`` was removed."""
        self._cache.pop(node_id, None)
