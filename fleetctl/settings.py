"""Connection settings: flags, then environment, then a config file, then defaults.

:func:`resolve` is the only code that reads the environment or the config file; it is
called from the command layer with ``os.environ`` and returns a frozen :class:`Settings`
that records, for each value, where it came from (``fleetctl config show`` prints that).

Config file (TOML, ``~/.config/fleet/fleetctl.toml``, or ``$FLEET_CONFIG``, or ``--config``)::

    manager = "10.0.0.5:50051"       # or several: ["10.0.0.5:50051", "10.0.0.6:50051"]
    ca = "/etc/fleet/ca.crt"          # relative paths are relative to the file
    cert = "/etc/fleet/admin.crt"
    key = "/etc/fleet/admin.key"
    timeout = "30s"
    insecure = false
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from common.addresses import AddressError, format_hostport, parse_address_list, split_hostport
from common.durations import parse_duration

from .errors import CliError, ExitCode, usage

if TYPE_CHECKING:
    from common.tls import TLSFiles

DEFAULT_MANAGER = "127.0.0.1:50051"
DEFAULT_MANAGER_PORT = 50051
DEFAULT_DAEMON_PORT = 50052
DEFAULT_TIMEOUT = "30s"

# Setting name -> (flag, environment variable).
FIELDS: dict[str, tuple[str, str]] = {
    "manager": ("--manager", "FLEET_MANAGER"),
    "ca": ("--ca", "FLEET_CA"),
    "cert": ("--cert", "FLEET_CERT"),
    "key": ("--key", "FLEET_KEY"),
    "timeout": ("--timeout", "FLEET_TIMEOUT"),
    "insecure": ("--insecure", "FLEET_INSECURE"),
}
_PATH_FIELDS = ("ca", "cert", "key")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Address:
    """A ``HOST:PORT`` to dial."""

    host: str
    port: int

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


@dataclass(frozen=True)
class AddressList:
    """The Managers to try, in order (``FLEET_MANAGER="host1:50051,host2:50051"``); each
    may be a DNS name with several records (:mod:`fleetctl.failover`)."""

    addresses: tuple[Address, ...]

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ValueError("an AddressList needs at least one address")

    @property
    def host(self) -> str:
        """The first address's host (what code written for one Manager dials)."""
        return self.addresses[0].host

    @property
    def port(self) -> int:
        return self.addresses[0].port

    def __str__(self) -> str:
        return ",".join(str(a) for a in self.addresses)


def parse_address(text: str, *, default_port: int, what: str = "address") -> Address:
    """``host``, ``host:port`` or ``[v6]:port``; a usage error naming ``what`` otherwise."""
    try:
        return Address(*split_hostport(text, default_port=default_port))
    except AddressError as exc:
        raise usage(f"invalid {what} {text!r}: {exc.reason}") from None


def parse_addresses(
    text: str, *, default_port: int, what: str = "address", source: str = ""
) -> AddressList:
    """One address or several, comma-separated; a usage error naming the bad entry (and
    ``source``, where the text came from)."""
    try:
        entries = parse_address_list(text, default_port=default_port)
    except AddressError as exc:
        where = f" in {text!r}" if exc.entry != text else ""
        origin = f" ({source})" if source else ""
        raise usage(f"invalid {what} {exc.entry!r}{where}{origin}: {exc.reason}") from None
    return AddressList(tuple(Address(*split_hostport(e)) for e in entries))


@dataclass(frozen=True)
class Settings:
    """What a command connects with, and where each value came from."""

    manager: AddressList
    ca: Path | None
    cert: Path | None
    key: Path | None
    timeout: float
    insecure: bool
    config_file: Path | None
    sources: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise usage("timeout must be greater than zero")

    def tls_files(self) -> TLSFiles:
        """The ``common.tls.TLSFiles`` to present, or a usage error naming what is missing."""
        from common.tls import TLSFiles

        missing = [name for name in _PATH_FIELDS if getattr(self, name) is None]
        if missing:
            hints = ", ".join(f"{FIELDS[m][0]} / {FIELDS[m][1]}" for m in missing)
            raise usage(
                f"no {'/'.join(missing)} file configured: set {hints}, or put them in "
                "the config file (see 'fleetctl config show'), or use --insecure"
            )
        for name in _PATH_FIELDS:
            path = getattr(self, name)
            if not path.is_file():
                raise usage(f"{name} file not found: {path} (from {self.sources.get(name, '?')})")
        assert self.cert and self.key and self.ca
        return TLSFiles(cert_file=self.cert, key_file=self.key, ca_file=self.ca)


def default_config_path(environ: Mapping[str, str], home: Path) -> Path:
    """``$XDG_CONFIG_HOME/fleet/fleetctl.toml``, else ``~/.config/fleet/fleetctl.toml``."""
    base = environ.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(base) / "fleet" / "fleetctl.toml"


def _load_config(path: Path) -> dict[str, str]:
    import tomllib

    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise usage(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise usage(f"cannot read config file {path}: {exc}") from None
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise usage(
            f"config file {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})"
        )
    out: dict[str, str] = {}
    for name, value in data.items():
        if name == "manager" and isinstance(value, list):
            if not value or not all(isinstance(v, str) for v in value):
                raise usage(f"config file {path}: manager must be a HOST:PORT or a list of them")
            out[name] = ",".join(value)
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            out[name] = str(value)
        else:
            raise usage(f"config file {path}: {name} must be a string")
        if name in _PATH_FIELDS and out[name]:
            p = Path(out[name]).expanduser()
            out[name] = str(p if p.is_absolute() else (path.parent / p))
    return out


def resolve(
    flags: Mapping[str, str | bool | None],
    *,
    environ: Mapping[str, str],
    home: Path,
    config_flag: str | None = None,
) -> Settings:
    """Build :class:`Settings`: flags > environment > config file > defaults."""
    if config_flag:
        config_path: Path | None = Path(config_flag).expanduser()
        config_source = "flag --config"
        explicit = True
    elif environ.get("FLEET_CONFIG"):
        config_path = Path(environ["FLEET_CONFIG"]).expanduser()
        config_source = "env FLEET_CONFIG"
        explicit = True
    else:
        config_path = default_config_path(environ, home)
        config_source = "default"
        explicit = False
    file_values: dict[str, str] = {}
    if config_path is not None and (explicit or config_path.is_file()):
        file_values = _load_config(config_path)
    elif not explicit:
        config_path = None

    raw: dict[str, str] = {}
    sources: dict[str, str] = {"config_file": config_source if config_path else "none"}
    defaults = {"manager": DEFAULT_MANAGER, "timeout": DEFAULT_TIMEOUT, "insecure": "false"}
    for name, (flag, env) in FIELDS.items():
        flag_value = flags.get(name)
        if flag_value not in (None, False, ""):
            raw[name] = "true" if flag_value is True else str(flag_value)
            sources[name] = f"flag {flag}"
        elif environ.get(env):
            raw[name] = environ[env]
            sources[name] = f"env {env}"
        elif name in file_values:
            raw[name] = file_values[name]
            sources[name] = f"config {config_path}"
        elif name in defaults:
            raw[name] = defaults[name]
            sources[name] = "default"
        else:
            sources[name] = "unset"

    insecure_text = raw["insecure"].strip().lower()
    if insecure_text not in _TRUE | _FALSE:
        raise usage(f"invalid insecure value {raw['insecure']!r} ({sources['insecure']})")
    try:
        timeout = parse_duration(raw["timeout"])
    except ValueError as exc:
        raise CliError(f"invalid timeout ({sources['timeout']}): {exc}", ExitCode.USAGE) from None

    def path(name: str) -> Path | None:
        return Path(raw[name]).expanduser() if raw.get(name) else None

    return Settings(
        manager=parse_addresses(
            raw["manager"],
            default_port=DEFAULT_MANAGER_PORT,
            what="manager address",
            source=sources["manager"],
        ),
        ca=path("ca"),
        cert=path("cert"),
        key=path("key"),
        timeout=timeout,
        insecure=insecure_text in _TRUE,
        config_file=config_path,
        sources=sources,
        raw=raw,
    )
