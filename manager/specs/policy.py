"""RolloutPolicy: how fast a rollout moves and when it stops (validated, with defaults)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidArgument
from schema import admin_pb

DEFAULT_MAX_UNAVAILABLE = "25%"
DEFAULT_HEALTHY_DEADLINE = 120
MAX_HEALTHY_DEADLINE = 86_400
MAX_FAILURES = 1_000_000
_UNAVAILABLE = re.compile(r"([0-9]{1,7})(%?)")


@dataclass(frozen=True)
class Policy:
    """A rollout's policy as stored (``fleet_rollout.policy``) and shown."""

    max_unavailable: str = DEFAULT_MAX_UNAVAILABLE
    max_failures: int = 0
    auto_rollback: bool = False
    healthy_deadline: int = DEFAULT_HEALTHY_DEADLINE

    @classmethod
    def from_request(cls, message: admin_pb.RolloutPolicy | None) -> Policy:
        """Validate an ApplySpec policy (absent fields take their defaults)."""
        if message is None:
            return cls()
        text = message.max_unavailable.strip() or DEFAULT_MAX_UNAVAILABLE
        match = _UNAVAILABLE.fullmatch(text)
        if (
            match is None
            or int(match.group(1)) < 1
            or (match.group(2) and int(match.group(1)) > 100)
        ):
            raise InvalidArgument(
                f"policy.max_unavailable {message.max_unavailable[:32]!r} must be N nodes "
                "(N >= 1) or N% (1-100%)"
            )
        if not 0 <= message.max_failures <= MAX_FAILURES:
            raise InvalidArgument(
                f"policy.max_failures {message.max_failures} is outside 0..{MAX_FAILURES}"
            )
        deadline = message.healthy_deadline_seconds
        if not 0 <= deadline <= MAX_HEALTHY_DEADLINE:
            raise InvalidArgument(
                f"policy.healthy_deadline_seconds {deadline} is outside 0..{MAX_HEALTHY_DEADLINE}"
            )
        return cls(
            max_unavailable=text,
            max_failures=message.max_failures,
            auto_rollback=message.auto_rollback,
            healthy_deadline=deadline or DEFAULT_HEALTHY_DEADLINE,
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Policy:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        return {
            "max_unavailable": self.max_unavailable,
            "max_failures": self.max_failures,
            "auto_rollback": self.auto_rollback,
            "healthy_deadline": self.healthy_deadline,
        }

    def to_message(self) -> admin_pb.RolloutPolicy:
        return admin_pb.RolloutPolicy(
            max_unavailable=self.max_unavailable,
            max_failures=self.max_failures,
            auto_rollback=self.auto_rollback,
            healthy_deadline_seconds=self.healthy_deadline,
        )

    def wave_size(self, total: int) -> int:
        """How many nodes may be changing at once out of ``total`` (rounded up, >= 1)."""
        count = int(self.max_unavailable.rstrip("%"))
        if self.max_unavailable.endswith("%"):
            count = math.ceil(total * count / 100)
        return max(1, count)
