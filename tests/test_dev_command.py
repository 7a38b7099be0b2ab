"""``tools/dev.py run`` stops what it started, whatever happened to its output.

Each test runs the real command (certificates, a Manager, a Daemon with two sample
agents) in a temporary ``--work-dir`` on free ports, with its output going into a pipe
whose reader goes away — ``| head -n 5``, or a ``| tee`` killed by the same Ctrl-C — and
checks with psutil that after SIGINT the Manager, the Daemon and the agents are gone and
the ports are free, within a deadline (issue 13 item 7).
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from harness import REPO, free_port, wait_until

DEV = REPO / "tools" / "dev.py"
START_TIMEOUT = 180.0  # the Manager and the Daemon, each may take a while on a loaded box
STOP_TIMEOUT = 60.0


def _venv_is_current() -> bool:
    stamp = REPO / ".venv" / ".fleet-installed"
    want = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    return stamp.exists() and stamp.read_text().strip() == want


# dev.py would reinstall .venv first: not something a test may do behind your back.
pytestmark = pytest.mark.skipif(
    not _venv_is_current(), reason=".venv is older than pyproject.toml: run tools/dev.py test"
)


@dataclass
class DevRun:
    """``tools/dev.py run`` with its stdout and stderr into one pipe."""

    proc: subprocess.Popen[bytes]
    ports: tuple[int, int, int, int]
    work: Path
    fleet: list[psutil.Process] = field(default_factory=list)  # Manager, Daemon, agents

    def wait_until_running(self) -> None:
        """Until the Manager and the Daemon listen and the Daemon runs both agents."""

        def up() -> list[psutil.Process]:
            assert self.proc.poll() is None, f"dev.py exited {self.proc.returncode}"
            children = psutil.Process(self.proc.pid).children()
            names = {_role(p): p for p in children}
            daemon = names.get("fleet-daemon")
            if "fleet-manager" not in names or daemon is None:
                return []
            agents = daemon.children()
            if len(agents) < 2 or listening(self.ports[:2]) != set(self.ports[:2]):
                return []
            return [names["fleet-manager"], daemon, *agents]

        self.fleet = wait_until(up, timeout=START_TIMEOUT, what="dev.py run's Fleet running")

    def interrupt(self) -> None:
        """What Ctrl-C does to it (the children are in their own sessions)."""
        self.proc.send_signal(signal.SIGINT)

    def assert_all_stopped(self, *, exit_code: int, timeout: float = STOP_TIMEOUT) -> None:
        wait_until(lambda: self.proc.poll() is not None, timeout=timeout, what="dev.py to exit")
        wait_until(
            lambda: not [p for p in self.fleet if _alive(p)],
            timeout=timeout,
            what="the Manager, the Daemon and the agents to be gone",
        )
        assert listening(self.ports) == set(), "a port of dev.py run is still held"
        assert self.proc.returncode == exit_code


def _role(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        for word in proc.cmdline():
            name = Path(word).name
            if name in ("fleet-manager", "fleet-daemon"):
                return name
    return ""


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def listening(ports: tuple[int, ...]) -> set[int]:
    """Which of ``ports`` something listens on (TCP, any address)."""
    return {
        c.laddr.port
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in ports
    }


def four_free_ports() -> tuple[int, int, int, int]:
    ports: set[int] = set()
    while len(ports) < 4:
        ports.add(free_port())
    manager, daemon, http, enroll = sorted(ports)
    return manager, daemon, http, enroll


@contextlib.contextmanager
def dev_run(tmp_path: Path) -> Iterator[DevRun]:
    """Start ``tools/dev.py run``; whatever the test did, nothing it started survives."""
    ports = four_free_ports()
    work = tmp_path / "fleet"
    argv = [sys.executable, str(DEV), "run", "--work-dir", str(work)]
    flags = ("--manager-port", "--daemon-port", "--http-port", "--enroll-port")
    for flag, port in zip(flags, ports, strict=True):
        argv += [flag, str(port)]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        start_new_session=True,  # signals reach it only when the test sends them
    )
    run = DevRun(proc, ports, work)
    try:
        yield run
    finally:
        proc.kill()
        proc.wait()
        for p in run.fleet:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if proc.stdout:
            proc.stdout.close()


def test_ctrl_c_stops_everything_after_head_went_away(tmp_path: Path) -> None:
    """``dev.py run | head -n 5``: head exits while Fleet starts, so every later line
    (the banner, "stopping", "manager stopped") meets a closed pipe."""
    with dev_run(tmp_path) as run:
        assert run.proc.stdout is not None
        head = subprocess.Popen(["head", "-n", "5"], stdin=run.proc.stdout, stdout=subprocess.PIPE)
        run.proc.stdout.close()  # head is the only reader
        try:
            first, _ = head.communicate(timeout=START_TIMEOUT)
            assert len(first.decode().splitlines()) == 5
            run.wait_until_running()
            run.interrupt()
            run.assert_all_stopped(exit_code=0)
        finally:
            head.kill()
            head.wait()
    assert "daemon stopped" in (run.work / "logs" / "daemon.log").read_text()
    assert "manager stopped" in (run.work / "logs" / "manager.log").read_text()


def test_ctrl_c_stops_everything_when_tee_died_with_it(tmp_path: Path) -> None:
    """``dev.py run 2>&1 | tee log`` and Ctrl-C: the terminal's SIGINT kills tee too, so
    "stopping ..." and what follows are written to a pipe nobody reads."""
    log = tmp_path / "log"
    with dev_run(tmp_path) as run:
        assert run.proc.stdout is not None
        tee = subprocess.Popen(["tee", str(log)], stdin=run.proc.stdout, stdout=subprocess.DEVNULL)
        run.proc.stdout.close()
        try:
            run.wait_until_running()
            wait_until(lambda: "Ctrl-C stops both" in log.read_text(), what="the banner")
            tee.send_signal(signal.SIGINT)  # the same Ctrl-C, tee first: it is gone
            tee.wait(timeout=STOP_TIMEOUT)
            run.interrupt()
            run.assert_all_stopped(exit_code=0)
        finally:
            tee.kill()
            tee.wait()


def test_a_second_ctrl_c_kills_what_is_still_stopping(tmp_path: Path) -> None:
    """A Daemon that does not stop (SIGSTOPped here) would hold the shutdown for the 20 s
    grace; a second Ctrl-C kills it and the Manager at once, and nothing is left."""
    with dev_run(tmp_path) as run:
        out = run.proc.stdout
        assert out is not None
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(line.decode() for line in out), daemon=True
        )
        reader.start()
        run.wait_until_running()
        # dev.py is past its start-up (it waits for "daemon ready", which the Daemon logs
        # a moment after its agents run): suspending the Daemon before would hold it there.
        wait_until(lambda: any("Fleet is running" in line for line in lines), what="banner")
        manager, daemon = run.fleet[:2]
        daemon.suspend()
        run.interrupt()
        wait_until(lambda: any("stopping ..." in line for line in lines), what="stopping")
        run.interrupt()
        # Well within the 20 s the Daemon would otherwise be given.
        run.assert_all_stopped(exit_code=130, timeout=10.0)
        reader.join(timeout=STOP_TIMEOUT)
        said = "".join(lines)
        assert "daemon stopped (exit -9) (killed)" in said
        assert "manager stopped (exit -9) (killed)" in said
        # A killed Daemon cannot stop its agents: they are left to the next run's Daemon,
        # which adopts them; the test does not leave them behind.
        for agent in run.fleet[2:]:
            with contextlib.suppress(psutil.Error):
                agent.kill()
        assert not _alive(manager) and not _alive(daemon)
