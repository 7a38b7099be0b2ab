"""Acceptance review: what an operator hits at 3 a.m. — mistakes in configs and
commands, and shutdowns that must be prompt. Real processes, real sockets, real certs."""

from __future__ import annotations

import socket
from pathlib import Path

from harness import console_script, free_port, run_cli


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
