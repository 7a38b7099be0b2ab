"""Agent definitions: one ``[[agents]]`` table, validated into an :class:`AgentSpec`.

Shared by the Daemon (``daemon.toml`` and central specs it receives), the Manager (which
plans what a central spec changes) and fleetctl (which checks a spec file before signing
it), so that one table means the same thing everywhere.
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from common.durations import parse_duration

AUTORESTART = ("always", "on-failure", "never")
STOP_SIGNALS = {
    name: getattr(signal, f"SIG{name}")
    for name in ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2")
}
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ConfigError(ValueError):
    """A configuration mistake, with a message naming where it is."""


@dataclass(frozen=True)
class AgentSpec:
    """One ``[[agents]]`` entry: what to run and how to supervise it."""

    id: str
    command: tuple[str, ...]
    type: str = "generic"
    version: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = ""
    user: str = ""
    autostart: bool = True
    autorestart: str = "on-failure"
    exit_codes: tuple[int, ...] = (0,)
    start_seconds: float = 1.0
    start_retries: int = 3
    stop_signal: str = "TERM"
    stop_timeout: float = 10.0
    backoff_initial: float = 1.0
    backoff_multiplier: float = 2.0
    backoff_max: float = 60.0
    backoff_reset: float = 60.0
    max_restarts: int = 10
    restart_window: float = 300.0
    heartbeat_interval: float = 10.0
    heartbeat_timeout: float = 0.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"agent {self.id!r}"
        if not ID_PATTERN.fullmatch(self.id):
            raise ConfigError(f"{where}: key 'id' must be 1-128 of [A-Za-z0-9._-]")
        if not self.command or not all(isinstance(a, str) and a for a in self.command):
            raise ConfigError(f"{where}: key 'command' must be a non-empty list of strings")
        if self.autorestart not in AUTORESTART:
            raise ConfigError(f"{where}: key 'autorestart' must be one of {', '.join(AUTORESTART)}")
        if self.stop_signal not in STOP_SIGNALS:
            raise ConfigError(
                f"{where}: key 'stop_signal' must be one of {', '.join(STOP_SIGNALS)}"
            )
        for key in ("start_seconds", "stop_timeout", "backoff_reset", "restart_window"):
            _check_nonneg(where, key, getattr(self, key))
        for key in ("backoff_initial", "backoff_max", "heartbeat_interval"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{where}: key {key!r} must be > 0")
        _check_nonneg(where, "heartbeat_timeout", self.heartbeat_timeout)
        if self.backoff_max < self.backoff_initial:
            raise ConfigError(f"{where}: key 'backoff_max' must be >= backoff_initial")
        if self.backoff_multiplier < 1:
            raise ConfigError(f"{where}: key 'backoff_multiplier' must be >= 1")
        for key in ("start_retries", "max_restarts", "log_backups"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{where}: key {key!r} must be >= 0")
        if self.log_max_bytes < 1024:
            raise ConfigError(f"{where}: key 'log_max_bytes' must be >= 1024")

    @property
    def stop_signum(self) -> int:
        return int(STOP_SIGNALS[self.stop_signal])


def _check_nonneg(where: str, key: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{where}: key {key!r} must be >= 0")


_AGENT_KEYS = {f for f in AgentSpec.__dataclass_fields__}
_DURATION_AGENT_KEYS = {
    "start_seconds",
    "stop_timeout",
    "backoff_initial",
    "backoff_max",
    "backoff_reset",
    "restart_window",
    "heartbeat_interval",
    "heartbeat_timeout",
}


def parse_duration_value(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"key {key!r}: expected a duration like 30s or a number of seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ConfigError(f"key {key!r}: {value} is not finite")
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"key {key!r}: {exc}") from None
    raise ConfigError(f"key {key!r}: expected a duration like 30s or a number of seconds")


def parse_agent(index: int, raw: Any) -> AgentSpec:
    """Validate the ``index``-th ``[[agents]]`` table (a mapping as TOML gives it)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"agents[{index}] must be a table")
    agent_id = raw.get("id")
    where = f"agent {agent_id!r}" if isinstance(agent_id, str) else f"agents[{index}]"
    if not isinstance(agent_id, str) or not agent_id:
        raise ConfigError(f"{where}: key 'id' is required")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _AGENT_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}")
        kwargs[key] = _agent_value(where, key, value)
    if "command" not in kwargs:
        raise ConfigError(f"{where}: key 'command' is required")
    try:
        return AgentSpec(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _agent_value(where: str, key: str, value: Any) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: key {key!r} must be {expected}")

    if key in _DURATION_AGENT_KEYS:
        try:
            return parse_duration_value(key, value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if key == "command":
        if isinstance(value, str):
            raise bad("a list of strings (argv), not a shell string")
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise bad("a list of strings")
        return tuple(value)
    if key == "env":
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise bad("a table of string values")
        return dict(value)
    if key == "config":
        if not isinstance(value, Mapping):
            raise bad("a table")
        return dict(value)
    if key == "exit_codes":
        if not isinstance(value, list) or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value
        ):
            raise bad("a list of integers 0-255")
        return tuple(value)
    if key in ("autostart",):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if key in ("start_retries", "max_restarts", "log_max_bytes", "log_backups"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if key == "backoff_multiplier":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if not isinstance(value, str):
        raise bad("a string")
    if key == "stop_signal":
        return value.upper().removeprefix("SIG")
    return value


def agent_fields(spec: AgentSpec) -> dict[str, Any]:
    """The definition as plain JSON-able values, every field present (for diffs)."""
    out: dict[str, Any] = {}
    for f in fields(spec):
        value = getattr(spec, f.name)
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        out[f.name] = value
    return out


def changed_fields(old: AgentSpec, new: AgentSpec) -> list[tuple[str, Any, Any]]:
    """``(field, old value, new value)`` for each field that differs, in declaration order."""
    a, b = agent_fields(old), agent_fields(new)
    return [(name, a[name], b[name]) for name in a if a[name] != b[name]]


@dataclass(frozen=True)
class AgentDiff:
    """What moving from one definition set to another does, agent by agent."""

    added: tuple[str, ...] = ()
    changed: tuple[tuple[str, tuple[tuple[str, Any, Any], ...]], ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed)


def diff_agents(old: Mapping[str, AgentSpec], new: Mapping[str, AgentSpec]) -> AgentDiff:
    """Compare two sets of definitions keyed by agent id (ids sorted in each list)."""
    changed = []
    unchanged = []
    for agent_id in sorted(set(old) & set(new)):
        fields_ = changed_fields(old[agent_id], new[agent_id])
        if fields_:
            changed.append((agent_id, tuple(fields_)))
        else:
            unchanged.append(agent_id)
    return AgentDiff(
        added=tuple(sorted(set(new) - set(old))),
        changed=tuple(changed),
        removed=tuple(sorted(set(old) - set(new))),
        unchanged=tuple(unchanged),
    )
