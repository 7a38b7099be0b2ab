"""Decode bombs: bound what a request may make the decoder build, before it is decoded.

A request within the size limit can still cost far more to decode than to send: two
bytes on the wire (``0x12 0x00``) are one empty ``AgentState`` that betterproto builds
for ~85 µs, so a 2 MB SyncAgentStates of 1,000,000 empty entries kept the Manager's
event loop busy for ~44 s before its handler could count them. protobuf's upb runtime
is ~500 times faster per message but not free either (185 ms for the same million).

:func:`check` walks the wire format — tags and lengths only, no objects — and stops as
soon as a bound is crossed, so refusing a bomb costs what reading up to its limit costs
(well under a millisecond for the million above), not what decoding it would:

* per field path (``"states"``, ``"metrics.values"``) a cap on how many messages the
  path may hold across the whole request (repeated elements, map entries, or a
  singular message field sent more than once), ``default_repeated`` for paths not
  named;
* a cap on the field records walked (``max_fields``), which bounds floods of scalars,
  of unknown fields and of a singular field repeated a million times — and the walk
  itself.

For betterproto request classes the walk descends into every message, because
betterproto spends Python time on every field of every message. For upb classes it
descends only into messages that themselves hold messages (upb parses scalar fields at
a few ns each), and a body of at most :attr:`DecodeLimits.direct_bytes` is not walked
at all: upb decodes any such body in a few milliseconds, and the handlers check their
own counts on the decoded message.

The shape of each request type is read from its class: betterproto's field metadata or
protobuf's descriptor, so the walker needs no generated code of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# What a method that is not listed in DEFAULT_DECODE_LIMITS may carry.
DEFAULT_REPEATED = 256
DEFAULT_MAX_FIELDS = 8192
DEFAULT_DIRECT_BYTES = 64 * 1024
_MAX_DEPTH = 32  # message nesting followed by the walk; deeper fields are skipped unread


class DecodeRefused(Exception):
    """The request breaks a decode bound, or is not protobuf; the message says which."""


@dataclass(frozen=True)
class DecodeLimits:
    """What one method's request may hold, checked on the wire before it is decoded.

    ``repeated`` maps a field path (field names joined by dots, as in the ``.proto``:
    ``"metrics.values"``) to the most messages it may hold in the whole request; other
    message-typed paths may hold ``default_repeated``. ``max_fields`` bounds the field
    records walked. ``direct_bytes``: upb requests up to this size are decoded without
    a walk (see the module docstring).
    """

    repeated: Mapping[str, int] = field(default_factory=dict)
    default_repeated: int = DEFAULT_REPEATED
    max_fields: int = DEFAULT_MAX_FIELDS
    direct_bytes: int = DEFAULT_DIRECT_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "repeated", MappingProxyType(dict(self.repeated)))
        for path, cap in self.repeated.items():
            if cap < 0:
                raise ValueError(f"decode limit for {path} must be >= 0, not {cap}")
        if self.default_repeated < 0 or self.max_fields < 1 or self.direct_bytes < 0:
            raise ValueError(f"invalid decode limits: {self}")


def manager_report_metrics_limits(
    *, max_samples_per_report: int = 1000, max_values_per_sample: int = 64
) -> DecodeLimits:
    """ManagerService ReportMetrics bounds matching the Manager's own validation
    (``ingest.max_samples_per_report`` / ``max_values_per_sample``)."""
    samples, values = max_samples_per_report, max_values_per_sample
    return DecodeLimits(
        repeated={"metrics": samples, "metrics.values": samples * values},
        # Walked levels only (upb): the request's records plus each sample's own.
        max_fields=samples * (values + 4) + 16,
    )


_MANAGER = "/fleet.manager.v1.ManagerService/"
_DAEMON = "/fleet.daemon.v1.DaemonService/"

# Methods whose requests legitimately hold more than the defaults allow, with bounds at
# the handlers' own maxima (so no request they would accept is refused here). Keys are
# gRPC method paths; GuardedService(decode_limits=...) overrides any of them by name.
DEFAULT_DECODE_LIMITS: Mapping[str, DecodeLimits] = MappingProxyType(
    {
        # <= 1000 agents (MAX_AGENTS_PER_SYNC) and <= 1000 spec states, 13 and 6 fields.
        _MANAGER + "SyncAgentStates": DecodeLimits(
            repeated={"states": 1000, "specs": 1000}, max_fields=20_000
        ),
        _MANAGER + "ReportMetrics": manager_report_metrics_limits(),
        # Agent socket: <= 1000 metrics a call (agent-api.md), labels bounded in total.
        _DAEMON + "ReportMetrics": DecodeLimits(
            repeated={"metrics": 1000, "metrics.labels": 16_384}, max_fields=60_000
        ),
        # Manager -> Daemon: <= 1000 signed specs in one set (MAX_SPECS).
        _DAEMON + "ApplySpecs": DecodeLimits(repeated={"specs": 1000}),
    }
)


class _Shape:
    """How to walk one message type: its message-typed fields, by field number."""

    __slots__ = ("children",)

    def __init__(self) -> None:
        # field number -> (index of the field's path, shape to descend into or None)
        self.children: dict[int, tuple[int, _Shape | None]] = {}


@dataclass(frozen=True)
class Plan:
    """A request type's walk, with the caps of one method. Built once per method."""

    shape: _Shape
    paths: tuple[str, ...]
    caps: tuple[int, ...]
    limits: DecodeLimits
    upb: bool

    def check(self, body: bytes) -> None:
        """Raise :class:`DecodeRefused` if ``body`` breaks a bound (or is not protobuf)."""
        if self.upb and len(body) <= self.limits.direct_bytes:
            return
        counts = [0] * len(self.paths)
        try:
            left = _walk(body, 0, len(body), self.shape, counts, self.caps, self.limits.max_fields)
        except _OverCap as over:
            path, cap = self.paths[over.index], self.caps[over.index]
            raise DecodeRefused(f"{path} has more than {cap} entries (limit {cap})") from None
        except _OverBudget:
            raise DecodeRefused(
                f"request has more than {self.limits.max_fields} fields "
                f"(limit {self.limits.max_fields})"
            ) from None
        except (_Malformed, IndexError):
            raise DecodeRefused("request is not a valid protobuf message") from None
        del left


def plan_for(request_type: Any, limits: DecodeLimits) -> Plan:
    """The walk of ``request_type`` (a betterproto or upb message class) under ``limits``."""
    upb = hasattr(request_type, "DESCRIPTOR")
    reader = _upb_fields if upb else _betterproto_fields
    paths: list[str] = []
    shapes: dict[tuple[Any, str], _Shape] = {}

    def build(cls: Any, prefix: str, depth: int) -> _Shape | None:
        fields = reader(cls)  # a betterproto class, or a upb message descriptor
        if depth >= _MAX_DEPTH or (upb and not any(f[2] is not None for f in fields)):
            return None  # upb parses a message of scalars at C speed: count, do not walk
        key = (cls, prefix)
        if key in shapes:
            return shapes[key]
        shape = shapes[key] = _Shape()
        for number, name, child_cls in fields:
            if child_cls is None:
                continue
            path = f"{prefix}{name}"
            paths.append(path)
            index = len(paths) - 1
            shape.children[number] = (index, build(child_cls, path + ".", depth + 1))
        return shape

    root = build(request_type.DESCRIPTOR if upb else request_type, "", 0) or _Shape()
    caps = tuple(limits.repeated.get(p, limits.default_repeated) for p in paths)
    return Plan(shape=root, paths=tuple(paths), caps=caps, limits=limits, upb=upb)


def _betterproto_fields(cls: Any) -> list[tuple[int, str, Any]]:
    """(number, name, message class or None) per field of a betterproto class.

    A map field counts as a message field whose entries are messages of two fields
    (betterproto's own entry class), so its entries are counted and walked like any.
    """
    meta = cls._betterproto
    out = []
    for name, info in meta.meta_by_field_name.items():
        child = None
        if info.proto_type in ("message", "map"):
            child = meta.cls_by_field[name]
        out.append((info.number, name, child))
    return out


def _upb_fields(descriptor: Any) -> list[tuple[int, str, Any]]:
    """Same for a protobuf message descriptor; a map's entry type is a message like any."""
    return [(f.number, f.name, f.message_type) for f in descriptor.fields]


class _Malformed(Exception):
    pass


class _OverBudget(Exception):
    pass


class _OverCap(Exception):
    def __init__(self, index: int) -> None:
        self.index = index


def _varint(buf: bytes, pos: int, first: int) -> tuple[int, int]:
    """A varint whose first byte (already read, >= 0x80) is ``first``; returns value, pos."""
    value, shift = first & 0x7F, 7
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Malformed


def _walk(
    buf: bytes, pos: int, end: int, shape: _Shape, counts: list[int], caps: tuple[int, ...],
    budget: int,
) -> int:  # fmt: skip
    """Walk the records of one message in ``buf[pos:end]``; return the budget left."""
    children = shape.children
    while pos < end:
        budget -= 1
        if budget < 0:
            raise _OverBudget
        tag = buf[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = _varint(buf, pos, tag)
        if tag < 8:  # field number 0
            raise _Malformed
        kind = tag & 7
        if kind == 2:
            length = buf[pos]
            pos += 1
            if length >= 0x80:
                length, pos = _varint(buf, pos, length)
            stop = pos + length
            if stop > end:
                raise _Malformed
            child = children.get(tag >> 3)
            if child is not None:
                index, sub = child
                count = counts[index] + 1
                if count > caps[index]:
                    raise _OverCap(index)
                counts[index] = count
                if sub is not None:
                    budget = _walk(buf, pos, stop, sub, counts, caps, budget)
            pos = stop
        elif kind == 0:
            limit = pos + 9  # a varint has at most 10 bytes
            while buf[pos] >= 0x80:
                pos += 1
                if pos > limit:
                    raise _Malformed
            pos += 1
        elif kind == 1:
            pos += 8
        elif kind == 5:
            pos += 4
        else:  # groups (3, 4) are proto2-only; 6 and 7 do not exist
            raise _Malformed
    if pos != end:
        raise _Malformed
    return budget
