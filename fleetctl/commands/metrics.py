"""``fleetctl metrics AGENT`` and the summary/sparkline presentation shared with
``fleetctl nodes metrics``."""

from collections.abc import Sequence
from typing import Annotated, Any

import typer

from common.durations import format_duration

from ..errors import usage
from ..render import Output, ago, iso, number, sparkline
from ..views import RESOURCE_FIELDS, point_json, size_or_number
from ._complete import complete_node
from ._shared import (
    AgentArg,
    DaemonOpt,
    Format,
    NodeOrAgentArg,
    OutputOpt,
    parse_since,
    run,
    split_node_agent,
    state,
)

SUMMARY_HEADERS = ["FIELD", "MIN", "AVG", "MAX", "LAST", "TREND"]
SUMMARY_RIGHT = ("MIN", "AVG", "MAX", "LAST")


def summary_row(label: str, values: Sequence[float], *, is_size: bool, unicode: bool) -> list[Any]:
    if not values:
        return [label, "-", "-", "-", "-", ""]
    return [
        label,
        size_or_number(min(values), is_size),
        size_or_number(sum(values) / len(values), is_size),
        size_or_number(max(values), is_size),
        size_or_number(values[-1], is_size),
        (sparkline(values, unicode=unicode), "cyan"),
    ]


def agent_metrics(
    ctx: typer.Context,
    first: NodeOrAgentArg,
    second: AgentArg = None,
    node_opt: Annotated[
        str | None,
        typer.Option(
            "--node",
            metavar="NODE",
            help="Node of the agent, as with NODE AGENT.",
            autocompletion=complete_node,
            show_default=False,
        ),
    ] = None,
    node_short: Annotated[
        str | None,
        typer.Option("-n", hidden=True, help="Deprecated spelling of --node."),
    ] = None,
    since: Annotated[
        str, typer.Option(help="Window back from now: 30s, 5m, 1h, 2d.", metavar="DURATION")
    ] = "1h",
    raw: Annotated[bool, typer.Option("--raw", help="A table of points, not a summary.")] = False,
    output: OutputOpt = Format.table,
    daemon: DaemonOpt = None,
) -> None:
    """An agent's resource history (cpu, rss, vms, disk read/write, open files)."""
    node, agent = split_node_agent(first, second)
    if node_short is not None:
        # -n is a count everywhere else (agent logs -n 50, specs history -n 5).
        typer.echo(
            f"fleetctl: warning: '-n {node_short}' is deprecated (-n means a count, as in "
            f"'agent logs -n 50'): write '--node {node_short}' or '{node_short} {agent}'",
            err=True,
        )
    for given in (node_opt, node_short):
        if given is not None:
            if node and given != node:
                raise usage(f"two nodes given: {node} and {given}; give the node once")
            node = given
    seconds = parse_since(since)
    st = state(ctx)

    async def go() -> tuple[str, list[Any]]:
        if daemon:
            from schema import daemon_pb2

            async with st.connect(daemon, node=node) as conn:
                dresp = await conn.call(
                    conn.daemon().GetAgentMetrics(
                        daemon_pb2.AgentMetricsRequest(agent_id=agent, duration_seconds=seconds),
                        timeout=conn.timeout,
                    )
                )
                return node or conn.peer_name() or "", list(dresp.data_points)
        from schema import admin_pb2

        async with st.connect() as conn:
            resp = await conn.call(
                conn.admin().GetAgentMetrics(
                    admin_pb2.GetAgentMetricsRequest(
                        node_id=node or "", agent_id=agent, since_seconds=seconds
                    ),
                    timeout=conn.timeout,
                ),
                agent_without_node="" if node else "as NODE AGENT",
            )
            return resp.node_id or node or "", list(resp.data_points)

    node_id, points = run(go())
    points.sort(key=lambda p: p.timestamp)
    out = st.output()
    if output is Format.json:
        out.json(
            {
                "node_id": node_id or None,
                "agent_id": agent,
                "since_seconds": seconds,
                "points": [point_json(p) for p in points],
            }
        )
        return
    where = f" on {node_id}" if node_id else ""
    window = format_duration(seconds)
    if not points:
        out.line(f"no data points for agent {agent}{where} in the last {window}")
        return
    if raw:
        out.table(
            ["TIME", *(label.upper() for _, label, _ in RESOURCE_FIELDS)],
            [
                [ago(p.timestamp)]
                + [size_or_number(getattr(p, key), size) for key, _, size in RESOURCE_FIELDS]
                for p in points
            ],
            title=f"agent {agent}{where}, last {window} ({len(points)} points)",
            right=[label.upper() for _, label, _ in RESOURCE_FIELDS],
        )
        return
    out.table(
        SUMMARY_HEADERS,
        [
            summary_row(
                label,
                [float(getattr(p, key)) for p in points],
                is_size=size,
                unicode=out.rich,
            )
            for key, label, size in RESOURCE_FIELDS
        ],
        title=f"agent {agent}{where}, last {window} ({len(points)} points, "
        f"{ago(points[0].timestamp)} to {ago(points[-1].timestamp)})",
        right=SUMMARY_RIGHT,
    )


_SIZE_KEYS = {"total", "used", "free", "available", "buffers", "cached", "shared"}


def _is_size(metric_type: str, key: str) -> bool:
    k = key.lower()
    if "percent" in k or k.endswith("_pct") or "count" in k or "packets" in k:
        return False
    return (
        "bytes" in k
        or (metric_type in ("memory", "disk") and k in _SIZE_KEYS)
        or (metric_type == "memory" and k.startswith("swap_"))
    )


def print_node_metrics(
    out: Output,
    node: str,
    metrics: Sequence[Any],
    *,
    since_seconds: int,
    raw: bool,
    as_json: bool,
) -> None:
    ordered = sorted(metrics, key=lambda m: (m.timestamp, m.type))
    if as_json:
        out.json(
            {
                "node_id": node,
                "since_seconds": since_seconds,
                "metrics": [
                    {
                        "type": m.type,
                        "timestamp": iso(m.timestamp),
                        "values": dict(sorted(m.values.items())),
                    }
                    for m in ordered
                ],
            }
        )
        return
    window = format_duration(since_seconds)
    if not ordered:
        out.line(f"no metrics for node {node} in the last {window}")
        return
    if raw:
        out.table(
            ["TIME", "TYPE", "VALUES"],
            [
                [
                    ago(m.timestamp),
                    m.type,
                    " ".join(
                        f"{k}={size_or_number(v, _is_size(m.type, k))}".replace(" ", "")
                        for k, v in sorted(m.values.items())
                    ),
                ]
                for m in ordered
            ],
            title=f"node {node}, last {window} ({len(ordered)} samples)",
        )
        return
    series: dict[tuple[str, str], list[float]] = {}
    for m in ordered:
        for key, value in m.values.items():
            series.setdefault((m.type, key), []).append(float(value))
    out.table(
        ["TYPE", *SUMMARY_HEADERS],
        [
            [mtype, *summary_row(key, vals, is_size=_is_size(mtype, key), unicode=out.rich)]
            for (mtype, key), vals in sorted(series.items())
        ],
        title=f"node {node}, last {window} ({len(ordered)} samples, "
        f"{ago(ordered[0].timestamp)} to {ago(ordered[-1].timestamp)})",
        right=SUMMARY_RIGHT,
    )


__all__ = ["agent_metrics", "number", "print_node_metrics"]
