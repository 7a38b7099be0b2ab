"""gRPC's connection-backoff schedule (doc/connection-backoff.md in grpc/grpc).

Delays start at ``initial``, grow by ``multiplier`` per failure up to ``maximum`` and are
spread by ±``jitter`` so that a fleet that lost its Manager at once does not return at
once. Small enough to keep here rather than bend a retry library to its exact shape.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Iterator-like backoff state: ``next_delay()`` after a failure, ``reset()`` on success."""

    initial: float = 1.0
    multiplier: float = 1.6
    jitter: float = 0.2
    maximum: float = 120.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    _current: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("backoff needs multiplier >= 1 and 0 <= jitter < 1")

    def next_delay(self) -> float:
        """The delay before the next attempt (grows with each call until ``reset``)."""
        base = (
            self.initial
            if self._current == 0
            else min(self._current * self.multiplier, self.maximum)
        )
        self._current = base
        return base * (1 + self.rng.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        """Forget past failures (after a success)."""
        self._current = 0.0

    def delays(self, attempts: int) -> Iterator[float]:
        """The next ``attempts`` delays (handy for tests and documentation)."""
        for _ in range(attempts):
            yield self.next_delay()
