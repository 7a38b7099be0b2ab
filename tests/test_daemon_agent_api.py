"""The agent-facing API on the Unix socket: permissions, per-agent secrets, the SDK,
config delivery, PushUpdate applied and rolled back, and the heartbeat watchdog."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import free_port, wait_until
from harness.daemon import (
    agent,
    call_agent_api,
    call_daemon,
    list_agents,
    lone_daemon,
    start_daemon,
)

from schema import daemon_pb


def _tokens(state_dir: Path) -> dict[str, str]:
    data = json.loads((state_dir / "agents.json").read_text())
    return {k: v["token"] for k, v in data["agents"].items()}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_socket_is_private_even_under_umask_000(tmp_path: Path, certs: Path) -> None:
    old = os.umask(0)
    try:
        daemon = start_daemon(tmp_path, certs, node_id="node-a", manager_port=free_port())
    finally:
        os.umask(old)
    try:
        sock = daemon.agent_socket
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(daemon.state_dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((daemon.state_dir / "agents.json").stat().st_mode) == 0o600
    finally:
        daemon.stop()


def test_agent_secrets_and_transport_separation(tmp_path: Path, certs: Path) -> None:
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent("a", "sdk_agent", str(out_a), config={"name": "alpha"}),
            agent("b", "sdk_agent", str(out_b), config={"name": "beta"}),
        ],
        # This test calls the socket itself with the agents' tokens, from outside their
        # process groups: test the token check alone (the group check is tested below).
        config={"agent_api": {"check_peer": False}},
    ) as daemon:
        wait_until(lambda: out_a.exists() and out_b.exists(), what="both SDK agents configured")
        assert _read_json(out_a)["config"] == {"name": "alpha"}
        assert _read_json(out_b)["config"] == {"name": "beta"}
        wait_until(
            lambda: (
                (x := list_agents(certs, daemon))
                and x["a"].last_heartbeat
                and x["a"].status == "RUNNING"
                and x
            ),
            what="heartbeats recorded",
        )
        tokens = _tokens(daemon.state_dir)
        sock = daemon.agent_socket

        # Agent A's own token works for A...
        reply = call_agent_api(
            sock, "get_config", daemon_pb.ConfigRequest(agent_id="a", token=tokens["a"])
        )
        assert json.loads(reply.config_json) == {"name": "alpha"}
        # ...but A cannot act as B, and no token / a made-up agent gets nothing.
        for request in (
            daemon_pb.ConfigRequest(agent_id="b", token=tokens["a"]),
            daemon_pb.ConfigRequest(agent_id="b", token=""),
            daemon_pb.ConfigRequest(agent_id="ghost", token=tokens["a"]),
        ):
            with pytest.raises(GRPCError) as exc:
                call_agent_api(sock, "get_config", request)
            assert exc.value.status is Status.PERMISSION_DENIED
        before = list_agents(certs, daemon)["b"].last_heartbeat
        with pytest.raises(GRPCError) as exc:
            call_agent_api(
                sock, "heartbeat", daemon_pb.HeartbeatRequest(agent_id="b", token=tokens["a"])
            )
        assert exc.value.status is Status.PERMISSION_DENIED
        assert list_agents(certs, daemon)["b"].last_heartbeat <= before + 5

        # Agent-facing methods are refused on TCP, even with the Manager's certificate...
        with pytest.raises(GRPCError) as exc:
            call_daemon(
                certs,
                daemon,
                "get_config",
                daemon_pb.ConfigRequest(agent_id="a", token=tokens["a"]),
            )
        assert exc.value.status is Status.PERMISSION_DENIED
        # ...and manager-facing methods are refused on the agent socket.
        with pytest.raises(GRPCError) as exc:
            call_agent_api(
                sock,
                "operate_agent",
                daemon_pb.AgentOperationRequest(agent_id="a", operation="stop"),
            )
        assert exc.value.status is Status.PERMISSION_DENIED

        # A restart gives the agent a new secret: the old one stops working.
        call_daemon(
            certs,
            daemon,
            "operate_agent",
            daemon_pb.AgentOperationRequest(agent_id="a", operation="restart"),
        )
        with pytest.raises(GRPCError) as exc:
            call_agent_api(
                sock, "get_config", daemon_pb.ConfigRequest(agent_id="a", token=tokens["a"])
            )
        assert exc.value.status is Status.PERMISSION_DENIED


def test_stolen_token_is_useless_outside_the_agents_process_group(
    tmp_path: Path, certs: Path
) -> None:
    out = tmp_path / "a.json"
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent(
                "a",
                "sdk_agent",
                str(out),
                config={"secret": "s3"},
                start_seconds=0.2,
                heartbeat_interval=1,
            )
        ],
    ) as daemon:
        wait_until(out.exists, what="the agent itself got its config")
        token = _tokens(daemon.state_dir)["a"]  # as if read from /proc/<pid>/environ
        with pytest.raises(GRPCError) as exc:
            call_agent_api(
                daemon.agent_socket,
                "get_config",
                daemon_pb.ConfigRequest(agent_id="a", token=token),
            )
        assert exc.value.status is Status.PERMISSION_DENIED
        assert "not in the agent's process group" in str(exc.value.message)
        # The agent (in its group) keeps working.
        before = list_agents(certs, daemon)["a"].last_heartbeat
        wait_until(lambda: list_agents(certs, daemon)["a"].last_heartbeat > before, timeout=20)


def test_push_update_applied_live_and_with_restart(tmp_path: Path, certs: Path) -> None:
    out = tmp_path / "a.json"
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent(
                "a",
                "sdk_agent",
                str(out),
                config={"level": 1},
                version="1.0",
                start_seconds=0.5,
                heartbeat_interval=1,
            )
        ],
    ) as daemon:
        first = wait_until(lambda: _read_json(out), what="agent configured")
        old_hash = list_agents(certs, daemon)["a"].config_hash

        # No restart: the agent sees the new hash on a heartbeat and fetches the config.
        reply = call_daemon(
            certs,
            daemon,
            "push_update",
            daemon_pb.UpdateRequest(
                agent_id="a", config_json=json.dumps({"level": 2}), version="1.1"
            ),
        )
        assert reply.success and reply.status == "APPLIED", reply.error_message
        assert reply.config_hash != old_hash
        live = wait_until(
            lambda: (d := _read_json(out)) and d["config"] == {"level": 2} and d,
            what="agent picked up the pushed config",
        )
        assert live["pid"] == first["pid"]
        info = list_agents(certs, daemon)["a"]
        assert info.version == "1.1" and info.config_hash == reply.config_hash
        cfg = call_daemon(
            certs, daemon, "get_agent_config", daemon_pb.AgentConfigRequest(agent_id="a")
        )
        assert json.loads(cfg.config_json) == {"level": 2} and cfg.version == "1.1"

        # With restart: a new process starts with the new config.
        reply = call_daemon(
            certs,
            daemon,
            "push_update",
            daemon_pb.UpdateRequest(
                agent_id="a", config_json=json.dumps({"level": 3}), restart=True
            ),
        )
        assert reply.status == "APPLIED", reply.error_message
        now = wait_until(lambda: (d := _read_json(out)) and d["config"] == {"level": 3} and d)
        assert now["pid"] != first["pid"]
        info = list_agents(certs, daemon)["a"]
        assert info.pid == now["pid"]
        # A config pushed without a label has none: "1.1" was the label of {"level": 2}.
        assert info.version == ""
        # A label alone labels the current config.
        reply = call_daemon(
            certs, daemon, "push_update", daemon_pb.UpdateRequest(agent_id="a", version="1.3")
        )
        assert reply.status == "APPLIED" and list_agents(certs, daemon)["a"].version == "1.3"

        for bad in ("not json", "[1, 2]"):
            with pytest.raises(GRPCError) as exc:
                call_daemon(
                    certs,
                    daemon,
                    "push_update",
                    daemon_pb.UpdateRequest(agent_id="a", config_json=bad),
                )
            assert exc.value.status is Status.INVALID_ARGUMENT
        with pytest.raises(GRPCError) as exc:
            call_daemon(
                certs,
                daemon,
                "push_update",
                daemon_pb.UpdateRequest(agent_id="ghost", config_json="{}"),
            )
        assert exc.value.status is Status.NOT_FOUND


def test_push_update_rolled_back_when_restart_fails(tmp_path: Path, certs: Path) -> None:
    out = tmp_path / "a.json"
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent(
                "a",
                "sdk_agent",
                str(out),
                config={"level": 1},
                version="1.0",
                # Long enough for the agent to start Python, fetch its config and refuse
                # it, even on a loaded machine.
                start_seconds=4.0,
                backoff_initial=0.2,
            )
        ],
    ) as daemon:
        wait_until(lambda: _read_json(out), what="agent configured")
        good = list_agents(certs, daemon)["a"]
        reply = call_daemon(
            certs,
            daemon,
            "push_update",
            daemon_pb.UpdateRequest(
                agent_id="a", config_json=json.dumps({"fail": True}), version="2.0", restart=True
            ),
        )
        assert not reply.success and reply.status == "FAILED"
        assert "exit code 1" in reply.error_message
        assert reply.config_hash == good.config_hash
        after = list_agents(certs, daemon)["a"]
        assert after.status == "RUNNING" and after.version == "1.0"
        assert after.config_hash == good.config_hash
        assert after.pid not in (0, good.pid)
        cfg = call_daemon(
            certs, daemon, "get_agent_config", daemon_pb.AgentConfigRequest(agent_id="a")
        )
        assert json.loads(cfg.config_json) == {"level": 1}
        wait_until(lambda: _read_json(out)["pid"] == after.pid, what="rolled-back agent up")


def test_silent_agent_is_restarted_as_hung(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent(
                "mute",
                "sleeper",
                start_seconds=0.2,
                heartbeat_timeout=2,
                stop_timeout=1,
                backoff_initial=0.1,
            )
        ],
    ) as daemon:
        first = wait_until(lambda: list_agents(certs, daemon)["mute"].pid)
        info = wait_until(
            lambda: (a := list_agents(certs, daemon)["mute"]).restart_count >= 1 and a,
            timeout=20,
            what="hung agent restarted",
        )
        assert info.pid != first
        assert "no heartbeat" in daemon.output()
