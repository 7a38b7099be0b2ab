"""Persistence: Tortoise models, migrations and the store API the services call."""

from .database import Database
from .models import NODE_STATUSES, OFFLINE, ONLINE, REGISTERING, STOPPED
from .store import (
    AgentRecord,
    AgentRow,
    NodeRow,
    PendingHeartbeat,
    RegisterResult,
    Store,
    Transition,
)

__all__ = [
    "NODE_STATUSES",
    "OFFLINE",
    "ONLINE",
    "REGISTERING",
    "STOPPED",
    "AgentRecord",
    "AgentRow",
    "Database",
    "NodeRow",
    "PendingHeartbeat",
    "RegisterResult",
    "Store",
    "Transition",
]
