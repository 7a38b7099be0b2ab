"""The Daemon's configuration: frozen dataclasses built once by ``__main__``.

Sources, later ones winning: the TOML file (``--config``), then ``FLEET_*`` environment
variables, then command-line flags. :func:`build_config` merges them into one nested dict
and :func:`from_mapping` turns that into a validated :class:`DaemonConfig`. Unknown keys
and bad values raise :class:`ConfigError` with a message naming the key (and the agent).
Every key and default is documented in ``docs/daemon.md``.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from common import paths
from common.agentspec import (
    ID_PATTERN,
    AgentSpec,
    ConfigError,
    parse_agent,
    parse_duration_value,
)
from common.errors import InvalidArgument
from common.h2limits import H2Limits
from common.validate import check_labels

from . import tomlpos
from .jsonlimits import JSONLimits
from .textsafe import MAX_LABEL_LEN, check_label

LOG_LEVELS = ("debug", "info", "warning", "error")
# A real heartbeat at least every (1 + this) intervals: it carries the instance id that
# detects a replaced Daemon, and its answer the revocation list's version.
MAX_HEARTBEAT_SKIP = 10


@dataclass(frozen=True)
class TLSSettings:
    """``[manager.tls]``: the node certificate dials the Manager and serves DaemonService."""

    enabled: bool = True
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    # Renewal over the Manager channel (daemon/certs.py): once renew_at of the
    # certificate's lifetime has passed, looking every renew_check_interval.
    renew: bool = True
    renew_at: float = 0.66
    renew_check_interval: float = 600.0


@dataclass(frozen=True)
class ManagerSettings:
    """``[manager]``: where the Manager is and how often to talk to it (seed defaults).

    ``address`` is one ``HOST:PORT`` or several, comma-separated (a TOML list is joined
    that way), each possibly a DNS name with several records: the Managers to fail over
    between (:mod:`daemon.manager_addresses`).
    """

    address: str = "127.0.0.1:50051"
    timeout: float = 30.0
    heartbeat_interval: float = 60.0
    reconnect_interval: float = 10.0
    metrics_interval: float = 60.0
    sync_interval: float = 60.0
    # Heartbeats in a row that may be skipped because a report or sync the Manager
    # counted as liveness was acknowledged within the interval (daemon/manager_client.py);
    # 0: heartbeat every interval, as a seed Daemon does.
    heartbeat_max_skip: int = 2
    tls: TLSSettings = field(default_factory=TLSSettings)

    @property
    def addresses(self) -> tuple[str, ...]:
        """The entries of ``address``: ``"a:1, b:2"`` → ``("a:1", "b:2")``."""
        return manager_addresses(self.address)


@dataclass(frozen=True)
class SpecPolicy:
    """``[specs]``: whether this host runs central specs, and what they may run."""

    enabled: bool = True
    # fnmatch globs for argv[0] resolved to an absolute path; () = any executable.
    allow_commands: tuple[str, ...] = ()
    # Users central agents may run as; () = any user but root.
    allow_users: tuple[str, ...] = ()
    # root (user "root", or no user while the Daemon runs as root) must be allowed explicitly.
    allow_root: bool = False


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the Daemon needs, validated; built once in ``__main__``."""

    node_id: str
    state_dir: Path
    manager: ManagerSettings = field(default_factory=ManagerSettings)
    labels: Mapping[str, str] = field(default_factory=dict)
    listen: str = "0.0.0.0:50052"
    advertise: str = ""
    grpc_limits: H2Limits = field(default_factory=H2Limits)
    agent_socket: str = ""
    agent_check_peer: bool = True
    # The largest agent-API request taken without the agent's id and token in metadata.
    agent_max_bytes_without_metadata: int = 64 * 1024
    # Where the agent socket goes when <state_dir>/run/agent.sock is too long for one.
    agent_fallback_dir: str = "/tmp"
    http_listen: str = ""
    # The metrics endpoint's connections at once, in total and from one address, and the
    # seconds a request has to arrive whole (common.conns).
    http_max_connections: int = 64
    http_max_connections_per_peer: int = 16
    http_read_timeout: float = 10.0
    history_interval: float = 10.0
    history_retention: float = 86400.0
    outbox_max_reports: int = 10000
    stop_agents_on_exit: bool = True
    log_level: str = "info"
    agents: tuple[AgentSpec, ...] = ()
    specs: SpecPolicy = field(default_factory=SpecPolicy)
    update_limits: JSONLimits = field(default_factory=JSONLimits)

    def __post_init__(self) -> None:
        if not ID_PATTERN.fullmatch(self.node_id):
            raise ConfigError(f"key 'node_id': {self.node_id!r} must be 1-128 of [A-Za-z0-9._-]")
        manager_addresses(self.manager.address)
        _split_hostport("grpc.listen", self.listen)
        if self.advertise:
            _split_hostport("grpc.advertise", self.advertise)
        if self.http_listen:
            _split_hostport("http.listen", self.http_listen)
        for key in ("max_connections", "max_connections_per_peer", "read_timeout"):
            if not getattr(self, f"http_{key}") > 0:
                raise ConfigError(f"key 'http.{key}' must be > 0")
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
        if not 0 <= m.heartbeat_max_skip <= MAX_HEARTBEAT_SKIP:
            raise ConfigError(
                f"key 'manager.heartbeat_max_skip' must be between 0 and {MAX_HEARTBEAT_SKIP} "
                f"(heartbeats in a row a report may replace), got {m.heartbeat_max_skip}"
            )
        if m.tls.enabled:
            for key in ("cert_file", "key_file", "ca_file"):
                if not getattr(m.tls, key):
                    raise ConfigError(
                        f"key 'manager.tls.{key}' is required (or --insecure for development)"
                    )
        if not 0 < m.tls.renew_at < 1:
            raise ConfigError(
                "key 'manager.tls.renew_at' must be a fraction of the lifetime between 0 and 1"
            )
        if not m.tls.renew_check_interval > 0:
            raise ConfigError("key 'manager.tls.renew_check_interval' must be > 0")
        if not self.history_interval > 0 or self.history_retention < self.history_interval:
            raise ConfigError(
                "keys 'history.interval'/'history.retention': need 0 < interval <= retention"
            )
        if self.outbox_max_reports < 1:
            raise ConfigError("key 'outbox.max_reports' must be >= 1")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"key 'log.level' must be one of {', '.join(LOG_LEVELS)}")
        if not Path(self.agent_fallback_dir).is_absolute():
            raise ConfigError("key 'agent_api.fallback_dir' must be an absolute path")
        if not 1024 <= self.agent_max_bytes_without_metadata <= 4 * 1024 * 1024:
            raise ConfigError(
                "key 'agent_api.max_request_bytes_without_metadata' must be within "
                f"1024..4194304, not {self.agent_max_bytes_without_metadata}"
            )
        # What the Daemon reports must be what the Manager accepts: refused here, with the
        # key, rather than by the Manager on every registration or sync.
        try:
            check_labels("labels", self.labels)
        except InvalidArgument as exc:
            raise ConfigError(f"key 'labels': {exc}") from None
        seen: set[str] = set()
        for agent in self.agents:
            if agent.id in seen:
                raise ConfigError(f"agent {agent.id!r}: key 'id' is declared twice")
            seen.add(agent.id)
            for key in ("type", "version"):
                try:
                    check_label(key, getattr(agent, key), max_len=MAX_LABEL_LEN)
                except InvalidArgument as exc:
                    raise ConfigError(f"agent {agent.id!r}: key {key!r}: {exc}") from None

    @property
    def tls_enabled(self) -> bool:
        return self.manager.tls.enabled


def split_hostport(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port)."""
    return _split_hostport("address", text)


def _split_hostport(key: str, text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"key {key!r}: {text!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


MAX_MANAGER_ADDRESSES = 32
_HOST = re.compile(r"[A-Za-z0-9._\-]+|\[[0-9A-Fa-f:.%\w]+\]|[0-9A-Fa-f:.]+")


def manager_addresses(text: str) -> tuple[str, ...]:
    """Check ``manager.address`` (``HOST:PORT``, or several comma-separated) and return
    its entries; :class:`ConfigError` naming the key and the entry when one is wrong."""
    key = "manager.address"
    entries = tuple(part.strip() for part in text.split(","))
    if not text.strip():
        raise ConfigError(f"key {key!r} is empty: give HOST:PORT, or a list of them")
    if "" in entries:
        raise ConfigError(f"key {key!r}: {text!r} has an empty entry")
    if len(entries) > MAX_MANAGER_ADDRESSES:
        raise ConfigError(
            f"key {key!r} lists {len(entries)} addresses (at most {MAX_MANAGER_ADDRESSES})"
        )
    for entry in entries:
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not _HOST.fullmatch(host):
            raise ConfigError(f"key {key!r}: {entry!r} is not HOST:PORT")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"key {key!r}: {entry!r}: the port must be 1-65535")
    seen: set[str] = set()
    for entry in entries:
        if entry in seen:
            raise ConfigError(f"key {key!r} lists {entry!r} twice")
        seen.add(entry)
    return entries


# ---- parsing ----

_SCHEMA: dict[str, Any] = {
    "node_id": str,
    "labels": dict,
    "state_dir": str,
    "stop_agents_on_exit": bool,
    "manager": {
        "address": "addresses",
        "timeout": "duration",
        "heartbeat_interval": "duration",
        "reconnect_interval": "duration",
        "metrics_interval": "duration",
        "sync_interval": "duration",
        "heartbeat_max_skip": int,
        "tls": {
            "enabled": bool,
            "cert_file": str,
            "key_file": str,
            "ca_file": str,
            "renew": bool,
            "renew_at": float,
            "renew_check_interval": "duration",
        },
    },
    "grpc": {
        "listen": str,
        "advertise": str,
        # [grpc.limits]: HTTP/2 bounds against hostile peers (common/h2limits.py).
        "limits": {
            f.name: ("duration" if f.type in (float, "float") else int) for f in fields(H2Limits)
        },
    },
    "agent_api": {
        "socket": str,
        "check_peer": bool,
        "fallback_dir": str,
        "max_request_bytes_without_metadata": int,
    },
    "http": {
        "listen": str,
        "max_connections": int,
        "max_connections_per_peer": int,
        "read_timeout": "duration",
    },
    "history": {"interval": "duration", "retention": "duration"},
    "outbox": {"max_reports": int},
    "log": {"level": str},
    "updates": {"max_config_chars": int, "max_config_depth": int},
    "specs": {"enabled": bool, "allow_commands": list, "allow_users": list, "allow_root": bool},
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
            out[key] = parse_duration_value(name, value)
        elif kind == "addresses":
            out[key] = _address_list(name, value)
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"key {name!r} must be an integer")
        elif kind is not int and not isinstance(value, kind):
            raise ConfigError(f"key {name!r} must be of type {kind.__name__}")
        else:
            out[key] = value
    return out


def _address_list(name: str, value: Any) -> str:
    """``"a:1"``, ``"a:1,b:2"`` or ``["a:1", "b:2"]`` → ``"a:1,b:2"`` (checked later)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        if not value:
            raise ConfigError(f"key {name!r} is an empty list: give at least one HOST:PORT")
        return ",".join(value)
    raise ConfigError(f"key {name!r} must be a HOST:PORT string or a list of them")


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
    return from_mapping(merged, base_dir=base_dir, env=env)


def _limits(table: Mapping[str, Any]) -> H2Limits:
    try:
        return H2Limits(**table)
    except ValueError as exc:
        raise ConfigError(f"key 'grpc.limits': {exc}") from None


def from_mapping(
    data: Mapping[str, Any],
    *,
    base_dir: Path | None = None,
    env: Mapping[str, str] = MappingProxyType({}),
    euid: int | None = None,
) -> DaemonConfig:
    """Validate a nested mapping shaped like the TOML file into a :class:`DaemonConfig`.

    Without ``state_dir`` the state goes where a service keeps it (:mod:`common.paths`,
    from ``env`` and ``euid``): /var/lib/fleet/daemon as root, else
    $XDG_STATE_HOME/fleet/daemon-<node_id>."""
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
        renew=t.get("renew", True),
        renew_at=t.get("renew_at", TLSSettings.renew_at),
        renew_check_interval=t.get("renew_check_interval", TLSSettings.renew_check_interval),
    )
    manager = ManagerSettings(
        address=m.get("address", ManagerSettings.address),
        timeout=m.get("timeout", ManagerSettings.timeout),
        heartbeat_interval=m.get("heartbeat_interval", ManagerSettings.heartbeat_interval),
        reconnect_interval=m.get("reconnect_interval", ManagerSettings.reconnect_interval),
        metrics_interval=m.get("metrics_interval", ManagerSettings.metrics_interval),
        sync_interval=m.get("sync_interval", ManagerSettings.sync_interval),
        heartbeat_max_skip=m.get("heartbeat_max_skip", ManagerSettings.heartbeat_max_skip),
        tls=tls,
    )
    labels = d.get("labels", {})
    specs = d.get("specs", {})
    for key in ("allow_commands", "allow_users"):
        if not all(isinstance(v, str) and v for v in specs.get(key, [])):
            raise ConfigError(f"key 'specs.{key}' must be a list of non-empty strings")
    if not all(p.startswith("/") for p in specs.get("allow_commands", [])):
        raise ConfigError("key 'specs.allow_commands': patterns must be absolute paths")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ConfigError("key 'labels' must be a table of strings")
    updates = d.get("updates", {})
    try:
        update_limits = JSONLimits(
            max_chars=updates.get("max_config_chars", JSONLimits.max_chars),
            max_depth=updates.get("max_config_depth", JSONLimits.max_depth),
        )
    except ValueError:
        raise ConfigError(
            "keys 'updates.max_config_chars' / 'updates.max_config_depth' must be >= 2 / >= 1"
        ) from None
    agents_raw = d.get("agents", [])
    agents = tuple(parse_agent(i, raw) for i, raw in enumerate(agents_raw))
    agents = tuple(
        a if not a.cwd or Path(a.cwd).is_absolute() else _replace(a, cwd=path_of(a.cwd))
        for a in agents
    )
    state_dir = (
        Path(path_of(d.get("state_dir", "")))
        if d.get("state_dir")
        else paths.daemon_state_dir(node_id, env, os.geteuid() if euid is None else euid)
    )
    return DaemonConfig(
        node_id=node_id,
        state_dir=state_dir,
        manager=manager,
        labels=dict(labels),
        listen=d.get("grpc", {}).get("listen", DaemonConfig.listen),
        advertise=d.get("grpc", {}).get("advertise", ""),
        grpc_limits=_limits(d.get("grpc", {}).get("limits", {})),
        agent_socket=path_of(d.get("agent_api", {}).get("socket", "")),
        agent_check_peer=d.get("agent_api", {}).get("check_peer", True),
        agent_fallback_dir=d.get("agent_api", {}).get("fallback_dir", "/tmp"),
        agent_max_bytes_without_metadata=d.get("agent_api", {}).get(
            "max_request_bytes_without_metadata", 64 * 1024
        ),
        http_listen=d.get("http", {}).get("listen", ""),
        http_max_connections=d.get("http", {}).get(
            "max_connections", DaemonConfig.http_max_connections
        ),
        http_max_connections_per_peer=d.get("http", {}).get(
            "max_connections_per_peer", DaemonConfig.http_max_connections_per_peer
        ),
        http_read_timeout=d.get("http", {}).get("read_timeout", DaemonConfig.http_read_timeout),
        history_interval=d.get("history", {}).get("interval", DaemonConfig.history_interval),
        history_retention=d.get("history", {}).get("retention", DaemonConfig.history_retention),
        outbox_max_reports=d.get("outbox", {}).get("max_reports", DaemonConfig.outbox_max_reports),
        stop_agents_on_exit=d.get("stop_agents_on_exit", True),
        log_level=d.get("log", {}).get("level", "info").lower(),
        agents=agents,
        specs=SpecPolicy(
            enabled=specs.get("enabled", True),
            allow_commands=tuple(specs.get("allow_commands", ())),
            allow_users=tuple(specs.get("allow_users", ())),
            allow_root=specs.get("allow_root", False),
        ),
        update_limits=update_limits,
    )


def _replace(spec: AgentSpec, **changes: Any) -> AgentSpec:
    from dataclasses import replace

    return replace(spec, **changes)


# ---- loading a file, with errors that say where ----


def load_config_file(
    path: Path | None,
    env: Mapping[str, str],
    flags: Mapping[tuple[str, ...], Any],
) -> DaemonConfig:
    """The config from ``path`` (if any), then ``env``, then ``flags``.

    A mistake in the file raises :class:`ConfigError` naming the file and, when it can
    be found, the line: ``/etc/fleet/daemon.toml line 23: agent 'web': key 'autorestart'
    must be one of always, on-failure, never``. Used at start and by every reload, so
    both read the file the same way.
    """
    if path is None:
        return build_config({}, env, flags)
    try:
        text = path.read_bytes().decode()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(tomlpos.syntax_error(path, text, str(exc))) from None
    try:
        return build_config(data, env, flags)
    except ConfigError as exc:
        overridden = {".".join(p) for v, p in ENV_KEYS.items() if env.get(v)}
        overridden |= {".".join(p) for p, value in flags.items() if value is not None}
        key = tomlpos.key_in(str(exc))
        if key is not None and key[1] in overridden and key[0] is None:
            raise  # the value came from the environment or a flag, not the file
        line = tomlpos.locate(text, str(exc))
        where = f"{path} line {line}" if line else str(path)
        raise ConfigError(f"{where}: {exc}") from None


# ---- what a reload may change ----

_RESTART_KEYS: tuple[tuple[str, Callable[[DaemonConfig], Any]], ...] = (
    ("node_id", lambda c: c.node_id),
    ("state_dir", lambda c: c.state_dir),
    ("manager.address", lambda c: c.manager.address),
    ("manager.timeout", lambda c: c.manager.timeout),
    ("manager.heartbeat_interval", lambda c: c.manager.heartbeat_interval),
    ("manager.reconnect_interval", lambda c: c.manager.reconnect_interval),
    ("manager.metrics_interval", lambda c: c.manager.metrics_interval),
    ("manager.sync_interval", lambda c: c.manager.sync_interval),
    ("manager.heartbeat_max_skip", lambda c: c.manager.heartbeat_max_skip),
    ("manager.tls.enabled", lambda c: c.manager.tls.enabled),
    ("manager.tls.cert_file", lambda c: c.manager.tls.cert_file),
    ("manager.tls.key_file", lambda c: c.manager.tls.key_file),
    ("manager.tls.ca_file", lambda c: c.manager.tls.ca_file),
    ("manager.tls.renew", lambda c: c.manager.tls.renew),
    ("manager.tls.renew_at", lambda c: c.manager.tls.renew_at),
    ("manager.tls.renew_check_interval", lambda c: c.manager.tls.renew_check_interval),
    ("grpc.listen", lambda c: c.listen),
    ("grpc.advertise", lambda c: c.advertise),
    ("grpc.limits", lambda c: c.grpc_limits),
    ("agent_api.socket", lambda c: c.agent_socket),
    ("agent_api.check_peer", lambda c: c.agent_check_peer),
    ("agent_api.fallback_dir", lambda c: c.agent_fallback_dir),
    ("agent_api.max_request_bytes_without_metadata", lambda c: c.agent_max_bytes_without_metadata),
    ("http.listen", lambda c: c.http_listen),
    ("http.max_connections", lambda c: c.http_max_connections),
    ("http.max_connections_per_peer", lambda c: c.http_max_connections_per_peer),
    ("http.read_timeout", lambda c: c.http_read_timeout),
    ("history.interval", lambda c: c.history_interval),
    ("history.retention", lambda c: c.history_retention),
    ("outbox.max_reports", lambda c: c.outbox_max_reports),
)
# Reloadable: agents, labels, specs (policy), log.level, stop_agents_on_exit, updates.*.


def restart_needed(old: DaemonConfig, new: DaemonConfig) -> list[str]:
    """The keys that differ between ``old`` and ``new`` and only a Daemon restart applies."""
    return [key for key, get in _RESTART_KEYS if get(old) != get(new)]
