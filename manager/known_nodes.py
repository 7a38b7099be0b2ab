"""KnownNodes: which nodes are registered, and with which Daemon instance (a cache).

Heartbeats must answer ``NOT_FOUND`` for unknown nodes without a database read each;
this cache of ``node_id -> instance_id`` is filled on registration and on a miss (read
from the database), and emptied for a node when it is removed or when a flush finds its
row gone (another Manager removed it). It can always be rebuilt from the database, so
several Managers may share one.

Several Managers on one PostgreSQL: an entry dropped or replaced here (a removal, a
Leave, a new Daemon instance) is published through ``on_forget`` (the ChangeFeed,
manager/notify.py), and a change heard from another Manager drops the entry here with
:meth:`invalidate` (which publishes nothing), so a node removed through one Manager is
refused at its next heartbeat to any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class KnownNodes:
    """``node_id -> instance_id`` of the Daemon currently registered (see module doc)."""

    def __init__(self, *, on_forget: Callable[[str], None] = lambda node_id: None) -> None:
        self._instances: dict[str, str] = {}
        self._on_forget = on_forget

    def get(self, node_id: str) -> str | None:
        return self._instances.get(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._instances

    def remember(self, node_id: str, instance_id: str) -> None:
        old = self._instances.get(node_id)
        self._instances[node_id] = instance_id
        if old is not None and old != instance_id:
            self._on_forget(node_id)

    def discard(self, node_id: str) -> None:
        if self._instances.pop(node_id, None) is not None:
            self._on_forget(node_id)

    def discard_all(self, node_ids: Iterable[str]) -> None:
        for node_id in node_ids:
            self.discard(node_id)

    def invalidate(self, node_id: str) -> None:
        """Another Manager changed ``node_id``: read it afresh next time."""
        self._instances.pop(node_id, None)

    def clear(self) -> None:
        """Everything may have changed (the change feed was deaf for a while)."""
        self._instances.clear()
