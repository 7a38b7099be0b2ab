"""common.overload.Admission: per-method budgets, early refusals with a spread hint."""

from __future__ import annotations

import re

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from common.overload import Admission, MethodLimit

HINT = re.compile(r"retry in (\d+(?:\.\d+)?) s$")


def hint_of(exc: GRPCError) -> float:
    match = HINT.search(exc.message or "")
    assert match, exc.message
    return float(match.group(1))


def test_busy_method_is_refused_with_a_spread_hint_and_others_still_get_in() -> None:
    seen: list[tuple[str, str]] = []
    draws = iter([0.0, 0.99])
    admission = Admission(
        {"ReportMetrics": MethodLimit(2), "Heartbeat": MethodLimit(100)},
        retry_after=2.0,
        observer=lambda m, r: seen.append((m, r)),
        rng=lambda: next(draws),
    )
    admission.admit("ReportMetrics", None)
    admission.admit("ReportMetrics", 10.0)
    hints = []
    for _ in range(2):
        with pytest.raises(GRPCError) as err:
            admission.admit("ReportMetrics", 10.0)
        assert err.value.status is Status.RESOURCE_EXHAUSTED
        assert "2 ReportMetrics calls already in progress" in (err.value.message or "")
        hints.append(hint_of(err.value))
    assert hints == [2.0, 4.0]  # retry_after x [1, 2): refused callers do not return in step
    admission.admit("Heartbeat", 10.0)  # its own budget
    admission.admit("ListNodes", 0.0)  # no budget: always in
    admission.release("ReportMetrics", 0.01)
    admission.admit("ReportMetrics", 10.0)
    assert admission.in_flight("ReportMetrics") == 2
    assert seen == [("ReportMetrics", "busy")] * 2


def test_a_call_whose_deadline_is_shorter_than_the_service_time_is_not_started() -> None:
    admission = Admission({"ReportMetrics": MethodLimit(100)}, rng=lambda: 0.0)
    for _ in range(50):  # the method now takes ~0.5 s
        admission.admit("ReportMetrics", None)
        admission.release("ReportMetrics", 0.5)
    with pytest.raises(GRPCError) as err:
        admission.admit("ReportMetrics", 0.2)
    assert "more than the 0.20 s left" in (err.value.message or "")
    with pytest.raises(GRPCError):
        admission.admit("ReportMetrics", -1.0)  # already expired
    admission.admit("ReportMetrics", 5.0)
    assert admission.in_flight("ReportMetrics") == 1


def test_unavailable_status_for_methods_that_should_try_another_server() -> None:
    admission = Admission({"RegisterNode": MethodLimit(1, Status.UNAVAILABLE)})
    admission.admit("RegisterNode", None)
    with pytest.raises(GRPCError) as err:
        admission.admit("RegisterNode", None)
    assert err.value.status is Status.UNAVAILABLE
    assert 1.0 <= hint_of(err.value) < 2.0


def test_a_budget_must_admit_something() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        MethodLimit(0)


def test_calls_whose_request_never_came_do_not_count_as_service_time() -> None:
    """A caller that opens calls and never finishes their bodies must not make the
    method look slow, or honest calls would be refused for their deadline."""
    admission = Admission({"Heartbeat": MethodLimit(1000)})
    for _ in range(200):  # abandoned: the read timed out after 10 s
        admission.admit("Heartbeat", None)
        admission.release("Heartbeat", None)
    admission.admit("Heartbeat", 0.05)  # a short deadline still gets in
    assert admission.in_flight("Heartbeat") == 1


def test_check_refuses_like_admit_without_taking_a_slot() -> None:
    """What the HTTP/2 layer asks when a call's HEADERS arrive: the same refusal, counted
    and observed once, and no slot taken when the call may go on (the handler admits it)."""
    seen: list[tuple[str, str]] = []
    admission = Admission(
        {"ReportMetrics": MethodLimit(1)}, observer=lambda m, r: seen.append((m, r))
    )
    assert admission.check("ReportMetrics", 10.0) is None
    assert admission.check("ListNodes", 0.0) is None  # no budget
    assert admission.in_flight("ReportMetrics") == 0
    admission.admit("ReportMetrics", 10.0)
    refusal = admission.check("ReportMetrics", 10.0)
    assert refusal is not None and refusal.status is Status.RESOURCE_EXHAUSTED
    assert "1 ReportMetrics calls already in progress" in (refusal.message or "")
    assert 1.0 <= hint_of(refusal) < 2.0
    assert admission.in_flight("ReportMetrics") == 1
    assert seen == [("ReportMetrics", "busy")]
