"""Daemon configuration: defaults (the seed's), precedence file → env → flags, and bad
values refused at start with a message naming the agent and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import console_script, run_cli

from daemon.config import ConfigError, build_config, from_mapping

TLS = {"cert_file": "/c.crt", "key_file": "/c.key", "ca_file": "/ca.crt"}


def _cfg(**extra: object) -> dict:
    return {"node_id": "n1", "manager": {"tls": TLS}, **extra}


def test_defaults_follow_the_seed() -> None:
    cfg = from_mapping(_cfg(agents=[{"id": "a", "command": ["true"]}]))
    m = cfg.manager
    assert (m.timeout, m.heartbeat_interval, m.reconnect_interval) == (30.0, 60.0, 10.0)
    assert cfg.listen == "0.0.0.0:50052"
    assert cfg.history_interval == 10.0 and cfg.history_retention == 86400.0
    assert cfg.stop_agents_on_exit is True
    a = cfg.agents[0]
    assert (a.autostart, a.autorestart, a.start_seconds, a.stop_signal, a.stop_timeout) == (
        True,
        "on-failure",
        1.0,
        "TERM",
        10.0,
    )
    assert a.exit_codes == (0,)


def test_durations_and_values_parse() -> None:
    cfg = from_mapping(
        _cfg(
            manager={"timeout": "5s", "heartbeat_interval": "1m", "tls": TLS},
            history={"retention": "2h", "interval": 15},
            agents=[
                {
                    "id": "a",
                    "command": ["x"],
                    "stop_timeout": "1m30s",
                    "stop_signal": "SIGINT",
                    "exit_codes": [0, 2],
                    "config": {"k": [1, 2]},
                    "env": {"A": "1"},
                }
            ],
        )
    )
    assert cfg.manager.timeout == 5 and cfg.manager.heartbeat_interval == 60
    assert cfg.history_retention == 7200 and cfg.history_interval == 15
    a = cfg.agents[0]
    assert a.stop_timeout == 90 and a.stop_signal == "INT" and a.exit_codes == (0, 2)
    assert a.config == {"k": [1, 2]} and a.env == {"A": "1"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"agents": [{"id": "web", "command": ["x"], "autorestart": "sometimes"}]},
            "agent 'web': key 'autorestart'",
        ),
        (
            {"agents": [{"id": "web", "command": ["x"], "restart_policy": "always"}]},
            "agent 'web': unknown key 'restart_policy'",
        ),
        (
            {"agents": [{"id": "web", "command": "python app.py"}]},
            "agent 'web': key 'command' must be a list",
        ),
        (
            {"agents": [{"id": "web", "command": ["x"], "stop_timeout": "soon"}]},
            "agent 'web': key 'stop_timeout'",
        ),
        (
            {"agents": [{"id": "web", "command": ["x"], "stop_signal": "BOOM"}]},
            "agent 'web': key 'stop_signal'",
        ),
        (
            {"agents": [{"id": "web", "command": ["x"], "exit_codes": [300]}]},
            "agent 'web': key 'exit_codes'",
        ),
        (
            {"agents": [{"id": "web", "command": ["x"], "max_restarts": -1}]},
            "agent 'web': key 'max_restarts'",
        ),
        (
            {"agents": [{"id": "web", "command": ["x"]}, {"id": "web", "command": ["y"]}]},
            "agent 'web': key 'id' is declared twice",
        ),
        ({"agents": [{"command": ["x"]}]}, "agents[0]: key 'id' is required"),
        ({"agents": [{"id": "web"}]}, "agent 'web': key 'command' is required"),
        ({"managre": {}}, "unknown key 'managre'"),
        ({"manager": {"tls": {**TLS, "verify": True}}}, "unknown key 'manager.tls.verify'"),
        ({"manager": {"address": "nohost", "tls": TLS}}, "key 'manager.address'"),
        ({"manager": {"timeout": 0, "tls": TLS}}, "key 'manager.timeout' must be > 0"),
        ({"manager": {"tls": {"enabled": True}}}, "key 'manager.tls.cert_file' is required"),
        ({"outbox": {"max_reports": 0}}, "key 'outbox.max_reports'"),
    ],
)
def test_bad_values_name_the_agent_and_key(data: dict, message: str) -> None:
    merged = {"node_id": "n1", "manager": {"tls": TLS}, **data}
    with pytest.raises(ConfigError) as exc:
        from_mapping(merged)
    assert message in str(exc.value)


def test_precedence_file_then_env_then_flags() -> None:
    file_data = _cfg(manager={"address": "file:1", "tls": TLS}, grpc={"listen": "127.0.0.1:1"})
    env = {"FLEET_MANAGER": "env:2", "FLEET_DAEMON_LISTEN": "127.0.0.1:2"}
    cfg = build_config(file_data, env, {("grpc", "listen"): "127.0.0.1:3"})
    assert cfg.manager.address == "env:2"
    assert cfg.listen == "127.0.0.1:3"
    insecure = build_config(file_data, {}, {("manager", "tls", "enabled"): False})
    assert insecure.tls_enabled is False


def test_cli_refuses_bad_config_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(
        'node_id = "n1"\n[manager.tls]\nenabled = false\n'
        '[[agents]]\nid = "web"\ncommand = ["x"]\nautorestart = "maybe"\n'
    )
    result = run_cli([console_script("fleet-daemon"), "--config", str(path)], timeout=30)
    assert result.returncode == 2
    assert "agent 'web': key 'autorestart'" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run_cli([console_script("fleet-daemon"), "--config", str(tmp_path / "nope.toml")])
    assert missing.returncode == 2 and "cannot read config file" in missing.stderr


def test_agent_socket_path_defaults_and_long_state_dirs(tmp_path: Path) -> None:
    from daemon.app import agent_socket_path

    short = from_mapping(_cfg(state_dir=str(tmp_path / "s")))
    assert agent_socket_path(short) == tmp_path / "s" / "run" / "agent.sock"
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    long_cfg = from_mapping(_cfg(state_dir=str(deep)))
    path = agent_socket_path(long_cfg)
    assert len(str(path)) < 100 and str(path).startswith("/tmp/fleet-daemon-")
    assert agent_socket_path(from_mapping(_cfg(state_dir=str(deep)))) == path  # stable
    explicit = from_mapping(_cfg(agent_api={"socket": "/run/fleet/a.sock"}))
    assert agent_socket_path(explicit) == Path("/run/fleet/a.sock")
