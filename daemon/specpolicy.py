"""The host policy for central specs (``[specs]`` of daemon.toml): may this agent run here?

Checked by :mod:`daemon.specs` for every agent of a central spec, never for the agents of
``daemon.toml`` itself (docs/daemon.md, ``[specs]``).
"""

from __future__ import annotations

import fnmatch
import os
import pwd
import shutil

from common.agentspec import AgentSpec

from .config import SpecPolicy


def command_path(argv0: str, *, path_env: str, cwd: str) -> str | None:
    """``argv0`` as the absolute path a spawn runs (PATH lookup as exec does), or None."""
    if "/" in argv0:
        return os.path.normpath(os.path.join(cwd, argv0))
    found = shutil.which(argv0, path=path_env)
    return os.path.normpath(os.path.abspath(found)) if found else None


def policy_refusal(
    agent: AgentSpec, policy: SpecPolicy, *, euid: int, path_env: str, cwd: str
) -> str | None:
    """Why ``[specs]`` does not let a central spec run ``agent`` (None: it does)."""
    if policy.allow_commands:
        argv0 = agent.command[0]
        path = command_path(argv0, path_env=path_env, cwd=cwd)
        if path is None:
            return (
                f"agent {agent.id!r}: command {argv0!r} is not found on PATH, so it cannot "
                "be checked against [specs] allow_commands"
            )
        if not any(fnmatch.fnmatchcase(path, pattern) for pattern in policy.allow_commands):
            return f"agent {agent.id!r}: executable {path} is not allowed by [specs] allow_commands"
    if agent.user:
        name = agent.user
        try:
            uid = pwd.getpwnam(name).pw_uid
        except KeyError:
            uid = -1  # an unknown user cannot be root; spawning will say it is unknown
    else:
        uid = euid
        try:
            name = pwd.getpwuid(euid).pw_name
        except KeyError:
            name = str(euid)
    if uid == 0:
        if not policy.allow_root:
            how = f"user {agent.user!r}" if agent.user else "no user while the Daemon runs as root"
            return f"agent {agent.id!r} would run as root ({how}): [specs] allow_root is false"
        return None
    if policy.allow_users and name not in policy.allow_users:
        return f"agent {agent.id!r}: user {name!r} is not in [specs] allow_users"
    return None
