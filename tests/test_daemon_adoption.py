"""Agents outlive a Daemon killed with SIGKILL and are re-adopted (same pids, no
duplicates); a recorded pid now belonging to another process is never adopted; a
graceful shutdown stops agents unless configured to leave them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from harness import free_port, wait_until
from harness.daemon import agent, all_running, call_daemon, list_agents, lone_daemon, start_daemon

from schema import daemon_pb


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pids(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_readopts_agents_after_kill_9(tmp_path: Path, certs: Path) -> None:
    log_a, log_b = tmp_path / "a.pids", tmp_path / "b.pids"
    agents = [
        agent("a", "sleeper", str(log_a), start_seconds=0.2),
        agent("b", "sleeper", str(log_b), start_seconds=0.2),
    ]
    daemon = start_daemon(
        tmp_path, certs, node_id="node-a", manager_port=free_port(), agents=agents
    )
    try:
        before = all_running(certs, daemon, what="both agents running")
        pid_a, pid_b = before["a"].pid, before["b"].pid
        daemon.signal(signal.SIGKILL)
        daemon.kill()
        assert _alive(pid_a) and _alive(pid_b), "agents must survive the Daemon's death"

        daemon = daemon.restart()
        after = list_agents(certs, daemon)
        assert after["a"].status == after["b"].status == "RUNNING"
        assert (after["a"].pid, after["b"].pid) == (pid_a, pid_b)
        assert after["a"].start_time == before["a"].start_time
        assert "re-adopted" in after["a"].status_reason
        assert _pids(log_a) == [pid_a] and _pids(log_b) == [pid_b], "no duplicate started"

        # The adopted agent is supervised for real: a crash is seen and restarted...
        psutil.Process(pid_a).kill()
        info = wait_until(
            lambda: (
                (a := list_agents(certs, daemon)["a"]).status == "RUNNING"
                and a.pid not in (0, pid_a)
                and a
            ),
            what="adopted agent restarted after it died",
        )
        assert info.restart_count == 1
        # ...and a stop through the API stops it.
        reply = call_daemon(
            certs,
            daemon,
            "operate_agent",
            daemon_pb.AgentOperationRequest(agent_id="b", operation="stop"),
        )
        assert reply.success and reply.agent.status == "STOPPED"
        assert not _alive(pid_b)
    finally:
        daemon.stop()
    assert not _alive(info.pid), "graceful shutdown stops agents by default"


def test_reused_pid_is_never_adopted(tmp_path: Path, certs: Path) -> None:
    log_a = tmp_path / "a.pids"
    # A process that is alive and a group leader, but not the agent that was recorded:
    # its create time differs from the recorded one, as when the kernel reuses a pid.
    decoy = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        decoy_ct = psutil.Process(decoy.pid).create_time()
        state_dir = tmp_path / "daemon-node-a" / "state"
        state_dir.mkdir(parents=True)
        (state_dir / "agents.json").write_text(
            json.dumps(
                {
                    "version": 1,
                    "agents": {
                        "a": {
                            "pid": decoy.pid,
                            "create_time": decoy_ct - 1000.0,
                            "token": "old",
                            "start_time": 1,
                            "restart_count": 0,
                        }
                    },
                }
            )
        )
        daemon = start_daemon(
            tmp_path,
            certs,
            node_id="node-a",
            manager_port=free_port(),
            agents=[agent("a", "sleeper", str(log_a), start_seconds=0.2)],
        )
        try:
            info = wait_until(
                lambda: (a := list_agents(certs, daemon)["a"]).status == "RUNNING" and a,
                what="agent started fresh",
            )
            assert info.pid != decoy.pid
            assert _pids(log_a) == [info.pid]
            assert decoy.poll() is None, "the unrelated process is left alone"
        finally:
            daemon.stop()
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()


def test_graceful_shutdown_can_leave_agents_running(tmp_path: Path, certs: Path) -> None:
    log_a = tmp_path / "a.pids"
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[agent("a", "sleeper", str(log_a), start_seconds=0.2)],
        config={"stop_agents_on_exit": False},
    )
    pid = 0
    try:
        pid = wait_until(
            lambda: (a := list_agents(certs, daemon)["a"]).status == "RUNNING" and a.pid,
        )
        assert daemon.stop() == 0
        assert _alive(pid)
        daemon = daemon.restart()
        assert list_agents(certs, daemon)["a"].pid == pid
        assert _pids(log_a) == [pid]
        call_daemon(
            certs,
            daemon,
            "operate_agent",
            daemon_pb.AgentOperationRequest(agent_id="a", operation="stop"),
        )
    finally:
        daemon.stop()
        if pid and _alive(pid):
            psutil.Process(pid).kill()


def test_second_daemon_on_the_same_state_dir_is_refused(tmp_path: Path, certs: Path) -> None:
    from harness import console_script, run_cli

    log_a = tmp_path / "a.pids"
    with lone_daemon(
        tmp_path,
        certs,
        agents=[agent("a", "sleeper", str(log_a), start_seconds=0.2)],
    ) as daemon:
        pid = wait_until(lambda: list_agents(certs, daemon)["a"].pid)
        result = run_cli(
            [
                console_script("fleet-daemon"),
                "--config",
                str(daemon.config_path),
                "--listen",
                f"127.0.0.1:{free_port()}",
            ],
            timeout=30,
        )
        assert result.returncode == 1
        assert f"another Daemon (pid {daemon.pid}) is using the state directory" in result.stderr
        # The first Daemon and its agent are untouched, socket included.
        assert daemon.agent_socket.exists()
        assert list_agents(certs, daemon)["a"].pid == pid
        assert _pids(log_a) == [pid]
        state = json.loads((daemon.state_dir / "agents.json").read_text())
        assert state["agents"]["a"]["pid"] == pid


def test_readopted_sdk_agent_keeps_talking_to_the_new_daemon(tmp_path: Path, certs: Path) -> None:
    out = tmp_path / "a.json"
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[
            agent(
                "a", "sdk_agent", str(out), start_seconds=0.2, heartbeat_interval=1, config={"v": 1}
            )
        ],
    )
    try:
        wait_until(out.exists)
        pid = json.loads(out.read_text())["pid"]
        daemon.kill()
        daemon = daemon.restart()
        assert list_agents(certs, daemon)["a"].pid == pid
        # Its token survived (persisted) and it reconnects to the new socket by itself.
        wait_until(
            lambda: list_agents(certs, daemon)["a"].last_heartbeat > 0,
            timeout=20,
            what="heartbeat from the re-adopted agent",
        )
        reply = call_daemon(
            certs,
            daemon,
            "push_update",
            daemon_pb.UpdateRequest(agent_id="a", config_json='{"v": 2}'),
        )
        assert reply.status == "APPLIED"
        wait_until(
            lambda: json.loads(out.read_text())["config"] == {"v": 2},
            timeout=20,
            what="re-adopted agent follows a pushed config",
        )
        assert json.loads(out.read_text())["pid"] == pid
    finally:
        daemon.stop()


def test_agent_stopped_by_request_stays_stopped_across_daemon_restart(
    tmp_path: Path, certs: Path
) -> None:
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[agent("a", "sleeper", start_seconds=0.2), agent("b", "sleeper", start_seconds=0.2)],
    )
    try:
        wait_until(lambda: list_agents(certs, daemon)["a"].status == "RUNNING")
        call_daemon(
            certs,
            daemon,
            "operate_agent",
            daemon_pb.AgentOperationRequest(agent_id="a", operation="stop"),
        )
        daemon.kill()
        daemon = daemon.restart()
        after = wait_until(lambda: (x := list_agents(certs, daemon))["b"].status == "RUNNING" and x)
        assert after["a"].status == "STOPPED" and after["a"].pid == 0
        assert "stopped by request" in after["a"].status_reason
        reply = call_daemon(
            certs,
            daemon,
            "operate_agent",
            daemon_pb.AgentOperationRequest(agent_id="a", operation="start"),
        )
        assert reply.success and reply.agent.status == "RUNNING"
    finally:
        daemon.stop()


def test_second_signal_forces_exit_and_agents_survive_it(tmp_path: Path, certs: Path) -> None:
    pids = tmp_path / "pids.txt"
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[
            agent(
                "stubborn",
                "stubborn",
                str(pids),
                stop_timeout=60,
                start_seconds=0.2,
                autorestart="never",
            )
        ],
    )
    leader = 0
    try:
        wait_until(pids.exists)
        leader = int(pids.read_text().split()[0])
        wait_until(lambda: list_agents(certs, daemon)["stubborn"].status == "RUNNING")
        daemon.signal(signal.SIGTERM)  # graceful: waits up to stop_timeout for the agent
        wait_until(lambda: "shutting down" in daemon.output())
        daemon.signal(signal.SIGTERM)  # forced
        assert daemon.popen.wait(10) == 1
        assert _alive(leader)
        daemon = daemon.restart()
        assert list_agents(certs, daemon)["stubborn"].pid == leader  # re-adopted
    finally:
        if leader:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader, signal.SIGKILL)  # faster than its 60 s stop_timeout
        daemon.stop()


def test_readopted_agent_with_changed_command_is_restarted(tmp_path: Path, certs: Path) -> None:
    old_log, new_log = tmp_path / "old.pids", tmp_path / "new.pids"
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[
            agent("a", "sleeper", str(old_log), start_seconds=0.2),
            agent("b", "sleeper", start_seconds=0.2),
        ],
    )
    try:
        before = all_running(certs, daemon)
        daemon.kill()
        text = daemon.config_path.read_text()
        daemon.config_path.write_text(text.replace(str(old_log), str(new_log)))
        daemon = daemon.restart()
        info = wait_until(
            lambda: (
                (a := list_agents(certs, daemon)["a"]).status == "RUNNING"
                and a.pid != before["a"].pid
                and a
            ),
            what="agent restarted with its new command",
        )
        assert _pids(new_log) == [info.pid]
        assert not _alive(before["a"].pid)
        assert info.restart_count == 1
        # The unchanged agent was simply re-adopted.
        assert list_agents(certs, daemon)["b"].pid == before["b"].pid
    finally:
        daemon.stop()


def test_agent_removed_from_config_while_daemon_was_down_is_killed(
    tmp_path: Path, certs: Path
) -> None:
    from harness.daemon import to_toml

    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[
            agent("keep", "sleeper", start_seconds=0.2),
            agent("gone", "sleeper", start_seconds=0.2),
        ],
    )
    try:
        before = all_running(certs, daemon)
        daemon.kill()
        import tomllib

        data = tomllib.loads(daemon.config_path.read_text())
        data["agents"] = [a for a in data["agents"] if a["id"] == "keep"]
        daemon.config_path.write_text(to_toml(data))
        daemon = daemon.restart()
        after = list_agents(certs, daemon)
        assert list(after) == ["keep"] and after["keep"].pid == before["keep"].pid
        wait_until(lambda: not _alive(before["gone"].pid), what="unconfigured agent killed")
    finally:
        daemon.stop()
