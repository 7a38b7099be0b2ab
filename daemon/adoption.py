"""Finding this Daemon's agents in the process table, whatever ``agents.json`` says.

``agents.json`` records each agent's pid, but a record can be stale: with the state
directory full (or unwritable), an agent restarted after a crash kept its old pid there,
and after a Daemon restart a second copy started while the first ran on, orphaned. So
the Daemon also marks every process it spawns, and looks for its marks at start:

* each agent's environment carries ``FLEET_AGENT_ID``, ``FLEET_AGENT_TOKEN`` (new at
  every spawn) and ``FLEET_AGENT_MARK`` = ``<state id>:<spec hash>:<mac>``. The state id
  names the state directory (so Daemons with other state directories leave each other's
  agents alone); the spec hash says how the process was spawned; the mac is an HMAC of
  all of it under a key only the Daemon can read (``<state_dir>/marker.key``, 0600), so
  no other user can make a process of theirs look like one of our agents and be
  adopted (and so handed that agent's config);
* :func:`find_marked` reads the environment (``/proc/<pid>/environ``) of every session
  leader (each agent is one: it is spawned with ``setsid``) and keeps the ones whose
  mark verifies;
* :func:`reckon` decides per agent: adopt one process (the one ``agents.json`` names if
  it is among them, else the newest spawn), stop the other spawns of the same agent
  (copies the Daemon lost track of), stop the spawns of agents no longer configured.
  A session leader that shares its token with an older one is a descendant that left
  the agent's process group, not a spawn of ours, and is left alone.

Both the key and the state id are created at the Daemon's first start. If the key cannot
be read or written, a key derived from the state directory's path is used (and logged):
agents are still found again, only forging a mark is no longer impossible for a user who
can read this Daemon's configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .state import AgentRecord

log = logging.getLogger(__name__)

MARK_ENV = "FLEET_AGENT_MARK"
AGENT_ID_ENV = "FLEET_AGENT_ID"
TOKEN_ENV = "FLEET_AGENT_TOKEN"
KEY_FILE = "marker.key"
_CREATE_TIME_SLACK = 0.05


@dataclass(frozen=True)
class Marker:
    """What this Daemon stamps on the agents it spawns, and how it recognises them."""

    state_id: str
    key: bytes = field(repr=False)

    @classmethod
    def load(cls, state_dir: Path) -> Marker:
        """The marker of ``state_dir``: its key file, created on first use."""
        path = state_dir / KEY_FILE
        try:
            key = _read_or_create_key(path)
        except OSError as exc:
            log.error(
                "cannot read or create %s (%s): marking agents with a key derived from the "
                "state directory's path",
                path,
                exc.strerror or exc,
            )
            key = hashlib.sha256(f"fleet-agent-mark:{state_dir.resolve()}".encode()).digest()
        state_id = hashlib.sha256(b"state-id:" + key).hexdigest()[:16]
        return cls(state_id=state_id, key=key)

    def _mac(self, agent_id: str, token: str, spec_hash: str) -> str:
        message = "\0".join((self.state_id, agent_id, token, spec_hash)).encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:32]

    def stamp(self, agent_id: str, token: str, spec_hash: str) -> str:
        """The ``FLEET_AGENT_MARK`` value of a spawn of ``agent_id`` with ``token``."""
        return f"{self.state_id}:{spec_hash}:{self._mac(agent_id, token, spec_hash)}"

    def read(self, env: Mapping[str, str]) -> tuple[str, str, str] | None:
        """(agent id, token, spec hash) if ``env`` is that of an agent we spawned."""
        mark = env.get(MARK_ENV, "")
        state_id, _, rest = mark.partition(":")
        if state_id != self.state_id:
            return None
        spec_hash, _, mac = rest.partition(":")
        agent_id, token = env.get(AGENT_ID_ENV, ""), env.get(TOKEN_ENV, "")
        if not agent_id or not token:
            return None
        if not hmac.compare_digest(mac, self._mac(agent_id, token, spec_hash)):
            return None
        return agent_id, token, spec_hash


def _read_or_create_key(path: Path) -> bytes:
    try:
        key = bytes.fromhex(path.read_text().strip())
        if len(key) >= 16:
            return key
        log.warning("%s holds no usable key: making a new one", path)
    except FileNotFoundError:
        pass
    except ValueError:
        log.warning("%s holds no usable key: making a new one", path)
    key = secrets.token_bytes(32)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return key


@dataclass(frozen=True)
class Found:
    """A live process whose mark says we spawned it."""

    agent_id: str
    pid: int
    create_time: float
    token: str
    spec_hash: str


def find_marked(marker: Marker) -> list[Found]:
    """Every live session leader carrying a valid mark of ``marker``. Blocking (one pass
    over the process table; environments are read only for session leaders)."""
    found = []
    me = os.getpid()
    for pid in psutil.pids():
        if pid in (me, 1):
            continue
        try:
            if os.getsid(pid) != pid:
                continue
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            hit = marker.read(proc.environ())
            if hit is None:
                continue
            create_time = proc.create_time()
        except (OSError, psutil.Error):
            continue  # gone meanwhile, or not ours to read
        agent_id, token, spec_hash = hit
        found.append(Found(agent_id, pid, create_time, token, spec_hash))
    return found


@dataclass(frozen=True)
class Reckoning:
    """What to do with the marked processes found at start."""

    adopt: dict[str, Found]  # agent id -> the process to take over
    duplicates: list[Found]  # other spawns of an agent that is adopted: to stop
    unconfigured: list[Found]  # spawns of agents no longer configured: to stop


def reckon(
    found: Iterable[Found], *, wanted: Collection[str], recorded: Mapping[str, AgentRecord]
) -> Reckoning:
    """Decide which marked process runs each agent on (see the module docstring)."""
    spawns: dict[str, dict[str, Found]] = {}
    for f in sorted(found, key=lambda f: f.create_time):
        # One spawn per token: its oldest session leader is the one we started.
        spawns.setdefault(f.agent_id, {}).setdefault(f.token, f)
    adopt: dict[str, Found] = {}
    duplicates: list[Found] = []
    unconfigured: list[Found] = []
    for agent_id, by_token in spawns.items():
        candidates = list(by_token.values())
        if agent_id not in wanted:
            unconfigured.extend(candidates)
            continue
        record = recorded.get(agent_id)
        chosen = next(
            (c for c in candidates if record is not None and _is_recorded(c, record)),
            candidates[-1],  # the newest spawn: the Daemon's latest decision
        )
        adopt[agent_id] = chosen
        duplicates.extend(c for c in candidates if c is not chosen)
    return Reckoning(adopt, duplicates, unconfigured)


def _is_recorded(found: Found, record: AgentRecord) -> bool:
    return found.pid == record.pid and (
        abs(found.create_time - record.create_time) <= _CREATE_TIME_SLACK
    )
