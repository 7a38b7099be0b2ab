"""A throttled Daemon keeps its metric reports: the Manager's quota refusal (issue 11
item 10) says when to come back, and only a refusal without that hint drops a report."""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from daemon.manager_client import throttle_delay


def test_quota_refusal_is_a_wait_not_a_drop() -> None:
    # The Manager's own wording (manager/services/manager_service.py).
    quota = GRPCError(
        Status.RESOURCE_EXHAUSTED,
        "node n1 is over its metrics quota (12000 samples per 600 s): retry in 21 s, when "
        "this report of 4 samples fits",
    )
    delays = [throttle_delay(quota) for _ in range(200)]
    assert all(d is not None and 21.0 <= d <= 21.0 * 1.2 for d in delays)
    assert len({round(d or 0, 3) for d in delays}) > 1  # spread, not in lockstep


def test_other_refusals_are_not_throttling() -> None:
    too_big = GRPCError(Status.RESOURCE_EXHAUSTED, "metrics has 5000 samples (max 1000)")
    assert throttle_delay(too_big) is None
    assert throttle_delay(GRPCError(Status.INVALID_ARGUMENT, "retry in 5 s")) is None
    assert throttle_delay(GRPCError(Status.UNAVAILABLE, "retry in 5 s")) is None
    assert throttle_delay(OSError("retry in 5 s")) is None
