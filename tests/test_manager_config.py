"""Manager configuration (TOML → environment → flags), entry points and shutdown."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from grpclib.client import Channel
from harness import async_wait_until, run_cli, wait_until
from harness.manager import (
    manager_rpc,
    node_channel,
    start_manager,
    stored_nodes,
    write_manager_config,
)

from manager.config import (
    KEYS,
    LIMIT_KEYS,
    ManagerConfig,
    defaults_table,
    env_name,
    load_config,
)
from schema import admin_pb, manager_pb


def test_precedence_toml_env_flags(tmp_path: Path) -> None:
    toml = tmp_path / "m.toml"
    toml.write_text(
        '[grpc]\nlisten = "127.0.0.1:6000"\n[database]\nurl = "sqlite:///from-file"\n'
        '[liveness]\ngrace = "2m"\n[heartbeats]\nflush_interval = 0.5\n'
    )
    env = {env_name("database.url"): "postgres://from-env/db", "FLEET_MANAGER_LOG_LEVEL": "debug"}
    cfg = load_config(config_file=toml, environ=env, overrides={"grpc.listen": "127.0.0.1:7000"})
    assert cfg.grpc_listen == "127.0.0.1:7000"  # flag beats file
    assert cfg.database_url == "postgres://from-env/db"  # env beats file
    assert cfg.grace == 120.0  # durations accept "2m"
    assert cfg.heartbeat_flush_interval == 0.5
    assert cfg.log_level == "debug"
    assert cfg.http_listen == "127.0.0.1:8080"  # default
    assert cfg.grace_for(10) == 120.0


def test_defaults_and_derived_values() -> None:
    cfg = ManagerConfig()
    assert cfg.grpc_listen == "0.0.0.0:50051"
    assert cfg.daemon_call_timeout == 30.0
    assert cfg.metrics_retention == 7 * 86400
    assert cfg.grace_for(10) == 30.0  # 3 x the Daemon's interval
    assert cfg.grace_for(0) == 180.0  # unknown interval: 3 x 60 s
    assert cfg.db_url.startswith("sqlite://") and cfg.db_url.endswith("manager.sqlite3")
    assert {key for key, _, _ in defaults_table()} == set(KEYS) | set(LIMIT_KEYS)
    assert cfg.grpc_limits.max_resets == 200


def test_grpc_limits_keys(tmp_path: Path) -> None:
    """[grpc.limits] in the file and FLEET_MANAGER_GRPC_LIMITS_* in the environment
    become the HTTP/2 limits; one that cannot hold a whole request is refused by name."""
    path = tmp_path / "m.toml"
    path.write_text("[grpc.limits]\nmax_resets = 50\nbody_stall_timeout = 2.5\n")
    cfg = load_config(
        config_file=path, environ={"FLEET_MANAGER_GRPC_LIMITS_MAX_PINGS": "7"}, overrides={}
    )
    assert (cfg.grpc_limits.max_resets, cfg.grpc_limits.max_pings) == (50, 7)
    assert cfg.grpc_limits.body_stall_timeout == 2.5
    path.write_text("[grpc.limits]\nbuffer_per_connection = 1024\n")
    with pytest.raises(ValueError, match=r"grpc\.limits\.buffer_per_connection"):
        load_config(config_file=path, environ={}, overrides={})


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[grpc]\nlisten = 'nope'\n", "grpc.listen"),
        ("[grpc]\nlistne = '1:2'\n", "unknown key"),
        ("[grpc]\nmax_concurrent_registrations = 0\n", "grpc.max_concurrent_registrations"),
        ("[liveness]\ngrace = 'soon'\n", "liveness.grace"),
        ("[heartbeats]\nflush_interval = 0\n", "heartbeats.flush_interval"),
        ("[daemons]\nconnect_attempts = 0\n", "daemons.connect_attempts"),
        ("[database]\nurl = 'postgress://u@h:5432/db'\n", "database.url"),
        ("[database]\nurl = '/var/lib/fleet/fleet.db'\n", "database.url"),
    ],
)
def test_invalid_config_is_refused_by_name(tmp_path: Path, content: str, needle: str) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(content)
    with pytest.raises(ValueError, match=needle):
        load_config(config_file=toml, environ={})
    result = run_cli([sys.executable, "-m", "manager", "--config", str(toml)], timeout=30)
    assert result.returncode == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_certificate_is_one_clear_line(tmp_path: Path) -> None:
    result = run_cli(
        [
            sys.executable,
            "-m",
            "manager",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "",
            "--data-dir",
            str(tmp_path),
            "--cert",
            str(tmp_path / "missing.crt"),
        ],
        timeout=30,
    )
    assert result.returncode == 1
    assert "TLS cert file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_insecure_mode_warns_and_serves_plaintext(tmp_path: Path) -> None:
    mgr = start_manager(tmp_path, None, insecure=True, http_port=None)
    try:
        assert "WITHOUT TLS" in mgr.output()

        async def call() -> admin_pb.ListNodesResponse:
            channel = Channel("127.0.0.1", mgr.grpc_port)
            try:
                stub = manager_pb.ManagerServiceStub(channel, timeout=10)
                await stub.register_node(manager_pb.RegisterNodeRequest(node_id="dev-node"))
                return await admin_pb.AdminServiceStub(channel, timeout=10).list_nodes(
                    admin_pb.ListNodesRequest()
                )
            finally:
                channel.close()

        assert [n.node_id for n in asyncio.run(call()).nodes] == ["dev-node"]
    finally:
        assert mgr.stop() == 0


def received_heartbeats(base: str) -> bool:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    return "fleet_manager_heartbeats_total 1.0" in text


def test_sigterm_answers_waiting_heartbeats_then_exits_0(tmp_path: Path, certs: Path) -> None:
    # ack=flushed and a long flush interval: the heartbeat is still waiting when SIGTERM
    # arrives, and the shutdown's final flush must answer it.
    cfg = write_manager_config(tmp_path / "m.toml", {"heartbeats": {"ack": "flushed"}})
    mgr = start_manager(
        tmp_path,
        certs,
        extra_args=["--config", str(cfg), "--heartbeat-flush-interval", "30"],
    )
    try:
        manager_rpc(
            certs,
            mgr.grpc_port,
            "node-a",
            "register_node",
            manager_pb.RegisterNodeRequest(node_id="node-a", daemon_address="127.0.0.1:1"),
        )
        ts = int(time.time()) - 5

        async def beat_during_shutdown() -> bool:
            channel = node_channel(certs, mgr.grpc_port, "node-a")
            try:
                stub = manager_pb.ManagerServiceStub(channel, timeout=20)
                call = asyncio.create_task(
                    stub.heartbeat(manager_pb.HeartbeatRequest(node_id="node-a", timestamp=ts))
                )
                # Wait until the Manager holds it (counted, not yet flushed).
                await async_wait_until(
                    lambda: asyncio.to_thread(received_heartbeats, mgr.http_url), what="received"
                )
                assert not call.done()
                mgr.signal(signal.SIGTERM)
                return (await call).success
            finally:
                channel.close()

        assert asyncio.run(beat_during_shutdown())
        wait_until(lambda: not mgr.alive(), timeout=15, what="manager exit")
        assert mgr.popen.returncode == 0
        assert "manager stopped" in mgr.output()
        assert stored_nodes(mgr.db_url)["node-a"]["last_heartbeat_reported"] == ts
    finally:
        mgr.kill()  # no-op once it exited; a failed assertion must not leak it


@pytest.mark.parametrize("what", ["grpc-port", "http-port", "database"])
def test_startup_failures_are_one_line_exit_1(tmp_path: Path, certs: Path, what: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        if what == "database":  # nothing listens there: connection refused
            busy.close()
        args = {
            "grpc-port": ["--listen", f"127.0.0.1:{taken}"],
            "http-port": ["--http-listen", f"127.0.0.1:{taken}"],
            "database": ["--db", f"postgres://nobody@127.0.0.1:{taken}/nothing"],
        }[what]
        result = run_cli(
            [
                sys.executable,
                "-m",
                "manager",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--data-dir",
                str(tmp_path),
                "--cert",
                str(certs / "manager.crt"),
                "--key",
                str(certs / "manager.key"),
                "--ca",
                str(certs / "ca.crt"),
                *args,
            ],
            timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert "cannot start" in result.stderr
    assert "Traceback" not in result.stderr


def test_event_loop_choice(tmp_path: Path, certs: Path) -> None:
    mgr = start_manager(tmp_path, certs, http_port=None, extra_args=["--event-loop", "asyncio"])
    try:
        assert "loop=asyncio" in mgr.output()
        # Serving normally on the plain asyncio loop too.
        nodes = manager_rpc(
            certs, mgr.grpc_port, "admin", "list_nodes", admin_pb.ListNodesRequest()
        )
        assert nodes.nodes == []
    finally:
        assert mgr.stop() == 0
    with pytest.raises(ValueError, match=r"manager\.event_loop"):
        ManagerConfig(event_loop="twisted")
