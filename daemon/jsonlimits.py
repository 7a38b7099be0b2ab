"""Bounds on the JSON the Daemon is handed: how long and how deeply nested.

A ``PushUpdate`` config nested ~600 levels deep used to be accepted, answered
``INTERNAL``, and then broke every later save of the Daemon's state with a recursion
error (the indented JSON encoder recurses in Python), which stopped supervision. Such
input is now refused up front with ``INVALID_ARGUMENT``: at most
``updates.max_config_chars`` characters and ``updates.max_config_depth`` levels of
nested objects and arrays.

The length is checked before parsing, so parsing (C code, linear) is bounded by it; the
depth is checked on the parsed value without recursion. Input too deep even for the
parser (it raises ``RecursionError``) is refused the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidArgument

DEFAULT_MAX_CHARS = 256 * 1024
DEFAULT_MAX_DEPTH = 32


@dataclass(frozen=True)
class JSONLimits:
    """``[updates]`` of daemon.toml: what a pushed config may be."""

    max_chars: int = DEFAULT_MAX_CHARS
    max_depth: int = DEFAULT_MAX_DEPTH

    def __post_init__(self) -> None:
        if self.max_chars < 2 or self.max_depth < 1:
            raise ValueError(f"invalid JSON limits: {self}")


def depth(value: Any, *, stop_above: int) -> int:
    """Levels of nested objects and arrays in ``value`` (a scalar is 0, ``{}`` is 1),
    counted without recursion; counting stops once it passes ``stop_above``."""
    deepest = 0
    level: list[Any] = [value]
    while level:
        containers = [v for v in level if isinstance(v, dict | list)]
        if not containers:
            break
        deepest += 1
        if deepest > stop_above:
            break
        level = [
            child
            for container in containers
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, dict | list)
        ]
    return deepest


def parse_object(field: str, text: str, limits: JSONLimits) -> dict[str, Any]:
    """``text`` as a JSON object within ``limits``; :class:`InvalidArgument` naming
    ``field``, the bound and the config key otherwise."""
    if len(text) > limits.max_chars:
        raise InvalidArgument(
            f"{field} is {len(text)} characters long "
            f"(max {limits.max_chars}: updates.max_config_chars)"
        )
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidArgument(
            f"{field} is nested too deeply (max {limits.max_depth}: updates.max_config_depth)"
        ) from None
    except ValueError as exc:
        raise InvalidArgument(f"{field} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be a JSON object")
    levels = depth(value, stop_above=limits.max_depth)
    if levels > limits.max_depth:
        raise InvalidArgument(
            f"{field} is nested more than {limits.max_depth} levels deep (updates.max_config_depth)"
        )
    return value
