"""The worst request each Manager and Daemon method must take apart, and what it costs.

A request within the size limit can still be expensive to decode (issue 11 item 3: "no
single request within the size limit may block an event loop for more than tens of
milliseconds"). For every method of every Fleet gRPC server, this builds the nastiest
request the server's bounds let through — as many messages as the decode limits of
:mod:`common.wirelimits` allow on every message-typed path (empty entries, two bytes
each: the most objects per byte; nested paths packed into the first parent, so map
entries sit inside repeated entries), up to the method's field-record budget and the
server's size limit — and times what the server does with it before its handler runs:
the wire walk (``Plan.check``) and the decode (``FromString``), with the request class
the server's handler table names (betterproto, or upb where a service swaps it in).
Methods a server refuses to every caller (not in its policy: e.g. the agent methods on
the Daemon's TCP port) are left out: their requests are never read.

It also times the same shape one entry past the path's limit (the refusal: the walk
alone), so both sides of each bound are measured.

    python -m bench.decode_worst             # table, ms per method (median of --repeat)
    python -m bench.decode_worst --json      # the same as JSON
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit_json, print_table
from bench.attack_h2 import length_delimited, varint

BOUND_MS = 50.0  # "tens of milliseconds": the bound, at its upper end


@dataclass
class Server:
    """One listener: its services (handler tables, each with the method policy it is
    guarded by) and request size limit."""

    name: str
    services: list[tuple[Any, dict[str, Any]]]
    max_bytes: int


def _servers() -> list[Server]:
    from common.rpc import DEFAULT_MAX_MESSAGE_BYTES
    from daemon.services import agent_service, control_service
    from daemon.services.agent_service import AgentService
    from daemon.services.control_service import ControlService
    from manager.app import ADMIN_POLICY, MANAGER_POLICY
    from manager.enroll import listener
    from manager.enroll.service import EnrollService
    from manager.services.admin_service import AdminService
    from manager.services.manager_service import ManagerService

    def table(cls: type) -> Any:
        # The handler table only names bound methods: no dependencies needed.
        return object.__new__(cls)

    return [
        Server(
            "manager",
            [(table(ManagerService), MANAGER_POLICY), (table(AdminService), ADMIN_POLICY)],
            DEFAULT_MAX_MESSAGE_BYTES,
        ),
        Server("enroll", [(table(EnrollService), listener.POLICY)], listener.MAX_MESSAGE_BYTES),
        Server(
            "daemon tcp",
            [(table(ControlService), control_service.POLICY)],
            DEFAULT_MAX_MESSAGE_BYTES,
        ),
        Server(
            "agent socket", [(table(AgentService), agent_service.POLICY)], DEFAULT_MAX_MESSAGE_BYTES
        ),
    ]


# Wire type and the smallest non-default payload, per scalar type (betterproto's names;
# protobuf descriptor type numbers map onto them through _UPB_TYPES).
_SCALAR = {
    "double": (1, b"\x00" * 7 + b"\x01"), "fixed64": (1, b"\x01" + b"\x00" * 7),
    "sfixed64": (1, b"\x01" + b"\x00" * 7), "float": (5, b"\x00\x00\x80\x3f"),
    "fixed32": (5, b"\x01\x00\x00\x00"), "sfixed32": (5, b"\x01\x00\x00\x00"),
    "string": (2, b"\x01a"), "bytes": (2, b"\x01a"),
}  # fmt: skip
_UPB_TYPES = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 6: "fixed64",
    7: "fixed32", 8: "bool", 9: "string", 12: "bytes", 13: "uint32", 14: "enum",
    15: "sfixed32", 16: "sfixed64", 17: "sint32", 18: "sint64",
}  # fmt: skip


def _fields(cls: Any) -> list[tuple[int, str, Any]]:
    """(number, scalar type or "message", message class) per field of a betterproto class
    or a protobuf descriptor."""
    if hasattr(cls, "_betterproto"):
        meta = cls._betterproto
        return [
            (i.number, "message" if i.proto_type in ("message", "map") else i.proto_type,
             meta.cls_by_field.get(name))
            for name, i in meta.meta_by_field_name.items()
        ]  # fmt: skip
    return [
        (f.number, "message" if f.message_type else _UPB_TYPES.get(f.type, "int64"),
         f.message_type)
        for f in cls.fields
    ]  # fmt: skip


def _scalars(cls: Any) -> tuple[bytes, int]:
    """Every scalar field of ``cls`` set once, smallest non-default value: (bytes, records)."""
    out, n = b"", 0
    for number, kind, _child in _fields(cls):
        if kind == "message":
            continue
        wire, payload = _SCALAR.get(kind, (0, b"\x01"))
        out += varint(number << 3 | wire) + payload
        n += 1
    return out, n


def worst_body(
    plan: Any, request_type: Any, max_bytes: int, *, variant: str, over: int = 0
) -> tuple[bytes, int]:
    """The request of ``variant`` with the most messages ``plan`` lets through (``over``
    more on its largest path): (body, messages in it).

    * ``empty``: every message-typed path at its limit with empty entries;
    * ``filled``: the same, every entry with all its scalar fields set;
    * ``scalars``: the field-record budget spent on one scalar field sent again and again.
    """
    from common.wirelimits import _Shape

    budget = plan.limits.max_fields - 1
    if variant == "scalars":
        for number, kind, _child in _fields(_root(request_type)):
            if kind != "message":
                wire, payload = _SCALAR.get(kind, (0, b"\x01"))
                one = varint(number << 3 | wire) + payload
                count = min(budget, max_bytes // len(one))
                return one * count, 0
        return b"", 0
    caps = list(plan.caps)
    if over and caps:
        caps[max(range(len(caps)), key=caps.__getitem__)] += over
        budget += over
    counts = [0] * len(caps)
    total = 0
    walked = not plan.upb  # betterproto plans walk (and count) every record

    def build(cls: Any, shape: _Shape | None, room: int) -> bytes:
        """One message: for each message-typed field, its first entry holds everything
        below it, the rest are plain (empty or filled); ``room`` bytes at most."""
        nonlocal budget, total
        parts: list[bytes] = []
        classes = {number: child for number, _kind, child in _fields(cls)}
        if variant == "filled":
            scalars, n = _scalars(cls)
            parts.append(scalars)
            if walked or shape is not None:
                budget -= n
        if shape is None:
            return b"".join(parts)
        for number, (index, sub) in shape.children.items():
            tag = varint(number << 3 | 2)
            left = caps[index] - counts[index]
            if left <= 0 or budget <= 0:
                continue
            counts[index] += 1
            budget -= 1
            total += 1
            child = classes[number]
            first = length_delimited(number, build(child, sub, room - 8))
            plain, cost = b"", 0
            if variant == "filled":
                plain, k = _scalars(child)
                cost = k if walked or sub is not None else 0
            entry = tag + varint(len(plain)) + plain
            n = min(left - 1, budget // (1 + cost), max(0, (room - len(first)) // len(entry)))
            counts[index] += n
            budget -= n * (1 + cost)
            total += n
            chunk = first + entry * n
            parts.append(chunk)
            room -= len(chunk)
        return b"".join(parts)

    body = build(_root(request_type), plan.shape, max_bytes)
    return body, total


def _root(request_type: Any) -> Any:
    return request_type.DESCRIPTOR if hasattr(request_type, "DESCRIPTOR") else request_type


def _time(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def measure(repeat: int) -> list[dict[str, Any]]:
    from common.rpc import GuardedService
    from common.wirelimits import DecodeRefused

    rows = []
    for server in _servers():
        for service, policy in server.services:
            guard = GuardedService(service, policy=policy, max_message_bytes=server.max_bytes)
            for path, handler in service.__mapping__().items():
                name = path.rsplit("/", 1)[-1]
                if name not in policy:
                    continue  # refused to every caller before its request is read
                cls = handler.request_type
                plan = guard._plan(path, name, cls)
                worst: dict[str, Any] | None = None
                for variant in ("empty", "filled", "scalars"):
                    body, messages = worst_body(plan, cls, server.max_bytes, variant=variant)

                    def served(body: bytes = body, plan: Any = plan, cls: Any = cls) -> None:
                        plan.check(body)
                        cls.FromString(body)

                    ms = _time(served, repeat)
                    if worst is None or ms > worst["decode_ms"]:
                        worst = {
                            "server": server.name,
                            "method": name,
                            "runtime": "upb" if plan.upb else "betterproto",
                            "variant": variant,
                            "bytes": len(body),
                            "messages": messages,
                            "decode_ms": round(ms, 2),
                            "refusal_ms": None,
                        }
                assert worst is not None
                if plan.caps and worst["variant"] != "scalars":
                    over, _ = worst_body(
                        plan, cls, server.max_bytes, variant=worst["variant"], over=1
                    )

                    def refused(body: bytes = over, plan: Any = plan) -> None:
                        try:
                            plan.check(body)
                        except DecodeRefused:
                            return
                        raise AssertionError("one entry over the limit was not refused")

                    worst["refusal_ms"] = round(_time(refused, repeat), 2)
                rows.append(worst)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per method (median)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    rows = measure(args.repeat)
    rows.sort(key=lambda r: -r["decode_ms"])
    if args.json:
        emit_json({"bound_ms": BOUND_MS, "methods": rows})
    else:
        print_table(
            ["server", "method", "runtime", "worst", "bytes", "messages", "decode ms",
             "refusal ms"],
            [
                [
                    r["server"], r["method"], r["runtime"], r["variant"], r["bytes"], r["messages"],
                    f"{r['decode_ms']:.2f}",
                    "-" if r["refusal_ms"] is None else f"{r['refusal_ms']:.2f}",
                ]
                for r in rows
            ],
        )  # fmt: skip
        worst = rows[0]
        print(
            f"worst: {worst['server']} {worst['method']} {worst['decode_ms']:.1f} ms "
            f"(bound {BOUND_MS:g} ms)"
        )
    return 0 if rows[0]["decode_ms"] <= BOUND_MS else 1


if __name__ == "__main__":
    sys.exit(main())
