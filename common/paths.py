"""Where Fleet keeps its files when the configuration does not say: the conventional
places, so a service started from ``/`` never writes to ``/.fleet``.

As root (a system service): configuration in ``/etc/fleet``, state in ``/var/lib/fleet``
(``daemon/`` and ``manager/`` below it). Otherwise the user's XDG directories:
``$XDG_CONFIG_HOME/fleet`` (``~/.config/fleet``) and ``$XDG_STATE_HOME/fleet``
(``~/.local/state/fleet``), where a Daemon's directory is named after its node
(``daemon-<node_id>``): one user may run several for development.

The entry points pass ``os.environ`` and ``os.geteuid()``; nothing here reads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def config_dir(env: Mapping[str, str], euid: int) -> Path:
    """``/etc/fleet`` as root, else ``$XDG_CONFIG_HOME/fleet``."""
    if euid == 0:
        return Path("/etc/fleet")
    base = env.get("XDG_CONFIG_HOME") or str(_home(env) / ".config")
    return Path(base) / "fleet"


def state_dir(env: Mapping[str, str], euid: int) -> Path:
    """``/var/lib/fleet`` as root, else ``$XDG_STATE_HOME/fleet``."""
    if euid == 0:
        return Path("/var/lib/fleet")
    base = env.get("XDG_STATE_HOME") or str(_home(env) / ".local" / "state")
    return Path(base) / "fleet"


def daemon_state_dir(node_id: str, env: Mapping[str, str], euid: int) -> Path:
    """A Daemon's state directory: ``/var/lib/fleet/daemon`` as root, else
    ``$XDG_STATE_HOME/fleet/daemon-<node_id>``."""
    base = state_dir(env, euid)
    return base / "daemon" if euid == 0 else base / f"daemon-{node_id}"


def manager_data_dir(env: Mapping[str, str], euid: int) -> Path:
    """The Manager's data directory (its SQLite database): ``<state dir>/manager``."""
    return state_dir(env, euid) / "manager"


def _home(env: Mapping[str, str]) -> Path:
    return Path(env["HOME"]) if env.get("HOME") else Path.home()
