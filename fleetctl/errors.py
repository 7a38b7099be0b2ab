"""fleetctl's error type and exit codes.

Everything that can go wrong in a command ends as a :class:`CliError`: one line for stderr
and an exit code from :class:`ExitCode`. ``app.FleetGroup.main`` is the only place that
prints them, so no command prints a traceback unless ``--debug`` asked for one.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """fleetctl's exit codes (documented in docs/fleetctl.md)."""

    OK = 0
    FAILED = 1  # the operation ran and failed (agent did not start, a node of --all failed)
    USAGE = 2  # bad flags, arguments, durations, settings or certificate files
    NOT_FOUND = 3  # unknown node or agent
    PERMISSION_DENIED = 4  # the certificate was refused or lacks the admin role
    UNAVAILABLE = 5  # manager/daemon unreachable, timed out, or its dependency is down
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as shells report it)


class CliError(Exception):
    """A failure to report as one line on stderr, exiting with ``code``."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


def usage(message: str) -> CliError:
    """A usage error (exit 2)."""
    return CliError(message, ExitCode.USAGE)
