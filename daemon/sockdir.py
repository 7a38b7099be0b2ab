"""Where the agent socket lives, and making sure nobody else controls that place.

Agents find the Daemon through ``FLEET_AGENT_SOCKET`` and send it their secret token on
every call. Whoever can replace the socket, or rename one of the directories above it,
can put their own socket there and collect those tokens. The path used to be trusted
as soon as its last directory was ours, so another user who created the ``/tmp``
fallback's parent (``/tmp/fleet-daemon-<uid>``) first could swap our directory out from
under us.

:func:`prepare_socket_dir` checks every directory from ``/`` down, as ssh-agent and
tmux do, and refuses with an error naming the directory unless each one is safe:

* owned by root or by the Daemon's user (a symlink on the way too, and its target is
  checked the same way);
* not writable by other users, unless it has the sticky bit (``/tmp``: nobody can
  rename or delete what others own there); group-writable only when the group is the
  Daemon user's private group (nobody else in it);
* the socket's own directory belongs to the Daemon's user and is made 0700 (whatever
  its mode was: nobody else can rename it, and a stale ``agent.sock`` in it is removed,
  anything else of that name refused).

Directories that do not exist yet are created one at a time, mode 0700, and checked
after creation (another user who wins the race makes the check fail, never succeed).
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import stat
from pathlib import Path

from .config import DaemonConfig

MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux (107 usable); leave a margin
_SHARED_DIRS = frozenset({"/", "/tmp", "/var/tmp", "/run", "/var/run", "/dev/shm"})
_MAX_SYMLINKS = 40


class UnsafeSocketPath(Exception):
    """The agent socket cannot be placed safely; the message says which directory and why."""


def agent_socket_path(config: DaemonConfig) -> Path:
    """The configured socket, or ``<state_dir>/run/agent.sock``; when that is too long for
    a Unix socket, ``<agent_api.fallback_dir>/fleet-daemon-<uid>/<hash>/agent.sock``."""
    if config.agent_socket:
        return Path(config.agent_socket)
    path = config.state_dir / "run" / "agent.sock"
    if len(str(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(config.state_dir).encode()).hexdigest()[:12]
    return Path(config.agent_fallback_dir) / f"fleet-daemon-{os.getuid()}" / digest / "agent.sock"


def prepare_socket_dir(path: Path) -> None:
    """Make ``path``'s directory a private one of ours (0700), every directory above it
    safe, and remove a socket left over at ``path``; :class:`UnsafeSocketPath` if not."""
    path = Path(os.path.abspath(path))
    directory = path.parent
    if str(directory) in _SHARED_DIRS:
        raise UnsafeSocketPath(
            f"agent socket {path} must be in a directory of its own, not {directory}"
        )
    if len(str(path)) > 107:
        raise UnsafeSocketPath(f"agent socket path {path} is longer than the 107-byte limit")
    real = private_dir(directory)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK((real / path.name).lstat().st_mode):
            (real / path.name).unlink()  # left over from a Daemon that did not exit cleanly
        else:
            raise UnsafeSocketPath(f"{path} exists and is not a socket")


def private_dir(directory: Path) -> Path:
    """Check (creating what is missing) that ``directory`` and every directory above it
    are safe (see the module docstring), make ``directory`` 0700; its real path."""
    uid = os.geteuid()
    walker = _Walker(uid)
    real = walker.walk(Path(os.path.abspath(directory)), create=True)
    st = os.stat(real)
    if st.st_uid != uid:
        raise UnsafeSocketPath(
            f"agent socket directory {real} is owned by {_user(st.st_uid)}, not by this "
            f"Daemon's user, {_user(uid)}"
        )
    os.chmod(real, 0o700)
    return real


class _Walker:
    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.hops = 0

    def walk(self, path: Path, *, create: bool) -> Path:
        """The real path of ``path`` after checking each component from ``/`` down."""
        current = Path("/")
        self.check_dir(current, os.lstat(current))
        parts = path.parts[1:]
        for i, name in enumerate(parts):
            if name in ("", "."):
                continue
            if name == "..":
                current = current.parent
                continue
            candidate = current / name
            try:
                st = os.lstat(candidate)
            except FileNotFoundError:
                if not create:
                    raise
                st = self.make(candidate)
            if stat.S_ISLNK(st.st_mode):
                self.check_owner(candidate, st, "symlink")
                self.hops += 1
                if self.hops > _MAX_SYMLINKS:
                    raise UnsafeSocketPath(f"too many symlinks resolving {path}")
                target = Path(os.readlink(candidate))
                rest = Path(*parts[i + 1 :]) if i + 1 < len(parts) else Path()
                full = (target if target.is_absolute() else current / target) / rest
                return self.walk(Path(os.path.normpath(full)), create=create)
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeSocketPath(f"{candidate} is not a directory")
            if i == len(parts) - 1 and st.st_uid == self.uid:
                pass  # the socket's own directory: ours, made 0700 by the caller
            else:
                self.check_dir(candidate, st)
            current = candidate
        return current

    def make(self, candidate: Path) -> os.stat_result:
        try:
            os.mkdir(candidate, 0o700)
        except FileExistsError:
            pass  # someone else just made it: checked below like any directory
        else:
            os.chmod(candidate, 0o700)  # mkdir's mode is filtered by the umask
        return os.lstat(candidate)

    def check_owner(self, where: Path, st: os.stat_result, what: str) -> None:
        if st.st_uid not in (0, self.uid):
            raise UnsafeSocketPath(
                f"{what} {where} on the agent socket's path is owned by {_user(st.st_uid)}, "
                f"not by root or this Daemon's user, {_user(self.uid)}: whoever owns it can "
                "put another socket in the Daemon's place and collect agent tokens; remove "
                "it, or set agent_api.socket (or agent_api.fallback_dir) to a private directory"
            )

    def check_dir(self, where: Path, st: os.stat_result) -> None:
        self.check_owner(where, st, "directory")
        mode = stat.S_IMODE(st.st_mode)
        if mode & stat.S_ISVTX:
            return  # sticky (/tmp): others cannot rename or remove what is not theirs
        if mode & stat.S_IWOTH or (mode & stat.S_IWGRP and not _private_group(st.st_gid)):
            raise UnsafeSocketPath(
                f"directory {where} on the agent socket's path is writable by other users "
                f"(mode {mode:04o}, group {_group(st.st_gid)}): they could replace what is "
                "below it; chmod go-w it, or set agent_api.socket (or "
                "agent_api.fallback_dir) to a private directory"
            )


def _private_group(gid: int) -> bool:
    """Whether ``gid`` is a user-private group of the Daemon's own user (no one else in
    it), which a group-writable home directory often has."""
    me = _name(os.geteuid())
    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return False
    if any(member != me for member in group.gr_mem):
        return False
    return all(p.pw_name == me for p in pwd.getpwall() if p.pw_gid == gid)


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _user(uid: int) -> str:
    return f"uid {uid} ({_name(uid)})"


def _group(gid: int) -> str:
    try:
        return f"{gid} ({grp.getgrgid(gid).gr_name})"
    except KeyError:
        return str(gid)
