"""KnownNodes: which nodes are registered, and with which Daemon instance (a cache).

Heartbeats must answer ``NOT_FOUND`` for unknown nodes without a database read each;
this cache of ``node_id -> instance_id`` is filled on registration and on a miss (read
from the database), and emptied for a node when it is removed or when a flush finds its
row gone (another Manager removed it). It can always be rebuilt from the database, so
several Managers may share one.
"""

from __future__ import annotations

from collections.abc import Iterable


class KnownNodes:
    """``node_id -> instance_id`` of the Daemon currently registered (see module doc)."""

    def __init__(self) -> None:
        self._instances: dict[str, str] = {}

    def get(self, node_id: str) -> str | None:
        return self._instances.get(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._instances

    def remember(self, node_id: str, instance_id: str) -> None:
        self._instances[node_id] = instance_id

    def discard(self, node_id: str) -> None:
        self._instances.pop(node_id, None)

    def discard_all(self, node_ids: Iterable[str]) -> None:
        for node_id in node_ids:
            self._instances.pop(node_id, None)
