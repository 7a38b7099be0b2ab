"""The Daemon's configuration: frozen dataclasses built once by ``__main__``.

Sources, later ones winning: the TOML file (``--config``), then ``FLEET_*`` environment
variables, then command-line flags. :func:`build_config` merges them into one nested dict
and :func:`from_mapping` turns that into a validated :class:`DaemonConfig`. Unknown keys
and bad values raise :class:`ConfigError` with a message naming the key (and the agent).
Every key and default is documented in ``docs/daemon.md``.
"""

from __future__ import annotations

import math
import re
import signal
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.durations import parse_duration

AUTORESTART = ("always", "on-failure", "never")
STOP_SIGNALS = {
    name: getattr(signal, f"SIG{name}")
    for name in ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2")
}
LOG_LEVELS = ("debug", "info", "warning", "error")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


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
        if not _ID.fullmatch(self.id):
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


@dataclass(frozen=True)
class TLSSettings:
    """``[manager.tls]``: the node certificate dials the Manager and serves DaemonService."""

    enabled: bool = True
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""


@dataclass(frozen=True)
class ManagerSettings:
    """``[manager]``: where the Manager is and how often to talk to it (seed defaults)."""

    address: str = "127.0.0.1:50051"
    timeout: float = 30.0
    heartbeat_interval: float = 60.0
    reconnect_interval: float = 10.0
    metrics_interval: float = 60.0
    sync_interval: float = 60.0
    tls: TLSSettings = field(default_factory=TLSSettings)


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the Daemon needs, validated; built once in ``__main__``."""

    node_id: str
    state_dir: Path
    manager: ManagerSettings = field(default_factory=ManagerSettings)
    labels: Mapping[str, str] = field(default_factory=dict)
    listen: str = "0.0.0.0:50052"
    advertise: str = ""
    agent_socket: str = ""
    agent_check_peer: bool = True
    http_listen: str = ""
    history_interval: float = 10.0
    history_retention: float = 86400.0
    outbox_max_reports: int = 10000
    stop_agents_on_exit: bool = True
    log_level: str = "info"
    agents: tuple[AgentSpec, ...] = ()

    def __post_init__(self) -> None:
        if not _ID.fullmatch(self.node_id):
            raise ConfigError(f"key 'node_id': {self.node_id!r} must be 1-128 of [A-Za-z0-9._-]")
        _split_hostport("manager.address", self.manager.address)
        _split_hostport("grpc.listen", self.listen)
        if self.advertise:
            _split_hostport("grpc.advertise", self.advertise)
        if self.http_listen:
            _split_hostport("http.listen", self.http_listen)
        m = self.manager
        for key in (
            "timeout",
            "heartbeat_interval",
            "reconnect_interval",
            "metrics_interval",
            "sync_interval",
        ):
            if not getattr(m, key) > 0:
                raise ConfigError(f"key 'manager.{key}' must be > 0")
        if m.tls.enabled:
            for key in ("cert_file", "key_file", "ca_file"):
                if not getattr(m.tls, key):
                    raise ConfigError(
                        f"key 'manager.tls.{key}' is required (or --insecure for development)"
                    )
        if not self.history_interval > 0 or self.history_retention < self.history_interval:
            raise ConfigError(
                "keys 'history.interval'/'history.retention': need 0 < interval <= retention"
            )
        if self.outbox_max_reports < 1:
            raise ConfigError("key 'outbox.max_reports' must be >= 1")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"key 'log.level' must be one of {', '.join(LOG_LEVELS)}")
        seen: set[str] = set()
        for agent in self.agents:
            if agent.id in seen:
                raise ConfigError(f"agent {agent.id!r}: key 'id' is declared twice")
            seen.add(agent.id)

    @property
    def tls_enabled(self) -> bool:
        return self.manager.tls.enabled


def _check_nonneg(where: str, key: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{where}: key {key!r} must be >= 0")


def split_hostport(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port)."""
    return _split_hostport("address", text)


def _split_hostport(key: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"key {key!r}: {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


# ---- parsing ----

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
_SCHEMA: dict[str, Any] = {
    "node_id": str,
    "labels": dict,
    "state_dir": str,
    "stop_agents_on_exit": bool,
    "manager": {
        "address": str,
        "timeout": "duration",
        "heartbeat_interval": "duration",
        "reconnect_interval": "duration",
        "metrics_interval": "duration",
        "sync_interval": "duration",
        "tls": {"enabled": bool, "cert_file": str, "key_file": str, "ca_file": str},
    },
    "grpc": {"listen": str, "advertise": str},
    "agent_api": {"socket": str, "check_peer": bool},
    "http": {"listen": str},
    "history": {"interval": "duration", "retention": "duration"},
    "outbox": {"max_reports": int},
    "log": {"level": str},
    "agents": list,
}


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, naming it in the error when it cannot be parsed."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _duration(key: str, value: Any) -> float:
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


def _check_tree(data: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in schema:
            raise ConfigError(f"unknown key {name!r}")
        kind = schema[key]
        if isinstance(kind, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"key {name!r} must be a table")
            out[key] = _check_tree(value, kind, f"{name}.")
        elif kind == "duration":
            out[key] = _duration(name, value)
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"key {name!r} must be an integer")
        elif kind is not int and not isinstance(value, kind):
            raise ConfigError(f"key {name!r} must be of type {kind.__name__}")
        else:
            out[key] = value
    return out


def _agent(index: int, raw: Any) -> AgentSpec:
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
            return _duration(key, value)
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


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


ENV_KEYS = {
    "FLEET_NODE_ID": ("node_id",),
    "FLEET_MANAGER": ("manager", "address"),
    "FLEET_DAEMON_LISTEN": ("grpc", "listen"),
    "FLEET_DAEMON_ADVERTISE": ("grpc", "advertise"),
    "FLEET_DAEMON_STATE_DIR": ("state_dir",),
    "FLEET_DAEMON_CERT": ("manager", "tls", "cert_file"),
    "FLEET_DAEMON_KEY": ("manager", "tls", "key_file"),
    "FLEET_DAEMON_CA": ("manager", "tls", "ca_file"),
    "FLEET_DAEMON_LOG_LEVEL": ("log", "level"),
}


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {path[-1]: value}
    for key in reversed(path[:-1]):
        out = {key: out}
    return out


def build_config(
    file_data: Mapping[str, Any],
    env: Mapping[str, str],
    flags: Mapping[tuple[str, ...], Any],
    *,
    base_dir: Path | None = None,
) -> DaemonConfig:
    """Merge file → environment → flags (keys as paths, e.g. ``("manager", "address")``)."""
    merged: dict[str, Any] = dict(file_data)
    for var, path in ENV_KEYS.items():
        if env.get(var):
            merged = _deep_merge(merged, _nest(path, env[var]))
    for path, value in flags.items():
        if value is not None:
            merged = _deep_merge(merged, _nest(path, value))
    return from_mapping(merged, base_dir=base_dir)


def from_mapping(data: Mapping[str, Any], *, base_dir: Path | None = None) -> DaemonConfig:
    """Validate a nested mapping shaped like the TOML file into a :class:`DaemonConfig`."""
    d = _check_tree(data, _SCHEMA, "")
    base = base_dir or Path.cwd()

    def path_of(value: str) -> str:
        return str(base / value) if value and not Path(value).is_absolute() else value

    node_id = d.get("node_id") or socket.gethostname()
    m = d.get("manager", {})
    t = m.get("tls", {})
    tls = TLSSettings(
        enabled=t.get("enabled", True),
        cert_file=path_of(t.get("cert_file", "")),
        key_file=path_of(t.get("key_file", "")),
        ca_file=path_of(t.get("ca_file", "")),
    )
    manager = ManagerSettings(
        address=m.get("address", ManagerSettings.address),
        timeout=m.get("timeout", ManagerSettings.timeout),
        heartbeat_interval=m.get("heartbeat_interval", ManagerSettings.heartbeat_interval),
        reconnect_interval=m.get("reconnect_interval", ManagerSettings.reconnect_interval),
        metrics_interval=m.get("metrics_interval", ManagerSettings.metrics_interval),
        sync_interval=m.get("sync_interval", ManagerSettings.sync_interval),
        tls=tls,
    )
    labels = d.get("labels", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ConfigError("key 'labels' must be a table of strings")
    agents_raw = d.get("agents", [])
    agents = tuple(_agent(i, raw) for i, raw in enumerate(agents_raw))
    agents = tuple(
        a if not a.cwd or Path(a.cwd).is_absolute() else _replace(a, cwd=path_of(a.cwd))
        for a in agents
    )
    state_dir = (
        Path(path_of(d.get("state_dir", "")))
        if d.get("state_dir")
        else (Path.cwd() / ".fleet" / f"daemon-{node_id}")
    )
    return DaemonConfig(
        node_id=node_id,
        state_dir=state_dir,
        manager=manager,
        labels=dict(labels),
        listen=d.get("grpc", {}).get("listen", DaemonConfig.listen),
        advertise=d.get("grpc", {}).get("advertise", ""),
        agent_socket=path_of(d.get("agent_api", {}).get("socket", "")),
        agent_check_peer=d.get("agent_api", {}).get("check_peer", True),
        http_listen=d.get("http", {}).get("listen", ""),
        history_interval=d.get("history", {}).get("interval", DaemonConfig.history_interval),
        history_retention=d.get("history", {}).get("retention", DaemonConfig.history_retention),
        outbox_max_reports=d.get("outbox", {}).get("max_reports", DaemonConfig.outbox_max_reports),
        stop_agents_on_exit=d.get("stop_agents_on_exit", True),
        log_level=d.get("log", {}).get("level", "info").lower(),
        agents=agents,
    )


def _replace(spec: AgentSpec, **changes: Any) -> AgentSpec:
    from dataclasses import replace

    return replace(spec, **changes)
