"""Fleet's own exceptions, raised by domain code and translated to gRPC statuses at the edge.

Domain code never builds ``GRPCError`` itself: it raises one of these, and
:mod:`common.rpc` turns it into the status named by ``status`` with the message as given.
"""

from __future__ import annotations

from grpclib.const import Status


class FleetError(Exception):
    """Base class: an error with a message meant for the caller."""

    status: Status = Status.INTERNAL


class InvalidArgument(FleetError):
    """The request itself is wrong (empty id, bad operation, out-of-range value)."""

    status = Status.INVALID_ARGUMENT


class NotFound(FleetError):
    """The node, agent or object named does not exist."""

    status = Status.NOT_FOUND


class PermissionDenied(FleetError):
    """The caller's identity may not do this (e.g. a node speaking for another node)."""

    status = Status.PERMISSION_DENIED


class Unauthenticated(FleetError):
    """The caller's credentials are missing or wrong."""

    status = Status.UNAUTHENTICATED


class FailedPrecondition(FleetError):
    """The request is valid but the system is not in a state to honour it (ambiguous agent)."""

    status = Status.FAILED_PRECONDITION


class AlreadyExists(FleetError):
    """Something with that identity is already there (a second Daemon for one node)."""

    status = Status.ALREADY_EXISTS


class Unavailable(FleetError):
    """A dependency (database, Daemon) cannot be reached right now; retrying may help."""

    status = Status.UNAVAILABLE


class ResourceExhausted(FleetError):
    """A size or count bound was exceeded."""

    status = Status.RESOURCE_EXHAUSTED


class DeadlineExceeded(FleetError):
    """The operation did not finish within its deadline."""

    status = Status.DEADLINE_EXCEEDED
