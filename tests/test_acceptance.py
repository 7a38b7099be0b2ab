"""Acceptance review: what an operator hits at 3 a.m. — mistakes in configs and
commands, and shutdowns that must be prompt. Real processes, real sockets, real certs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from harness import console_script, free_port, run_cli, wait_until
from harness.daemon import DaemonProc, agent, list_agents, lone_daemon, start_daemon
from harness.manager import ManagerProc, start_manager

# "Promptly": the Daemon's final state report to a hung Manager is bounded by 2 s; the
# rest is stopping a sleeping agent and closing sockets.
PROMPT_EXIT_SECONDS = 5.0


def _daemon_argv(tmp_path: Path, certs: Path, *extra: str) -> list[str]:
    config = tmp_path / "daemon.toml"
    config.write_text('[[agents]]\nid = "web"\ncommand = ["/bin/sleep", "1000"]\n')
    return [
        console_script("fleet-daemon"),
        "--config",
        str(config),
        "--node-id",
        "node-a",
        "--manager",
        f"127.0.0.1:{free_port()}",
        "--state-dir",
        str(tmp_path / "state"),
        "--agent-socket",
        str(tmp_path / "run" / "agent.sock"),
        "--ca",
        str(certs / "ca.crt"),
        *extra,
    ]


def test_daemon_listen_port_in_use_is_one_line_not_a_traceback(tmp_path: Path, certs: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = _daemon_argv(
            tmp_path,
            certs,
            "--listen",
            f"127.0.0.1:{port}",
            "--cert",
            str(certs / "node-a.crt"),
            "--key",
            str(certs / "node-a.key"),
        )
        result = run_cli(argv, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "cannot start" in output and "address already in use" in output, output
    assert "Traceback" not in output, output


def test_daemon_cert_and_key_mismatch_is_one_line_not_a_traceback(
    tmp_path: Path, certs: Path
) -> None:
    argv = _daemon_argv(
        tmp_path,
        certs,
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--cert",
        str(certs / "node-a.crt"),
        "--key",
        str(certs / "node-b.key"),
    )
    result = run_cli(argv, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "cannot start" in output and "key values mismatch" in output, output
    assert "Traceback" not in output, output


def _admin_env(certs: Path, manager: ManagerProc) -> dict[str, str]:
    return {
        "FLEET_MANAGER": manager.address,
        "FLEET_CA": str(certs / "ca.crt"),
        "FLEET_CERT": str(certs / "admin.crt"),
        "FLEET_KEY": str(certs / "admin.key"),
    }


def _seconds_to_exit(procs: list[DaemonProc | ManagerProc], t0: float) -> dict[int, float]:
    exits: dict[int, float] = {}
    for proc in procs:
        try:
            proc.popen.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            exits[proc.pid] = float("inf")
        else:
            exits[proc.pid] = time.monotonic() - t0
    return exits


def _manager_with_daemon_connected(tmp_path: Path, certs: Path) -> tuple[ManagerProc, DaemonProc]:
    """A Manager and a Daemon, each holding a connection to the other: the Daemon's link,
    and the Manager's pooled channel opened by an admin operation routed to the Daemon."""
    manager = start_manager(tmp_path, certs)
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=manager.grpc_port,
        agents=[agent("web", "sleeper")],
    )
    fleetctl = [console_script("fleetctl"), "agents", "list", "--live", "-o", "json"]
    env = _admin_env(certs, manager)

    def listed() -> bool:
        result = run_cli(fleetctl, env=env, timeout=30)
        return result.returncode == 0 and '"web"' in result.stdout

    wait_until(listed, timeout=30, what="the Manager reaching the Daemon")
    return manager, daemon


def test_daemon_stops_promptly_while_a_hung_manager_holds_a_connection(
    tmp_path: Path, certs: Path
) -> None:
    manager, daemon = _manager_with_daemon_connected(tmp_path, certs)
    try:
        manager.signal(signal.SIGSTOP)  # alive, connected both ways, answering nothing
        t0 = time.monotonic()
        daemon.signal(signal.SIGTERM)
        took = _seconds_to_exit([daemon], t0)[daemon.pid]
        assert took < PROMPT_EXIT_SECONDS, f"Daemon took {took:.1f}s:\n{daemon.output()}"
        assert daemon.popen.returncode == 0, daemon.output()
    finally:
        manager.signal(signal.SIGCONT)
        daemon.stop()
        manager.stop()


def test_manager_and_daemon_sigterm_at_once_both_stop_promptly(tmp_path: Path, certs: Path) -> None:
    manager, daemon = _manager_with_daemon_connected(tmp_path, certs)
    try:
        t0 = time.monotonic()
        for proc in (manager, daemon):
            os.kill(proc.pid, signal.SIGTERM)
        took = _seconds_to_exit([daemon, manager], t0)
        assert took[daemon.pid] < PROMPT_EXIT_SECONDS, daemon.output()
        assert took[manager.pid] < PROMPT_EXIT_SECONDS, manager.output()
        assert (daemon.popen.returncode, manager.popen.returncode) == (0, 0)
    finally:
        daemon.stop()
        manager.stop()


def test_manager_stops_promptly_while_daemons_stay_connected(tmp_path: Path, certs: Path) -> None:
    manager, daemon = _manager_with_daemon_connected(tmp_path, certs)
    try:
        t0 = time.monotonic()
        manager.signal(signal.SIGTERM)
        took = _seconds_to_exit([manager], t0)[manager.pid]
        assert took < PROMPT_EXIT_SECONDS, f"Manager took {took:.1f}s:\n{manager.output()}"
        assert manager.popen.returncode == 0, manager.output()
        assert daemon.alive()
    finally:
        daemon.stop()
        manager.stop()


def test_a_failing_agents_reason_carries_its_last_stderr_line(tmp_path: Path, certs: Path) -> None:
    """An exit code alone sends the operator to the host to read logs: the agent's last
    words on stderr come with the reason (and nothing when it said nothing)."""
    fails = "echo starting; echo 'cannot open /etc/app.yaml: No such file' >&2; exit 3"
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            {"id": "app", "command": ["/bin/sh", "-c", fails], "start_retries": 0},
            {"id": "quiet", "command": ["/bin/sh", "-c", "exit 4"], "start_retries": 0},
        ],
    ) as daemon:
        wait_until(lambda: list_agents(certs, daemon)["app"].status == "FATAL", what="app FATAL")
        agents = list_agents(certs, daemon)
        reason = agents["app"].status_reason
        assert "exit code 3" in reason, reason
        assert "stderr: cannot open /etc/app.yaml: No such file" in reason, reason
        wait_until(lambda: list_agents(certs, daemon)["quiet"].status == "FATAL", what="quiet")
        quiet = list_agents(certs, daemon)["quiet"].status_reason
        assert "exit code 4" in quiet and "stderr" not in quiet, quiet


def test_daemon_with_another_nodes_certificate_logs_a_refusal_not_unreachable(
    tmp_path: Path, certs: Path
) -> None:
    """node_id and certificate disagree: the Manager is reachable and refuses; the log
    must say so and point at the fix, not claim the Manager is unreachable."""
    manager = start_manager(tmp_path, certs)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "ca.crt").write_bytes((certs / "ca.crt").read_bytes())
    (mixed / "node-b.crt").write_bytes((certs / "node-a.crt").read_bytes())
    (mixed / "node-b.key").write_bytes((certs / "node-a.key").read_bytes())
    (mixed / "node-b.key").chmod(0o600)
    daemon = start_daemon(tmp_path, mixed, node_id="node-b", manager_port=manager.grpc_port)
    try:
        wait_until(lambda: "refuses node node-b" in daemon.output(), what="the refusal logged")
        line = next(ln for ln in daemon.output().splitlines() if "refuses node node-b" in ln)
        assert "PERMISSION_DENIED" in line and "check node_id" in line, line
        assert "unreachable (PERMISSION_DENIED" not in daemon.output()
    finally:
        daemon.stop()
        manager.stop()


def test_daemon_stops_promptly_with_an_idle_metrics_connection(tmp_path: Path, certs: Path) -> None:
    """A /metrics client that connected and sent nothing must not hold shutdown."""
    http_port = free_port()
    with lone_daemon(
        tmp_path, certs, extra_args=["--http-listen", f"127.0.0.1:{http_port}"]
    ) as daemon:
        with socket.create_connection(("127.0.0.1", http_port)):
            t0 = time.monotonic()
            daemon.signal(signal.SIGTERM)
            took = _seconds_to_exit([daemon], t0)[daemon.pid]
        assert took < PROMPT_EXIT_SECONDS, f"Daemon took {took:.1f}s:\n{daemon.output()}"
        assert daemon.popen.returncode == 0
