"""What a SyncAgentStates may store: one bad entry never discards the node's whole sync.

A Daemon relays text it does not control: an agent's last stderr line becomes its
``status_reason``, a pushed ``version`` label its version. One ANSI colour code or a
100 KB version there used to make the Manager refuse the node's every sync, so fleetctl
kept showing dead agents as RUNNING with stale pids. Now:

* **relayed text** (``type``, ``version``, ``status_reason``, ``config_hash``, a spec
  state's ``reason``) is cleaned, not refused: escape sequences removed, control
  characters replaced, bidi overrides removed, cut to the column's length
  (:func:`common.validate.clean_text`);
* what the Daemon's own code decides and only a broken or hostile Daemon gets wrong —
  a malformed agent id or spec name, a status outside the enumeration, an agent listed
  twice, a negative number, more entries than allowed — still refuses the request
  (``INVALID_ARGUMENT`` naming the entry), as before (``test_manager_admin.py`` holds
  that contract).

Every change is listed (bounded) in the answer's message, logged (at most once a minute
per node) and counted in ``fleet_manager_agent_sync_problems_total{kind="sanitised"}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from common import validate
from common.errors import InvalidArgument
from schema import manager_pb

from ..specs.desired import SPEC_STATUSES
from ..store import AgentRecord
from ..store.specs import SpecStateRecord

AGENT_STATUSES = frozenset(
    {"STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN"}
)
MAX_AGENTS_PER_SYNC = 1000
MAX_SPECS_PER_SYNC = 1000
# The columns' lengths (manager/store/models.py).
_SHORT = 64
_HASH = 128
# Problems named in an answer or a log line; the rest are counted.
_NAMED = 5
_NUMBERS = ("pid", "restart_count", "start_time", "last_heartbeat", "spec_revision")


@dataclass
class SyncProblems:
    """The fields of one sync stored other than as sent (``sanitised``: where and how)."""

    sanitised: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.sanitised)

    def clean(self, where: str, value: str, max_len: int = validate.MAX_TEXT_LEN) -> str:
        text, change = validate.clean_text(value, max_len=max_len)
        if change:
            self.sanitised.append(f"{where}: {change}")
        return text

    def summary(self) -> str:
        """'sanitised 2 fields (states[3].status_reason: escape sequences removed; …)',
        naming at most a few."""
        items = self.sanitised
        named = "; ".join(items[:_NAMED])
        more = f"; and {len(items) - _NAMED} more" if len(items) > _NAMED else ""
        return f"sanitised {len(items)} field{'s' if len(items) > 1 else ''} ({named}{more})"


def check_agent_states(
    states: Sequence[manager_pb.AgentState], problems: SyncProblems
) -> list[AgentRecord]:
    """The records to store for ``states`` (see module doc)."""
    if len(states) > MAX_AGENTS_PER_SYNC:
        raise InvalidArgument(f"states has {len(states)} agents (max {MAX_AGENTS_PER_SYNC})")
    records: list[AgentRecord] = []
    seen: set[str] = set()
    for i, s in enumerate(states):
        where = f"states[{i}]"
        agent_id = validate.check_id(f"{where}.agent_id", s.agent_id)
        for name in _NUMBERS:
            if getattr(s, name) < 0:
                raise InvalidArgument(f"{where}.{name} must not be negative")
        spec = validate.check_id(f"{where}.spec", s.spec) if s.spec else ""
        if agent_id in seen:
            raise InvalidArgument(f"agent {agent_id} appears twice in states")
        seen.add(agent_id)
        status = s.status.upper()
        if status not in AGENT_STATUSES:
            shown = validate.clean_text(s.status, max_len=32)[0]
            raise InvalidArgument(
                f"{where}.status {shown!r} is not one of {', '.join(sorted(AGENT_STATUSES))}"
            )
        records.append(
            AgentRecord(
                agent_id=agent_id,
                status=status,
                pid=s.pid,
                last_heartbeat=s.last_heartbeat,
                type=problems.clean(f"{where}.type", s.type, _SHORT),
                version=problems.clean(f"{where}.version", s.version, _SHORT),
                start_time=s.start_time,
                restart_count=s.restart_count,
                status_reason=problems.clean(f"{where}.status_reason", s.status_reason),
                config_hash=problems.clean(f"{where}.config_hash", s.config_hash, _HASH),
                spec=spec,
                spec_revision=s.spec_revision,
            )
        )
    return records


def check_spec_states(
    specs: Sequence[manager_pb.SpecState], problems: SyncProblems
) -> list[SpecStateRecord]:
    """A full sync's spec states to store: one per spec, known statuses (module doc)."""
    if len(specs) > MAX_SPECS_PER_SYNC:
        raise InvalidArgument(f"specs has {len(specs)} entries (max {MAX_SPECS_PER_SYNC})")
    records: list[SpecStateRecord] = []
    seen: set[str] = set()
    for i, s in enumerate(specs):
        where = f"specs[{i}]"
        name = validate.check_id(f"{where}.name", s.name)
        if s.revision < 0 or s.running_revision < 0:
            raise InvalidArgument(f"{where}: revisions must not be negative")
        if name in seen:
            raise InvalidArgument(f"spec {name} appears twice in specs")
        seen.add(name)
        if s.status not in SPEC_STATUSES:
            shown = validate.clean_text(s.status, max_len=32)[0]
            raise InvalidArgument(
                f"{where}.status {shown!r} is not one of {', '.join(SPEC_STATUSES)}"
            )
        if not s.revision and not s.running_revision:
            continue  # a spec the node holds nothing of (just removed)
        records.append(
            SpecStateRecord(
                name=name,
                revision=s.revision,
                status=s.status,
                reason=problems.clean(f"{where}.reason", s.reason),
                running_revision=s.running_revision,
            )
        )
    return records
