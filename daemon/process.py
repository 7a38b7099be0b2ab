"""One managed OS process: spawn, signal its process group, wait for its exit, log files.

Each agent is spawned as the leader of a new session and process group, so a stop can
signal the agent *and everything it started*. Exits are observed without polling: a
spawned child through asyncio's child watcher, an adopted process (still running after a
Daemon restart, so no longer our child) through a Linux pidfd that becomes readable when
it exits. stdout/stderr go straight to append-only files the Daemon rotates by
copy-and-truncate, so the agent never writes into a pipe the Daemon must drain and keeps
logging across Daemon restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

# create_time comparisons: psutil rounds to clock ticks (10 ms); allow a little slack.
_CREATE_TIME_SLACK = 0.05


class SpawnError(Exception):
    """The process could not be started (missing executable, bad cwd, unknown user…)."""


@dataclass
class LogFile:
    """An append-only log file rotated by copy-and-truncate (``name``, ``name.1``…)."""

    path: Path
    max_bytes: int
    backups: int

    def open_fd(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def rotate_if_needed(self) -> bool:
        """Rotate when over ``max_bytes``; True if it did. Blocking: call from a thread."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        if size <= self.max_bytes:
            return False
        if self.backups == 0:
            os.truncate(self.path, 0)
            return True
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}"))
        # Lines written between the copy and the truncate are lost: the price of never
        # owning the agent's file descriptor (logrotate's copytruncate has the same gap).
        shutil.copyfile(self.path, self.path.with_name(f"{self.path.name}.1"))
        os.truncate(self.path, 0)
        return True


def _open_log(log_file: LogFile) -> int:
    """The log file to hand the agent, or /dev/null when it cannot be opened (a full or
    read-only state directory): an agent runs without its log rather than not at all."""
    try:
        return log_file.open_fd()
    except OSError as exc:
        log.error("cannot open %s (%s): the agent's output goes to /dev/null", log_file.path, exc)
        return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)


def user_env(user: str) -> dict[str, str]:
    """USER, LOGNAME and HOME for an agent run as ``user`` (empty if unknown)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return {}
    return {"USER": user, "LOGNAME": user, "HOME": pw.pw_dir}


def process_create_time(pid: int) -> float:
    """psutil's create time of ``pid`` (0.0 when it is gone)."""
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0


def same_process(pid: int, create_time: float) -> bool:
    """True if ``pid`` is alive and is the process that was created at ``create_time``."""
    if pid <= 0 or create_time <= 0:
        return False
    try:
        return abs(psutil.Process(pid).create_time() - create_time) <= _CREATE_TIME_SLACK
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    members = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) != pgid:
                continue
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                continue
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied, PermissionError):
            continue
        members.append(pid)
    return members


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def wait_for_exits(pids: list[int], timeout: float) -> None:
    """Wait (through pidfds, no polling) until all ``pids`` exited or ``timeout`` passed."""
    loop = asyncio.get_running_loop()
    waiters: list[asyncio.Future[None]] = []
    fds: list[int] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue  # already gone
        future: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve, future)
        waiters.append(future)
        fds.append(fd)
    try:
        if waiters:
            await asyncio.wait(waiters, timeout=timeout)
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


class ManagedProcess:
    """A process-group leader we spawned or adopted. Use :meth:`spawn` or :meth:`adopt`.

    Exit is observed through a pidfd registered with the event loop (no thread, no
    polling). Unlike asyncio's subprocess transport, nothing here kills the process when
    the Daemon lets go of it, so a Daemon can exit and leave its agents running.
    """

    def __init__(self, pid: int, create_time: float, *, adopted: bool) -> None:
        self.pid = pid
        self.create_time = create_time
        self.adopted = adopted
        self._popen: subprocess.Popen[bytes] | None = None
        self._exit: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pidfd = -1

    @property
    def pgid(self) -> int:
        return self.pid

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None,
        user: str | None,
        stdout: LogFile,
        stderr: LogFile,
    ) -> ManagedProcess:
        """Start ``argv`` as a new session/process-group leader with output to the log files."""
        identity: dict[str, Any] = {}
        if user:
            # Switch uid *and* gid and supplementary groups: Popen(user=...) alone would
            # leave the agent in the Daemon's (root's) groups.
            try:
                pw = pwd.getpwnam(user)
            except KeyError:
                raise SpawnError(f"unknown user {user!r}") from None
            identity = {
                "user": pw.pw_uid,
                "group": pw.pw_gid,
                "extra_groups": os.getgrouplist(user, pw.pw_gid),
            }
        out_fd = _open_log(stdout)
        err_fd = _open_log(stderr)
        try:
            # Plain Popen, not asyncio's subprocess transport: closing that transport kills
            # the child, and a Daemon must be able to exit leaving its agents running.
            popen = subprocess.Popen(  # noqa: ASYNC220 - fork/exec only; exit via pidfd
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out_fd,
                stderr=err_fd,
                env=dict(env),
                cwd=cwd or None,
                start_new_session=True,
                close_fds=True,
                **identity,
            )
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            raise SpawnError(_spawn_reason(argv, cwd, user, exc)) from None
        finally:
            os.close(out_fd)
            os.close(err_fd)
        managed = cls(popen.pid, process_create_time(popen.pid), adopted=False)
        managed._popen = popen
        managed._watch(os.pidfd_open(popen.pid))
        return managed

    @classmethod
    def adopt(cls, pid: int, create_time: float) -> ManagedProcess | None:
        """The still-running process ``pid`` if it is the one started at ``create_time``.

        A pid the kernel reused for another process has another create time, and is
        never adopted; neither is a zombie or a process that is not its group's leader.
        """
        if not same_process(pid, create_time):
            return None
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE or os.getpgid(pid) != pid:
                return None
            pidfd = os.pidfd_open(pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, OSError):
            return None
        managed = cls(pid, create_time, adopted=True)
        managed._watch(pidfd)
        return managed

    def _watch(self, pidfd: int) -> None:
        self._pidfd = pidfd
        loop = asyncio.get_running_loop()
        loop.add_reader(pidfd, self._on_exit)

    def _on_exit(self) -> None:
        code: int | None = None
        if self._popen is not None:
            # Our own child: reap it (no zombie) and keep its exit status.
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid == 0:
                    return  # spurious wake-up: still running
                code = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                code = None
            self._popen.returncode = code
        self._unwatch()
        if not self._exit.done():
            self._exit.set_result(code)

    def _unwatch(self) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1

    async def wait(self) -> int | None:
        """Wait for the leader's exit: its code (-N for signal N); None when adopted
        (an adopted process is not our child, so its status is not ours to read)."""
        return await asyncio.shield(self._exit)

    @property
    def exited(self) -> bool:
        return self._exit.done()

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (silently nothing if it is gone)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def kill_leftovers(self) -> int:
        """SIGKILL whatever is left in the group after the leader exited; how many."""
        members = group_members(self.pgid)
        for pid in members:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if members:
            log.info("killed %d leftover process(es) of group %d", len(members), self.pgid)
        return len(members)

    async def stop(self, sig: int, timeout: float) -> int | None:
        """``sig`` to the group; within ``timeout`` the leader and the rest of the group
        may exit on their own, then whatever is left is SIGKILLed. Returns the exit code."""
        deadline = time.monotonic() + timeout
        if not self.exited:
            self.signal_group(sig)
            try:
                code = await asyncio.wait_for(self.wait(), timeout)
            except TimeoutError:
                log.warning(
                    "pid %d ignored signal %d for %.1fs: killing its group", self.pid, sig, timeout
                )
                self.signal_group(signal.SIGKILL)
                code = await self.wait()
        else:
            code = await self.wait()
        # Give the rest of the group what is left of the timeout to finish its own shutdown.
        members = await asyncio.to_thread(group_members, self.pgid)
        remaining = deadline - time.monotonic()
        if members and remaining > 0:
            await wait_for_exits(members, remaining)
        await asyncio.to_thread(self.kill_leftovers)
        return code

    def release(self) -> None:
        """Stop watching the process and leave it running (Daemon exit without stopping)."""
        self._unwatch()
        if self._popen is not None:
            # Keep subprocess' module-level reaper from waiting on it later.
            self._popen.returncode = 0
        if not self._exit.done():
            self._exit.cancel()


def _spawn_reason(
    argv: Sequence[str], cwd: str | None, user: str | None, exc: BaseException
) -> str:
    if user and isinstance(exc, PermissionError) and os.geteuid() != 0:
        return f"cannot run as user {user!r}: the Daemon is not running as root"
    if isinstance(exc, FileNotFoundError):
        if cwd and not Path(cwd).is_dir():
            return f"working directory {cwd} does not exist"
        return f"no such executable: {argv[0]}"
    if isinstance(exc, PermissionError):
        return f"permission denied running {argv[0]}"
    if isinstance(exc, KeyError):
        return f"unknown user {user!r}"
    return f"{type(exc).__name__}: {exc}"
