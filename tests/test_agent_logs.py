"""``fleetctl agent logs``: an agent's recent output, read by its Daemon (GetAgentLog).

A real Manager and a real Daemon (node-a) running two agents:

* talker: writes ``out 1`` … ``out 300``, ``out done`` to stdout and ``err 1`` … ``err 300``,
  an invalid UTF-8 line, ``err done`` to stderr, then sleeps;
* looper: says ``looper: cannot open /nonexistent`` on stderr and exits 1, over and over.

The tail function itself (rotation, partial lines, bounds) is tested on files below.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from harness import one_line, wait_until
from harness.daemon import DaemonProc, cleanup_socket_dir, start_daemon
from harness.manager import ManagerProc, manager_rpc_error, start_manager
from typer.testing import CliRunner, Result

from common import validate
from common.errors import InvalidArgument
from daemon import logtail
from fleetctl.app import app
from fleetctl.errors import ExitCode
from schema import admin_pb

runner = CliRunner()

TALKER = """
import sys, time
for i in range(1, 301):
    print(f"out {i}")
    print(f"err {i}", file=sys.stderr)
sys.stdout.write("out done\\n")
sys.stdout.flush()  # before "err done", which the fixture waits for
sys.stderr.flush()
sys.stderr.buffer.write(b"bad \\xff byte\\n")
sys.stderr.buffer.flush()
print("err done", file=sys.stderr, flush=True)
while True:
    time.sleep(60)
"""
LOOPER = """
import sys
print("looper: cannot open /nonexistent", file=sys.stderr, flush=True)
sys.exit(1)
"""
STDOUT = [f"out {i}" for i in range(1, 301)] + ["out done"]
STDERR = [f"err {i}" for i in range(1, 301)] + ["bad \ufffd byte", "err done"]
JSON_KEYS = ["node_id", "agent_id", "stream", "path", "size_bytes", "truncated", "lines"]


@dataclass
class Fleet:
    manager: ManagerProc
    daemon: DaemonProc
    env: dict[str, str]
    certs: Path


def cli(fleet: Fleet, *argv: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(argv), env={**fleet.env, **(env or {})})


def logs_json(fleet: Fleet, *argv: str) -> Any:
    result = cli(fleet, "agent", "logs", *argv, "-o", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("agent-logs")
    manager = start_manager(tmp, certs)
    daemon: DaemonProc | None = None
    try:
        daemon = start_daemon(
            tmp,
            certs,
            node_id="node-a",
            manager_port=manager.grpc_port,
            agents=[
                {"id": "talker", "command": [sys.executable, "-c", TALKER]},
                {
                    "id": "looper",
                    "command": [sys.executable, "-c", LOOPER],
                    "start_seconds": 0,
                    "backoff_initial": 0.1,
                    "backoff_max": 0.2,
                    "max_restarts": 100,
                    "start_retries": 100,
                },
            ],
        )
        env = {
            "FLEET_MANAGER": manager.address,
            "FLEET_CA": str(certs / "ca.crt"),
            "FLEET_CERT": str(certs / "admin.crt"),
            "FLEET_KEY": str(certs / "admin.key"),
            "FLEET_CONFIG": "",
            "FLEET_TIMEOUT": "20s",
            "NO_COLOR": "",
            "FORCE_COLOR": "",
        }
        f = Fleet(manager, daemon, env, certs)

        def talked() -> bool:
            result = cli(f, "agent", "logs", "node-a", "talker", "-n", "1")
            return result.exit_code == 0 and result.stdout == "err done\n"

        wait_until(talked, timeout=30, what="talker's output readable through the Manager")
        yield f
    finally:
        if daemon is not None:
            daemon.stop()
            cleanup_socket_dir(daemon)
        manager.stop()


# ---- through the Manager and straight from the Daemon --------------------------------------


def test_last_stderr_lines_through_the_manager(fleet: Fleet) -> None:
    result = cli(fleet, "agent", "logs", "node-a", "talker", "-n", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == "err 300\nbad \ufffd byte\nerr done\n"
    path = fleet.daemon.state_dir / "logs" / "talker.stderr.log"
    assert one_line(result.stderr).startswith(
        f"last 3 lines of talker stderr on node node-a ({path}, "
    )


def test_default_is_100_lines(fleet: Fleet) -> None:
    result = cli(fleet, "agent", "logs", "node-a", "talker")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == STDERR[-100:]


def test_stdout_as_json_every_line(fleet: Fleet) -> None:
    got = logs_json(fleet, "node-a", "talker", "--stream", "stdout", "-n", "5000")
    path = fleet.daemon.state_dir / "logs" / "talker.stdout.log"
    assert list(got) == JSON_KEYS
    assert got["node_id"] == "node-a"
    assert got["agent_id"] == "talker"
    assert got["stream"] == "stdout"
    assert got["path"] == str(path)
    assert got["size_bytes"] == path.stat().st_size
    assert got["truncated"] is False  # the whole file fitted
    assert got["lines"] == STDOUT


def test_n_bounds_the_lines_and_says_older_ones_exist(fleet: Fleet) -> None:
    got = logs_json(fleet, "node-a", "talker", "-n", "7")
    assert got["lines"] == STDERR[-7:]
    assert got["truncated"] is True


def test_agent_alone_when_its_id_is_unique(fleet: Fleet) -> None:
    result = cli(fleet, "agent", "logs", "talker", "-n", "2", "--stream", "stdout")
    assert result.exit_code == 0, result.output
    assert result.stdout == "out 300\nout done\n"


def test_straight_from_the_daemon(fleet: Fleet) -> None:
    result = cli(fleet, "agent", "logs", "--daemon", fleet.daemon.address, "talker", "-n", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout == "bad \ufffd byte\nerr done\n"
    got = logs_json(fleet, "--daemon", fleet.daemon.address, "node-a", "talker", "-n", "1")
    assert got["node_id"] == "node-a" and got["lines"] == ["err done"]


def test_a_crash_looping_agent_says_why(fleet: Fleet) -> None:
    """The 3 a.m. case: the agent keeps dying; its stderr says why, once per run."""

    def runs() -> list[str]:
        got = logs_json(fleet, "node-a", "looper", "-n", "50")
        lines: list[str] = got["lines"]
        return lines

    wait_until(lambda: len(runs()) >= 2, timeout=30, what="looper to have run twice")
    assert set(runs()) == {"looper: cannot open /nonexistent"}


def test_no_output_yet_says_so(fleet: Fleet) -> None:
    """looper never writes to stdout: nothing on stdout, and the header says why."""
    result = cli(fleet, "agent", "logs", "node-a", "looper", "--stream", "stdout")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    path = fleet.daemon.state_dir / "logs" / "looper.stdout.log"
    assert one_line(result.stderr) == f"no stdout output from looper on node node-a ({path}, 0 B)"


# ---- errors -------------------------------------------------------------------------------


def test_unknown_node_or_agent_exits_3_with_one_line(fleet: Fleet) -> None:
    result = cli(fleet, "agent", "logs", "node-z", "talker")
    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert "node-z" in one_line(result.output)

    result = cli(fleet, "agent", "logs", "node-a", "ghost")
    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert "ghost" in one_line(result.output)

    result = cli(fleet, "agent", "logs", "ghost")  # no node: not known anywhere
    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert "ghost" in one_line(result.output)

    result = cli(fleet, "agent", "logs", "--daemon", fleet.daemon.address, "ghost")
    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert "ghost" in one_line(result.output)


@pytest.mark.parametrize(
    "args",
    [["-n", "0"], ["-n", "5001"], ["-n", "many"], ["-n", "-3"], ["--stream", "stdin"]],
)
def test_bad_options_exit_2_with_one_line(fleet: Fleet, args: list[str]) -> None:
    result = cli(fleet, "agent", "logs", "node-a", "talker", *args)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_the_manager_refuses_bad_bounds_itself(fleet: Fleet) -> None:
    """Callers other than fleetctl get INVALID_ARGUMENT with a readable message."""
    port = fleet.manager.grpc_port
    for request, words in (
        (admin_pb.GetAgentLogRequest(node_id="node-a", agent_id="talker", lines=5001), "5001"),
        (admin_pb.GetAgentLogRequest(node_id="node-a", agent_id="talker", lines=-1), "-1"),
        (admin_pb.GetAgentLogRequest(node_id="node-a", agent_id="talker", stream="x"), "'x'"),
    ):
        status, message = manager_rpc_error(fleet.certs, port, "admin", "get_agent_log", request)
        assert status is Status.INVALID_ARGUMENT, message
        assert words in message


def test_a_node_certificate_cannot_read_logs(fleet: Fleet) -> None:
    node_cert = {
        "FLEET_CERT": str(fleet.certs / "node-a.crt"),
        "FLEET_KEY": str(fleet.certs / "node-a.key"),
    }
    result = cli(fleet, "agent", "logs", "node-a", "talker", env=node_cert)
    assert result.exit_code == ExitCode.PERMISSION_DENIED, result.output
    assert result.stdout == ""
    one_line(result.output)
    result = cli(fleet, "agent", "logs", "--daemon", fleet.daemon.address, "talker", env=node_cert)
    assert result.exit_code == ExitCode.PERMISSION_DENIED, result.output
    assert result.stdout == ""
    one_line(result.output)


# ---- the tail function, on files -------------------------------------------------------------


def write(path: Path, lines: list[str], *, end: str = "\n") -> None:
    path.write_bytes(("\n".join(lines) + end).encode() if lines else b"")


def test_tail_reads_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    write(log, [f"line {i}" for i in range(1, 100_001)])
    found = logtail.tail(log, 3)
    assert found.lines == [b"line 99998", b"line 99999", b"line 100000"]
    assert found.truncated is True
    assert found.size == log.stat().st_size
    assert found.text() == "line 99998\nline 99999\nline 100000\n"


def test_tail_of_a_short_file_is_all_of_it(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    write(log, ["one", "two"])
    found = logtail.tail(log, 100)
    assert found.lines == [b"one", b"two"] and found.truncated is False


def test_a_last_line_without_newline_counts(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    write(log, ["one", "two", "half"], end="")
    assert logtail.tail(log, 2).lines == [b"two", b"half"]


def test_missing_and_empty_files(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    assert logtail.tail(log, 10) == logtail.Tail(lines=[], truncated=False, size=0)
    log.write_bytes(b"")
    assert logtail.tail(log, 10).text() == ""


def test_rotation_the_rest_comes_from_dot_1(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    write(log.with_name("a.stderr.log.1"), [f"old {i}" for i in range(1, 11)])
    write(log, ["new 1", "new 2"])
    found = logtail.tail(log, 5)
    assert found.lines == [b"old 8", b"old 9", b"old 10", b"new 1", b"new 2"]
    assert found.truncated is True
    assert found.size == log.stat().st_size  # the current file's size

    found = logtail.tail(log, 100)  # all of .1 and the current file
    assert len(found.lines) == 12 and found.truncated is False

    # Just rotated (copy-and-truncate): the current file is empty.
    log.write_bytes(b"")
    assert logtail.tail(log, 2).lines == [b"old 9", b"old 10"]


def test_truncated_when_older_rotations_exist(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    write(log.with_name("a.stderr.log.2"), ["oldest"])
    write(log.with_name("a.stderr.log.1"), ["old"])
    write(log, ["new"])
    found = logtail.tail(log, 10)
    assert found.lines == [b"old", b"new"] and found.truncated is True
    # Exactly the current file's lines asked for: .1 still holds older ones.
    assert logtail.tail(log, 1).truncated is True


def test_reads_at_most_max_bytes(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    write(log, ["x" * 999] * 100)  # 1,000 bytes a line
    found = logtail.tail(log, 50, max_bytes=10_500)
    assert found.lines == [b"x" * 999] * 10  # what fitted in the bound
    assert found.truncated is True
    # One line longer than the bound: its end is shown rather than nothing.
    write(log, ["y" * 50_000])
    found = logtail.tail(log, 5, max_bytes=1000)
    assert found.lines == [b"y" * 999] and found.truncated is True


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    log.write_bytes(b"ok\nbad \xff\xfe\n")
    assert logtail.tail(log, 5).text() == "ok\nbad \ufffd\ufffd\n"


def test_check_log_request() -> None:
    assert validate.check_log_request("", 0) == ("stderr", 100)
    assert validate.check_log_request("stdout", 5000) == ("stdout", 5000)
    with pytest.raises(InvalidArgument, match="'stdin' is not stdout or stderr"):
        validate.check_log_request("stdin", 10)
    with pytest.raises(InvalidArgument, match=r"lines 5001 is outside 1\.\.5000"):
        validate.check_log_request("stderr", 5001)
    with pytest.raises(InvalidArgument, match="lines -1"):
        validate.check_log_request("stderr", -1)
