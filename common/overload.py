"""Admission control: under overload, serve at capacity and refuse the rest early.

A server that accepts every call it is offered past its capacity queues them all; each
waits longer than the one before, runs into its deadline, and the server spends its CPU
on work nobody waits for any more — it serves *nothing*, and the retries that follow keep
it there (a congestion collapse). :class:`Admission` bounds, per method, the calls in
progress, and refuses a call before its request is read when:

* that many calls of the method are already in progress (``busy``), or
* the call's deadline is shorter than the method's recent service time (``deadline``):
  it would be answered too late to be of use, so it is not started.

A refusal is cheap (no body read, no store; on a server built by
:func:`common.h2limits.make_server`, not even a grpclib stream or task: see
:meth:`Admission.check`) and says when to come back: the message ends
with ``retry in N s`` (the Daemon parses it, adds up to 20 % jitter and keeps what it
was sending), N being ``retry_after`` × a random factor in [1, 2) so refused callers do
not return in step. Methods have separate budgets, so bulk calls (ReportMetrics) can be
refused while cheap, vital ones (Heartbeat, with a much larger budget) still get in.

The status is per method: ``RESOURCE_EXHAUSTED`` by default (the caller keeps its data
and waits for the hint), ``UNAVAILABLE`` where a caller should rather try another server
(RegisterNode, the Daemon moves to its next Manager address).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from grpclib.const import Status
from grpclib.exceptions import GRPCError

log = logging.getLogger(__name__)

# Weight of the newest call in the service-time average.
_EWMA = 0.1
# How often the refusal counts are logged (one line, not one per refusal).
_LOG_EVERY = 10.0


@dataclass(frozen=True)
class MethodLimit:
    """The admission budget of one method."""

    max_in_flight: int
    status: Status = Status.RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")


Observer = Callable[[str, str], None]


class Admission:
    """Per-method in-flight budgets with early, hinted refusals (module doc)."""

    def __init__(
        self,
        limits: Mapping[str, MethodLimit],
        *,
        retry_after: float = 1.0,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._limits = dict(limits)
        self._retry_after = retry_after
        self._observer = observer
        self._clock = clock
        self._rng = rng
        self._in_flight = dict.fromkeys(self._limits, 0)
        self._service = dict.fromkeys(self._limits, 0.0)  # EWMA seconds per call
        self._refused: dict[tuple[str, str], int] = {}
        self._logged = clock()

    def limited(self, name: str) -> bool:
        return name in self._limits

    def in_flight(self, name: str) -> int:
        return self._in_flight.get(name, 0)

    def admit(self, name: str, deadline_left: float | None) -> None:
        """Take a slot of ``name`` or raise the refusal (``GRPCError``). Unlimited
        methods are always admitted (nothing to release)."""
        refusal = self.check(name, deadline_left)
        if refusal is not None:
            raise refusal
        if name in self._in_flight:
            self._in_flight[name] += 1

    def check(self, name: str, deadline_left: float | None) -> GRPCError | None:
        """The refusal :meth:`admit` would raise now — counted, observed and logged as a
        refusal — or None; takes no slot. :mod:`common.h2limits` asks this when a call's
        HEADERS arrive, to refuse it before grpclib builds anything for it; a call it
        lets through is admitted (and may still be refused) by :meth:`admit`."""
        limit = self._limits.get(name)
        if limit is None:
            return None
        if self._in_flight[name] >= limit.max_in_flight:
            return self._refuse(
                name,
                limit,
                "busy",
                f"server busy: {limit.max_in_flight} {name} calls already in progress",
            )
        if deadline_left is not None and deadline_left <= self._service[name]:
            return self._refuse(
                name,
                limit,
                "deadline",
                f"server busy: {name} takes about {self._service[name]:.2f} s now, more than "
                f"the {max(deadline_left, 0.0):.2f} s left of this call's deadline",
            )
        return None

    def release(self, name: str, seconds: float | None) -> None:
        """Give back the slot taken by :meth:`admit`; ``seconds``: how long the handler
        worked once the request was read (None when it never was: a body that stalled
        or was refused says nothing about the service time)."""
        if name not in self._limits:
            return
        self._in_flight[name] -= 1
        if seconds is not None:
            self._service[name] += _EWMA * (seconds - self._service[name])

    def _refuse(self, name: str, limit: MethodLimit, reason: str, text: str) -> GRPCError:
        hint = round(self._retry_after * (1.0 + self._rng()), 1)
        key = (name, reason)
        self._refused[key] = self._refused.get(key, 0) + 1
        if self._observer is not None:
            self._observer(name, reason)
        now = self._clock()
        if now - self._logged >= _LOG_EVERY:
            self._logged = now
            counts = ", ".join(f"{n} {m} ({r})" for (m, r), n in sorted(self._refused.items()))
            log.warning("overloaded: refused %s in the last %.0f s", counts, _LOG_EVERY)
            self._refused.clear()
        return GRPCError(limit.status, f"{text}; retry in {hint:g} s")
