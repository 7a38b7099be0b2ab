"""Default directories (issue 13, item 4): conventional places, never the working
directory; the Daemon and the Manager say where they keep their data at start."""

from __future__ import annotations

from pathlib import Path

from harness.daemon import start_daemon_without_config
from harness.manager import start_manager

from common import paths
from daemon.config import from_mapping
from manager.config import load_config


def test_root_uses_etc_and_var_lib() -> None:
    assert paths.config_dir({}, 0) == Path("/etc/fleet")
    assert paths.daemon_state_dir("web-1", {}, 0) == Path("/var/lib/fleet/daemon")
    assert paths.manager_data_dir({}, 0) == Path("/var/lib/fleet/manager")


def test_users_get_their_xdg_directories() -> None:
    env = {"HOME": "/home/u"}
    assert paths.config_dir(env, 1000) == Path("/home/u/.config/fleet")
    assert paths.daemon_state_dir("web-1", env, 1000) == Path(
        "/home/u/.local/state/fleet/daemon-web-1"
    )
    assert paths.manager_data_dir(env, 1000) == Path("/home/u/.local/state/fleet/manager")
    env = {"HOME": "/home/u", "XDG_STATE_HOME": "/st", "XDG_CONFIG_HOME": "/cf"}
    assert paths.config_dir(env, 1000) == Path("/cf/fleet")
    assert paths.manager_data_dir(env, 1000) == Path("/st/fleet/manager")


def test_daemon_config_without_state_dir_uses_the_conventional_place() -> None:
    data = {"node_id": "web-1", "manager": {"tls": {"enabled": False}}}
    cfg = from_mapping(data, env={"HOME": "/home/u"}, euid=1000)
    assert cfg.state_dir == Path("/home/u/.local/state/fleet/daemon-web-1")
    assert from_mapping(data, euid=0).state_dir == Path("/var/lib/fleet/daemon")


def test_manager_default_data_dir_is_not_relative(tmp_path: Path) -> None:
    cfg = load_config(config_file=None, environ={}, overrides={"grpc.tls.enabled": False})
    assert Path(cfg.data_dir).is_absolute()
    assert Path(cfg.data_dir).name == "manager"


def test_the_daemon_says_where_its_state_is(tmp_path: Path, certs: Path) -> None:
    daemon = start_daemon_without_config(tmp_path, certs, node_id="node-a")
    try:
        assert f"state in {daemon.state_dir}" in daemon.output()
    finally:
        daemon.stop()


def test_the_manager_says_where_its_data_is(tmp_path: Path, certs: Path) -> None:
    mgr = start_manager(tmp_path, certs)
    try:
        assert f"data={tmp_path / 'manager-data' / 'manager.sqlite3'}" in mgr.output()
    finally:
        mgr.stop()
