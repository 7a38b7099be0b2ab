"""The Manager's configuration: one frozen dataclass, built once in ``__main__``.

Sources, later ones winning: built-in defaults, the TOML file (``--config``), environment
variables ``FLEET_MANAGER_<SECTION>_<KEY>`` (e.g. ``FLEET_MANAGER_DATABASE_URL``), then
command-line flags. :data:`KEYS` is the single table of every key: its TOML path, the
dataclass field it sets, its kind and its default (docs/manager.md lists the same table).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from common import paths
from common.durations import parse_duration
from common.h2limits import H2Limits
from common.tls import TLSFiles

ENV_PREFIX = "FLEET_MANAGER_"
# The Manager's own defaults among [grpc.limits]: one address may be a load balancer or
# a NAT in front of thousands of Daemons (the Daemon's port keeps H2Limits' 512).
MANAGER_LIMITS = {"max_connections_per_peer": 4096}
# More worker processes than this is a typo, not a machine.
MAX_WORKERS = 64


def split_host_port(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); ``ValueError`` naming ``what`` when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


_DB_SCHEMES = ("sqlite://", "postgres://", "postgresql://", "asyncpg://")


@dataclass(frozen=True)
class ManagerConfig:
    """Everything the Manager needs to know, validated once."""

    # gRPC side.
    grpc_listen: str = "0.0.0.0:50051"
    tls_enabled: bool = True
    cert_file: str = "certs/manager.crt"
    key_file: str = "certs/manager.key"
    ca_file: str = "certs/ca.crt"
    max_message_bytes: int = 4 * 1024 * 1024
    # A TLS handshake not finished within this is dropped (and logged).
    tls_handshake_timeout: float = 10.0
    # Load shedding: RegisterNode calls in progress at once; more get UNAVAILABLE at once.
    max_concurrent_registrations: int = 256
    # Overload ([overload], common/overload.py): calls in progress per method; more are
    # refused at once, before their request is read, with "retry in N s" (N = retry_after
    # x [1, 2)). Heartbeats get a large budget of their own so that bulk metrics queued
    # behind the store never make a node look dead.
    heartbeat_in_flight: int = 2048
    report_metrics_in_flight: int = 32
    sync_in_flight: int = 256
    # Per admin method that reads or writes the store.
    admin_in_flight: int = 64
    retry_after: float = 1.0
    # HTTP/2 bounds against hostile peers ([grpc.limits], common/h2limits.py).
    grpc_limits: H2Limits = field(default_factory=lambda: H2Limits(**MANAGER_LIMITS))
    # HTTP side ("" disables it).
    http_listen: str = "127.0.0.1:8080"
    http_read_timeout: float = 30.0
    http_write_timeout: float = 30.0
    # Connections at once on the HTTP port, in total and from one address, and the
    # seconds a request's line and headers have to arrive (manager/http.py).
    http_max_connections: int = 256
    http_max_connections_per_peer: int = 64
    http_header_timeout: float = 10.0
    # Storage.
    # Default: /var/lib/fleet/manager as root, else $XDG_STATE_HOME/fleet/manager.
    data_dir: str = field(
        default_factory=lambda: str(paths.manager_data_dir(os.environ, os.geteuid()))
    )
    database_url: str = ""
    # Liveness.
    grace: float | None = None
    grace_factor: float = 3.0
    default_heartbeat_interval: float = 60.0
    sweep_interval: float = 1.0
    # The event loop running a timer later than this counts as a stall of the Manager,
    # not held against any node's liveness.
    stall_threshold: float = 0.5
    # Mass silence: at least this many online nodes, and this share of them, silent at
    # once → hold their offline transitions this long (0 disables the hold).
    mass_offline_share: float = 0.5
    mass_offline_min_nodes: int = 5
    mass_offline_hold: float = 300.0
    # Heartbeat coalescing.
    heartbeat_flush_interval: float = 1.0
    heartbeat_max_batch: int = 5000
    # "buffered": answer once the heartbeat is in the flush buffer (SIGKILL loses at most
    # one flush interval); "flushed": answer once the flush carrying it has committed.
    heartbeat_ack: str = "buffered"
    # Host metrics.
    metrics_retention: float = 7 * 86400.0
    retention_interval: float = 600.0
    retention_batch: int = 5000
    max_samples_per_report: int = 1000
    max_values_per_sample: int = 64
    # Per-node ingest quota: samples per window (0: none). At least one full report.
    metrics_node_quota: int = 12_000
    metrics_node_quota_window: float = 600.0
    # Node events: per-node quota (events per window, 0: none) and retention.
    events_node_quota: int = 60
    events_node_quota_window: float = 3600.0
    events_retention: float = 30 * 86400.0
    # Agent events derived from syncs: per-agent quota (events per window, 0: none).
    events_agent_quota: int = 30
    events_agent_quota_window: float = 3600.0
    # Manager -> Daemon client pool.
    daemon_call_timeout: float = 30.0
    daemon_connect_timeout: float = 5.0
    daemon_connect_attempts: int = 3
    daemon_backoff_initial: float = 1.0
    daemon_backoff_max: float = 120.0
    # Desired state: drift sweep, rollout steps, ApplySpecs calls in flight at once.
    spec_sweep_interval: float = 60.0
    rollout_interval: float = 1.0
    spec_push_concurrency: int = 64
    # Onboarding ([enroll], docs/security.md). The enrollment listener serves
    # EnrollService (GetCA, Join) with server-only TLS ("" disables it; never without TLS).
    enroll_listen: str = "0.0.0.0:50053"
    # HOST:PORT joining hosts are told to use (`tokens create` prints it); "" = derived
    # from enroll.listen and this host's name.
    enroll_advertise: str = ""
    # Manager gRPC addresses written to a joined host's daemon.toml (comma-separated);
    # "" = derived from grpc.listen and this host's name.
    enroll_manager_addresses: str = ""
    # The issuing CA that signs node certificates ("" = none: joins and renewals are
    # refused, saying so). An intermediate from `certgen intermediate`, or the root.
    enroll_ca_cert: str = ""
    enroll_ca_key: str = ""
    # Lifetime of the node certificates this Manager signs; Daemons renew at 2/3 of it.
    node_cert_lifetime: float = 7 * 86400.0
    # A join token's TTL when `tokens create` gives none, and the longest allowed.
    join_token_ttl: float = 3600.0
    join_token_max_ttl: float = 30 * 86400.0
    # Join attempts per source address per minute (failed ones count double).
    join_rate_per_minute: int = 30
    # How often the revocation list is re-read from the database (other Managers'
    # revocations reach this one within it).
    revocation_refresh: float = 5.0
    # Several Managers on one PostgreSQL (docs/manager.md, Several Managers): this
    # Manager's name in logs and pg_stat_activity ("" = host:grpc-port), how often one
    # without the duties lease tries to take it (and its holder checks it still holds
    # it), and how long a check may take before the holder gives the lease up.
    manager_name: str = ""
    lease_retry_interval: float = 1.0
    lease_check_timeout: float = 2.0
    # Process. ``workers``: worker processes sharing the ports (manager/workers.py), a
    # number or "auto" (one per core this process may run on); more than one needs
    # PostgreSQL.
    workers: str = "1"
    event_loop: str = "auto"
    log_level: str = "info"

    def __post_init__(self) -> None:
        split_host_port(self.grpc_listen, "grpc.listen")
        if self.http_listen:
            split_host_port(self.http_listen, "server.listen")
        positive = (
            "http_read_timeout",
            "http_write_timeout",
            "http_max_connections",
            "http_max_connections_per_peer",
            "http_header_timeout",
            "grace_factor",
            "default_heartbeat_interval",
            "sweep_interval",
            "heartbeat_flush_interval",
            "metrics_retention",
            "retention_interval",
            "daemon_call_timeout",
            "daemon_connect_timeout",
            "daemon_backoff_initial",
            "spec_sweep_interval",
            "rollout_interval",
            "tls_handshake_timeout",
            "stall_threshold",
            "metrics_node_quota_window",
            "events_node_quota_window",
            "events_agent_quota_window",
            "events_retention",
            "node_cert_lifetime",
            "join_token_ttl",
            "join_token_max_ttl",
            "revocation_refresh",
            "retry_after",
            "lease_retry_interval",
            "lease_check_timeout",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{_key_of(name)} must be > 0, got {getattr(self, name)}")
        if self.grace is not None and self.grace <= 0:
            raise ValueError(f"liveness.grace must be > 0, got {self.grace}")
        ints = (
            "max_message_bytes",
            "max_concurrent_registrations",
            "heartbeat_max_batch",
            "retention_batch",
            "max_samples_per_report",
            "max_values_per_sample",
            "daemon_connect_attempts",
            "spec_push_concurrency",
            "join_rate_per_minute",
            "heartbeat_in_flight",
            "report_metrics_in_flight",
            "sync_in_flight",
            "admin_in_flight",
        )
        for name in ints:
            if getattr(self, name) < 1:
                raise ValueError(f"{_key_of(name)} must be >= 1, got {getattr(self, name)}")
        for name in (
            "metrics_node_quota",
            "events_node_quota",
            "events_agent_quota",
            "mass_offline_hold",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{_key_of(name)} must be >= 0, got {getattr(self, name)}")
        if 0 < self.metrics_node_quota < self.max_samples_per_report:
            raise ValueError(
                f"metrics.node_quota ({self.metrics_node_quota}) must hold at least one full "
                f"report (metrics.max_samples_per_report = {self.max_samples_per_report}), "
                "or be 0 for no quota"
            )
        if not 0 < self.mass_offline_share <= 1:
            raise ValueError(
                f"liveness.mass_offline_share must be in (0, 1], got {self.mass_offline_share}"
            )
        if self.mass_offline_min_nodes < 1:
            raise ValueError(
                f"liveness.mass_offline_min_nodes must be >= 1, got {self.mass_offline_min_nodes}"
            )
        if self.daemon_backoff_max < self.daemon_backoff_initial:
            raise ValueError("daemons.backoff_max must be >= daemons.backoff_initial")
        if self.heartbeat_ack not in {"buffered", "flushed"}:
            raise ValueError(f"heartbeats.ack must be buffered or flushed: {self.heartbeat_ack!r}")
        if self.workers != "auto" and not (
            self.workers.isdigit() and 1 <= int(self.workers) <= MAX_WORKERS
        ):
            raise ValueError(
                f"manager.workers must be auto or a number from 1 to {MAX_WORKERS}, "
                f"got {self.workers!r}"
            )
        if self.worker_count > 1 and not self.db_url.startswith(_DB_SCHEMES[1:]):
            asked = self.workers if self.workers != "auto" else f"auto ({self.worker_count})"
            raise ValueError(
                f"manager.workers = {asked} needs "
                "PostgreSQL (database.url = postgres://…): an SQLite database takes one "
                "Manager process; use workers = 1, or move to PostgreSQL"
            )
        if self.event_loop not in {"auto", "asyncio", "uvloop"}:
            raise ValueError(
                f"manager.event_loop must be auto, asyncio or uvloop: {self.event_loop!r}"
            )
        if self.log_level.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError(f"log.level must be debug, info, warning or error: {self.log_level!r}")
        if self.database_url and not self.database_url.startswith(_DB_SCHEMES):
            # Tortoise would fail deep in start-up with a traceback; name the key instead.
            scheme = self.database_url.split("://", 1)[0] if "://" in self.database_url else ""
            raise ValueError(
                f"database.url must be sqlite://PATH or postgres://USER@HOST:PORT/DB, "
                f"got scheme {scheme!r}"
            )
        if self.tls_enabled:
            TLSFiles(Path(self.cert_file), Path(self.key_file), Path(self.ca_file))
        if self.enroll_listen:
            split_host_port(self.enroll_listen, "enroll.listen")
        if self.enroll_advertise:
            split_host_port(self.enroll_advertise, "enroll.advertise")
        if bool(self.enroll_ca_cert) != bool(self.enroll_ca_key):
            raise ValueError("enroll.ca_cert and enroll.ca_key go together: set both or neither")
        if self.node_cert_lifetime < 3600:
            raise ValueError(
                f"enroll.node_cert_lifetime must be at least 1h, got {self.node_cert_lifetime:g} s"
            )
        if self.join_token_ttl > self.join_token_max_ttl:
            raise ValueError("enroll.token_ttl must be <= enroll.token_max_ttl")
        needed = self.max_message_bytes + 5 + self.grpc_limits.connection_window
        if self.grpc_limits.buffer_per_connection < needed:
            raise ValueError(
                f"grpc.limits.buffer_per_connection must be >= grpc.max_message_bytes + 5 + "
                f"grpc.limits.connection_window = {needed}"
            )

    @property
    def db_url(self) -> str:
        """The Tortoise database URL (default: an SQLite file in the data directory)."""
        if self.database_url:
            return self.database_url
        return f"sqlite://{Path(self.data_dir).absolute() / 'manager.sqlite3'}"

    @property
    def worker_count(self) -> int:
        """``workers`` as a number: "auto" is one per core this process may run on."""
        if self.workers == "auto":
            return min(len(os.sched_getaffinity(0)), MAX_WORKERS)
        return int(self.workers)

    @property
    def tls_files(self) -> TLSFiles:
        return TLSFiles(Path(self.cert_file), Path(self.key_file), Path(self.ca_file))

    def grace_for(self, heartbeat_interval: float) -> float:
        """Liveness grace for a node reporting ``heartbeat_interval`` seconds (0 = unknown)."""
        if self.grace is not None:
            return self.grace
        interval = heartbeat_interval if heartbeat_interval > 0 else self.default_heartbeat_interval
        return self.grace_factor * interval


# TOML path -> (field, kind). Kinds: str, bool, int, float, duration, optional duration,
# workers (a number or "auto").
KEYS: dict[str, tuple[str, str]] = {
    "grpc.listen": ("grpc_listen", "str"),
    "grpc.max_message_bytes": ("max_message_bytes", "int"),
    "grpc.max_concurrent_registrations": ("max_concurrent_registrations", "int"),
    "overload.heartbeat_in_flight": ("heartbeat_in_flight", "int"),
    "overload.report_metrics_in_flight": ("report_metrics_in_flight", "int"),
    "overload.sync_in_flight": ("sync_in_flight", "int"),
    "overload.admin_in_flight": ("admin_in_flight", "int"),
    "overload.retry_after": ("retry_after", "duration"),
    "grpc.tls.enabled": ("tls_enabled", "bool"),
    "grpc.tls.cert_file": ("cert_file", "str"),
    "grpc.tls.key_file": ("key_file", "str"),
    "grpc.tls.ca_file": ("ca_file", "str"),
    "grpc.tls.handshake_timeout": ("tls_handshake_timeout", "duration"),
    "server.listen": ("http_listen", "str"),
    "server.read_timeout": ("http_read_timeout", "duration"),
    "server.write_timeout": ("http_write_timeout", "duration"),
    "server.max_connections": ("http_max_connections", "int"),
    "server.max_connections_per_peer": ("http_max_connections_per_peer", "int"),
    "server.header_timeout": ("http_header_timeout", "duration"),
    "manager.data_dir": ("data_dir", "str"),
    "manager.workers": ("workers", "workers"),
    "manager.event_loop": ("event_loop", "str"),
    "manager.name": ("manager_name", "str"),
    "lease.retry_interval": ("lease_retry_interval", "duration"),
    "lease.check_timeout": ("lease_check_timeout", "duration"),
    "database.url": ("database_url", "str"),
    "liveness.grace": ("grace", "duration?"),
    "liveness.grace_factor": ("grace_factor", "float"),
    "liveness.default_heartbeat_interval": ("default_heartbeat_interval", "duration"),
    "liveness.sweep_interval": ("sweep_interval", "duration"),
    "liveness.stall_threshold": ("stall_threshold", "duration"),
    "liveness.mass_offline_share": ("mass_offline_share", "float"),
    "liveness.mass_offline_min_nodes": ("mass_offline_min_nodes", "int"),
    "liveness.mass_offline_hold": ("mass_offline_hold", "duration"),
    "heartbeats.flush_interval": ("heartbeat_flush_interval", "duration"),
    "heartbeats.max_batch": ("heartbeat_max_batch", "int"),
    "heartbeats.ack": ("heartbeat_ack", "str"),
    "metrics.retention": ("metrics_retention", "duration"),
    "metrics.retention_interval": ("retention_interval", "duration"),
    "metrics.retention_batch": ("retention_batch", "int"),
    "metrics.max_samples_per_report": ("max_samples_per_report", "int"),
    "metrics.max_values_per_sample": ("max_values_per_sample", "int"),
    "metrics.node_quota": ("metrics_node_quota", "int"),
    "metrics.node_quota_window": ("metrics_node_quota_window", "duration"),
    "events.node_quota": ("events_node_quota", "int"),
    "events.node_quota_window": ("events_node_quota_window", "duration"),
    "events.retention": ("events_retention", "duration"),
    "events.agent_quota": ("events_agent_quota", "int"),
    "events.agent_quota_window": ("events_agent_quota_window", "duration"),
    "daemons.call_timeout": ("daemon_call_timeout", "duration"),
    "daemons.connect_timeout": ("daemon_connect_timeout", "duration"),
    "daemons.connect_attempts": ("daemon_connect_attempts", "int"),
    "daemons.backoff_initial": ("daemon_backoff_initial", "duration"),
    "daemons.backoff_max": ("daemon_backoff_max", "duration"),
    "specs.sweep_interval": ("spec_sweep_interval", "duration"),
    "specs.rollout_interval": ("rollout_interval", "duration"),
    "specs.push_concurrency": ("spec_push_concurrency", "int"),
    "enroll.listen": ("enroll_listen", "str"),
    "enroll.advertise": ("enroll_advertise", "str"),
    "enroll.manager_addresses": ("enroll_manager_addresses", "str"),
    "enroll.ca_cert": ("enroll_ca_cert", "str"),
    "enroll.ca_key": ("enroll_ca_key", "str"),
    "enroll.node_cert_lifetime": ("node_cert_lifetime", "duration"),
    "enroll.token_ttl": ("join_token_ttl", "duration"),
    "enroll.token_max_ttl": ("join_token_max_ttl", "duration"),
    "enroll.join_rate_per_minute": ("join_rate_per_minute", "int"),
    "grpc.tls.revocation_refresh": ("revocation_refresh", "duration"),
    "log.level": ("log_level", "str"),
}


# [grpc.limits]: one key per H2Limits field, gathered into ManagerConfig.grpc_limits.
LIMIT_KEYS: dict[str, tuple[str, str]] = {
    f"grpc.limits.{f.name}": (f.name, "float" if f.type in (float, "float") else "int")
    for f in fields(H2Limits)
}


def _key_of(field_name: str) -> str:
    for key, (name, _) in KEYS.items():
        if name == field_name:
            return key
    return field_name


def env_name(key: str) -> str:
    """``database.url`` → ``FLEET_MANAGER_DATABASE_URL``."""
    return ENV_PREFIX + key.replace(".", "_").upper()


def _convert(key: str, kind: str, value: Any) -> Any:
    try:
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError
            return value
        if kind == "workers":  # a number, or "auto"
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise TypeError
            return str(value).strip().lower()
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on"}:
                return True
            if isinstance(value, str) and value.lower() in {"0", "false", "no", "off"}:
                return False
            raise TypeError
        if kind == "int":
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if kind == "float":
            return float(value)
        if kind.startswith("duration"):
            if kind.endswith("?") and value in ("", None):
                return None
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            return parse_duration(str(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key}: invalid {kind.rstrip('?')} value {value!r}") from exc
    raise AssertionError(kind)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, key + "."))
        else:
            out[key] = value
    return out


def load_config(
    *,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ManagerConfig:
    """Build the config from TOML, then environment, then ``overrides`` (TOML keys → value).

    Unknown TOML keys are an error (a typo should not silently keep a default).
    """
    values: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, "rb") as fh:
            data = _flatten(tomllib.load(fh))
        unknown = sorted(set(data) - set(KEYS) - set(LIMIT_KEYS))
        if unknown:
            raise ValueError(f"{config_file}: unknown key(s): {', '.join(unknown)}")
        for key, value in data.items():
            _set(values, limits, key, value)
    env = os.environ if environ is None else environ
    for key in (*KEYS, *LIMIT_KEYS):
        if env_name(key) in env:
            _set(values, limits, key, env[env_name(key)])
    for key, value in (overrides or {}).items():
        _set(values, limits, key, value)
    if limits:
        values["grpc_limits"] = H2Limits(**{**MANAGER_LIMITS, **limits})
    return ManagerConfig(**values)


def _set(values: dict[str, Any], limits: dict[str, Any], key: str, value: Any) -> None:
    if key in LIMIT_KEYS:
        name, kind = LIMIT_KEYS[key]
        limits[name] = _convert(key, kind, value)
    else:
        name, kind = KEYS[key]
        values[name] = _convert(key, kind, value)


def with_changes(config: ManagerConfig, **changes: Any) -> ManagerConfig:
    """A copy of ``config`` with fields replaced (validated again)."""
    return replace(config, **changes)


def defaults_table() -> list[tuple[str, str, Any]]:
    """(TOML key, env var, default) for documentation."""
    defaults = {f.name: f.default for f in fields(ManagerConfig)}
    limits = H2Limits(**MANAGER_LIMITS)
    return [(key, env_name(key), defaults[name]) for key, (name, _) in KEYS.items()] + [
        (key, env_name(key), getattr(limits, name)) for key, (name, _) in LIMIT_KEYS.items()
    ]
