"""What the Daemon must remember across its own restarts, per agent, in the state dir.

``agents.json`` (mode 0600, replaced atomically) holds for each agent the pid and psutil
create time of the running process (to re-adopt it, never a reused pid), its token (the
running process still holds it), start time, restart count and any config or version
pushed by the Manager (so a pushed update outlives a Daemon restart).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class AgentRecord:
    """The persisted part of one agent's state."""

    pid: int = 0
    create_time: float = 0.0
    token: str = ""
    start_time: int = 0
    restart_count: int = 0
    pushed_config: dict[str, Any] | None = None
    pushed_version: str | None = None
    # Stopped by an operator: stays stopped across Daemon restarts (autostart skipped).
    held_stopped: bool = False
    # Hash of how the running process was spawned (command, env, cwd, user): a process
    # re-adopted under a changed definition is restarted to apply it.
    spec_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class StateStore:
    """Reads and atomically rewrites ``<state_dir>/agents.json``."""

    def __init__(self, *, path: Path) -> None:
        self._path = path

    def load(self) -> dict[str, AgentRecord]:
        try:
            raw = json.loads(self._path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable state file %s: %s", self._path, exc)
            return {}
        records = {}
        known = set(AgentRecord.__dataclass_fields__)
        for agent_id, data in raw.get("agents", {}).items():
            if isinstance(data, dict):
                records[agent_id] = AgentRecord(**{k: v for k, v in data.items() if k in known})
        return records

    def save(self, records: Mapping[str, AgentRecord]) -> None:
        data = {"version": 1, "agents": {k: asdict(v) for k, v in records.items()}}
        # Encoded in memory first (a failure leaves the file as it was) by the C encoder:
        # compact, fast with large pushed configs, and no Python recursion per level.
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self._path)
