"""Supervision through the real gRPC API: crash/backoff/FATAL, flapping, stop escalation
to SIGKILL for a whole process group, start/stop/restart semantics and authorisation."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import psutil
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import wait_until
from harness.daemon import agent, call_daemon, list_agents, lone_daemon

from schema import daemon_pb


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_crash_restarts_with_growing_backoff_then_fatal(tmp_path: Path, certs: Path) -> None:
    starts = tmp_path / "starts.txt"
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent(
                "crashy",
                "crasher",
                "3",
                "0",
                str(starts),
                start_seconds=3,  # generous: each run must count as a fast failure
                start_retries=3,
                backoff_initial=0.3,
                backoff_multiplier=2.0,
            )
        ],
    ) as daemon:
        info = wait_until(
            lambda: (a := list_agents(certs, daemon)["crashy"]).status == "FATAL" and a,
            timeout=30,
            what="FATAL after the retry limit",
        )
        times = [float(x) for x in starts.read_text().split()]
        assert len(times) == 4  # the first start + start_retries
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Exponential: ~0.3, ~0.6, ~1.2 s (each gap also includes interpreter start-up).
        assert gaps[0] >= 0.3 and gaps[1] >= 0.6 and gaps[2] >= 1.2, gaps
        assert gaps[2] > gaps[0], gaps
        assert info.restart_count == 3
        assert info.last_exit_code == 3
        assert info.pid == 0
        assert "exit code 3" in info.status_reason and "gave up" in info.status_reason
        # Every crashed run was reaped: the Daemon has no zombie children.
        assert [
            c.pid
            for c in psutil.Process(daemon.pid).children()
            if c.status() == psutil.STATUS_ZOMBIE
        ] == []
        # A manual start clears FATAL and tries again (and fails again, promptly).
        reply = call_daemon(
            certs,
            daemon,
            "operate_agent",
            daemon_pb.AgentOperationRequest(agent_id="crashy", operation="start"),
        )
        assert not reply.success and "exit code 3" in reply.error_message


def test_flapping_agent_becomes_fatal(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent(
                "flappy",
                "crasher",
                "1",
                "0.4",
                start_seconds=0.1,
                backoff_initial=0.1,
                backoff_max=0.2,
                max_restarts=3,
                restart_window=60,
            )
        ],
    ) as daemon:
        info = wait_until(
            lambda: (a := list_agents(certs, daemon)["flappy"]).status == "FATAL" and a,
            timeout=30,
            what="flapping detected",
        )
        assert "flapping" in info.status_reason
        assert info.restart_count == 3


def test_on_failure_policy_leaves_clean_exit_exited(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent("oneshot", "crasher", "0", "0.5", start_seconds=0.1),
            agent(
                "always",
                "crasher",
                "0",
                "0.3",
                start_seconds=0.1,
                autorestart="always",
                backoff_initial=0.1,
            ),
        ],
    ) as daemon:
        info = wait_until(
            lambda: (a := list_agents(certs, daemon)["oneshot"]).status == "EXITED" and a,
            what="EXITED with an expected code",
        )
        assert info.last_exit_code == 0 and info.restart_count == 0
        wait_until(
            lambda: list_agents(certs, daemon)["always"].restart_count >= 2,
            what="autorestart=always restarts clean exits",
        )


def test_sigterm_ignoring_agent_and_children_are_killed(tmp_path: Path, certs: Path) -> None:
    pids_file = tmp_path / "pids.txt"
    with lone_daemon(
        tmp_path,
        certs,
        agents=[agent("stubborn", "stubborn", str(pids_file), stop_timeout=1.5, start_seconds=0.2)],
    ) as daemon:
        wait_until(pids_file.exists, what="stubborn agent running")
        leader, child = (int(x) for x in pids_file.read_text().split())
        wait_until(lambda: list_agents(certs, daemon)["stubborn"].status == "RUNNING")
        started = time.monotonic()
        reply = call_daemon(
            certs,
            daemon,
            "operate_agent",
            daemon_pb.AgentOperationRequest(agent_id="stubborn", operation="stop"),
        )
        elapsed = time.monotonic() - started
        assert reply.success, reply.error_message
        assert reply.agent.status == "STOPPED"
        assert reply.agent.last_exit_code == -9  # SIGKILL, after stop_timeout
        assert elapsed >= 1.5
        # The reply came when the stop had finished: nothing of the group is left.
        assert not _alive(leader) and not _alive(child)


def test_operate_start_stop_restart_and_authorisation(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent("svc", "sleeper", start_seconds=0.3),
            agent("manual", "sleeper", autostart=False, start_seconds=0.3),
        ],
    ) as daemon:
        wait_until(lambda: list_agents(certs, daemon)["svc"].status == "RUNNING")
        assert list_agents(certs, daemon)["manual"].status == "STOPPED"

        def op(
            agent_id: str, operation: str, cert: str = "manager"
        ) -> daemon_pb.AgentOperationResponse:
            return call_daemon(
                certs,
                daemon,
                "operate_agent",
                daemon_pb.AgentOperationRequest(agent_id=agent_id, operation=operation),
                cert_name=cert,
            )

        started = op("manual", "start")
        assert started.success and started.agent.status == "RUNNING" and started.agent.pid > 0
        first_pid = started.agent.pid
        restarted = op("manual", "restart", cert="admin")
        assert restarted.success and restarted.agent.status == "RUNNING"
        assert restarted.agent.pid != first_pid and not _alive(first_pid)
        assert restarted.agent.restart_count == 1
        again = op("manual", "start")  # already running: a no-op success
        assert again.success and again.agent.pid == restarted.agent.pid
        stopped = op("manual", "stop")
        assert stopped.success and stopped.agent.status == "STOPPED" and stopped.agent.pid == 0
        assert not _alive(restarted.agent.pid)

        with pytest.raises(GRPCError) as exc:
            op("nope", "start")
        assert exc.value.status is Status.NOT_FOUND
        with pytest.raises(GRPCError) as exc:
            op("svc", "explode")
        assert exc.value.status is Status.INVALID_ARGUMENT
        # A node certificate may never operate another node's agents.
        for node_cert in ("node-a", "node-b"):
            with pytest.raises(GRPCError) as exc:
                op("svc", "stop", cert=node_cert)
            assert exc.value.status is Status.PERMISSION_DENIED
        assert list_agents(certs, daemon)["svc"].status == "RUNNING"


def test_operations_on_one_agent_are_serialised(tmp_path: Path, certs: Path) -> None:
    import asyncio

    from harness.daemon import daemon_channel

    with lone_daemon(
        tmp_path,
        certs,
        agents=[agent("svc", "sleeper", start_seconds=0.5)],
    ) as daemon:
        wait_until(lambda: list_agents(certs, daemon)["svc"].status == "RUNNING")

        async def go() -> list[daemon_pb.AgentOperationResponse]:
            channel = daemon_channel(certs, daemon.grpc_port, "node-a")
            stub = daemon_pb.DaemonServiceStub(channel)
            try:
                ops = ["restart", "stop", "start", "restart", "stop"]
                return await asyncio.gather(
                    *(
                        stub.operate_agent(
                            daemon_pb.AgentOperationRequest(agent_id="svc", operation=o), timeout=30
                        )
                        for o in ops
                    )
                )
            finally:
                channel.close()

        replies = asyncio.run(go())
        assert all(r.success for r in replies), [r.error_message for r in replies]
        # Each reply reflects its own operation's end state: never a half-done one.
        assert [r.agent.status for r in replies] == [
            "RUNNING",
            "STOPPED",
            "RUNNING",
            "RUNNING",
            "STOPPED",
        ]
        children = psutil.Process(daemon.pid).children(recursive=True)
        assert [p.pid for p in children if _alive(p.pid)] == []


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_agent_runs_as_configured_user(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            {
                "id": "nob",
                "command": ["/bin/sleep", "60"],
                "user": "nobody",
                "cwd": "/",
                "start_seconds": 0.2,
            },
            {
                "id": "ghost",
                "command": ["/bin/sleep", "60"],
                "user": "no-such-user-x",
                "start_retries": 0,
            },
        ],
    ) as daemon:
        info = wait_until(
            lambda: (a := list_agents(certs, daemon)["nob"]).status == "RUNNING" and a
        )
        proc = psutil.Process(info.pid)
        assert proc.uids().real == proc.uids().effective == 65534
        assert proc.gids().real == proc.gids().effective == 65534  # not root's group
        assert proc.environ()["HOME"] != "/root" and proc.environ()["USER"] == "nobody"
        status = Path(f"/proc/{info.pid}/status").read_text()
        groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
        assert set(groups.split()[1:]) <= {"65534"}  # no supplementary group of root
        ghost = wait_until(
            lambda: (a := list_agents(certs, daemon)["ghost"]).status == "FATAL" and a
        )
        assert "unknown user 'no-such-user-x'" in ghost.status_reason


def test_missing_executable_is_reported(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            {
                "id": "typo",
                "command": ["/nonexistent/bin/app"],
                "start_retries": 1,
                "backoff_initial": 0.1,
            }
        ],
    ) as daemon:
        info = wait_until(lambda: (a := list_agents(certs, daemon)["typo"]).status == "FATAL" and a)
        assert "spawn failed: no such executable: /nonexistent/bin/app" in info.status_reason
        assert daemon.alive()


def test_crash_after_a_good_start_restarts_at_once_then_backs_off(
    tmp_path: Path, certs: Path
) -> None:
    """Crash of a RUNNING agent: the first restart is immediate, the next ones back off."""
    starts = tmp_path / "starts.txt"
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent(
                "flaky",
                "crasher",
                "3",
                "0.6",  # up longer than start_seconds: each run counts as started
                str(starts),
                start_seconds=0.3,
                backoff_initial=1.5,
                backoff_multiplier=2.0,
            )
        ],
    ):
        wait_until(
            lambda: starts.exists() and len(starts.read_text().split()) >= 3,
            timeout=30,
            what="three runs",
        )
        times = [float(x) for x in starts.read_text().split()]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Run time 0.6 s + interpreter start-up; the first restart adds no delay, the
        # second waits backoff_initial (1.5 s).
        assert gaps[0] < 0.6 + 1.0, gaps
        assert gaps[1] >= 0.6 + 1.5, gaps
