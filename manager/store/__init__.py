"""Persistence: Tortoise models, migrations and the store API the services call."""

from .database import Database
from .models import NODE_STATUSES, OFFLINE, ONLINE, REGISTERING
from .store import AgentRecord, PendingHeartbeat, RegisterResult, Store, Transition

__all__ = [
    "NODE_STATUSES",
    "OFFLINE",
    "ONLINE",
    "REGISTERING",
    "AgentRecord",
    "Database",
    "PendingHeartbeat",
    "RegisterResult",
    "Store",
    "Transition",
]
