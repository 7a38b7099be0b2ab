"""``fleetctl nodes list|show|metrics|remove``."""

from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import usage
from ._shared import Format, NodeArg, OutputOpt, parse_labels, parse_since, run, state

if TYPE_CHECKING:
    from ..client import Connection

app = typer.Typer(help="Nodes: list, inspect, host metrics, remove.", no_args_is_help=True)

STATUSES = ("online", "offline", "stopped", "registering")
WATCH_HELP = "Redraw the list whenever something changes, until Ctrl-C."


@app.command("list")
def list_nodes(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(help="Only nodes in this status: online, offline or registering."),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            metavar="KEY=VALUE",
            help="Only nodes with this label (KEY=VALUE, repeatable).",
        ),
    ] = None,
    output: OutputOpt = Format.table,
    watch: Annotated[bool, typer.Option("--watch", "-w", help=WATCH_HELP)] = False,
) -> None:
    """List the nodes the Manager knows, with status and last heartbeat."""
    from schema import admin_pb2

    from ..views import NODE_HEADERS, NODE_WIDE_HEADERS, node_json, node_row

    if status and status not in STATUSES:
        raise usage(f"--status {status!r}: use one of {', '.join(STATUSES)}")
    labels = parse_labels(label)
    st = state(ctx)

    async def fetch(conn: "Connection") -> admin_pb2.ListNodesResponse:
        return await conn.call(
            conn.admin().ListNodes(
                admin_pb2.ListNodesRequest(status=status or "", labels=labels),
                timeout=conn.timeout,
            )
        )

    async def go() -> admin_pb2.ListNodesResponse:
        async with st.connect() as conn:
            return await fetch(conn)

    out = st.output()

    def show(reply: admin_pb2.ListNodesResponse) -> None:
        nodes = sorted(reply.nodes, key=lambda n: n.node_id)
        if output is Format.json:
            out.json([node_json(n) for n in nodes])
            return
        wide = output is Format.wide
        out.table(
            NODE_WIDE_HEADERS if wide else NODE_HEADERS,
            [node_row(n, wide=wide) for n in nodes],
            right=("AGENTS",),
        )

    if watch:
        from ._watch import run_watch

        # Status changes, and agents added or removed (the AGENTS column).
        request = admin_pb2.WatchEventsRequest(kinds=["status", "added", "removed"])
        run_watch(st, request=request, fetch=fetch, show=show)
        return
    show(run(go()))


@app.command("show")
def show_node(
    ctx: typer.Context,
    node: NodeArg,
    events: Annotated[int, typer.Option(help="How many recent events to show.", min=0)] = 20,
    output: OutputOpt = Format.table,
) -> None:
    """One node: facts, labels, status and since when, its agents, recent events."""
    from schema import admin_pb2

    from ..render import age, ago, iso, labels_text, status_cell
    from ..views import AGENT_HEADERS, agent_json, agent_row, event_json, event_row, node_json

    st = state(ctx)

    async def go() -> admin_pb2.GetNodeResponse:
        async with st.connect() as conn:
            return await conn.call(
                conn.admin().GetNode(
                    admin_pb2.GetNodeRequest(node_id=node, event_limit=events),
                    timeout=conn.timeout,
                )
            )

    resp = run(go())
    out = st.output()
    n = resp.node
    if output is Format.json:
        out.json(
            {
                "node": node_json(n),
                "agents": [agent_json(a) for a in resp.agents],
                "events": [event_json(e) for e in resp.events],
            }
        )
        return
    status_text = f"{n.status} for {age(n.status_since)}" if n.status_since else n.status
    out.fields(
        [
            ("Node", n.node_id),
            ("Hostname", n.hostname or "-"),
            ("IP", n.ip or "-"),
            ("OS/Arch", f"{n.os or '?'}/{n.arch or '?'}"),
            ("Status", (status_text, status_cell(n.status)[1])),
            ("Status since", iso(n.status_since) or "-"),
            (
                "Last heartbeat",
                f"{ago(n.last_heartbeat)} (every {n.heartbeat_interval_seconds}s)"
                if n.heartbeat_interval_seconds
                else ago(n.last_heartbeat),
            ),
            ("Labels", labels_text(n.labels)),
            ("Daemon", f"{n.daemon_version or '-'} at {n.daemon_address or '-'}"),
            ("Agent version", n.agent_version or "-"),
            ("Registered", f"{ago(n.registered_at)} ({iso(n.registered_at) or '-'})"),
        ]
    )
    out.line()
    if resp.agents:
        # The drill-down page: say why an agent is not running (FATAL, BACKOFF...).
        out.table(
            [*AGENT_HEADERS[1:], "REASON"],
            [
                [*agent_row(a)[1:], a.status_reason or "-"]
                for a in sorted(resp.agents, key=lambda a: a.id)
            ],
            title=f"Agents ({len(resp.agents)})",
            right=("PID", "RESTARTS"),
        )
    else:
        out.line("Agents: none")
    out.line()
    if resp.events:
        out.table(
            ["WHEN", "FROM", "TO", "REASON"],
            [event_row(e) for e in resp.events],
            title="Recent events",
        )
    else:
        out.line("Recent events: none")


@app.command("metrics")
def node_metrics(
    ctx: typer.Context,
    node: NodeArg,
    type_: Annotated[
        str | None,
        typer.Option("--type", "-t", help="cpu, memory, disk or network (default: all)."),
    ] = None,
    since: Annotated[
        str, typer.Option(help="Window back from now: 30s, 5m, 1h, 2d.", metavar="DURATION")
    ] = "1h",
    limit: Annotated[
        int, typer.Option(help="At most this many samples (0 = the Manager's default).", min=0)
    ] = 0,
    raw: Annotated[bool, typer.Option("--raw", help="A table of samples, not a summary.")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Host metrics of NODE from the Manager's store: min/avg/max/last and a sparkline."""
    from schema import admin_pb2

    from .metrics import print_node_metrics

    if type_ and type_ not in ("cpu", "memory", "disk", "network"):
        raise usage(f"--type {type_!r}: use cpu, memory, disk or network")
    seconds = parse_since(since)
    st = state(ctx)

    async def go() -> admin_pb2.QueryNodeMetricsResponse:
        async with st.connect() as conn:
            return await conn.call(
                conn.admin().QueryNodeMetrics(
                    admin_pb2.QueryNodeMetricsRequest(
                        node_id=node, type=type_ or "", since_seconds=seconds, limit=limit
                    ),
                    timeout=conn.timeout,
                )
            )

    resp = run(go())
    print_node_metrics(
        st.output(),
        node,
        resp.metrics,
        since_seconds=seconds,
        raw=raw,
        as_json=output is Format.json,
    )


@app.command("remove")
def remove_node(
    ctx: typer.Context,
    node: NodeArg,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Remove it even while online (a live Daemon registers again at its next beat).",
        ),
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Forget a decommissioned node: its record, agents, events and Daemon connection, and
    revoke its certificates (it joins again with a new token)."""
    from schema import admin_pb2

    st = state(ctx)

    async def go() -> admin_pb2.RemoveNodeResponse:
        async with st.connect() as conn:
            return await conn.call(
                conn.admin().RemoveNode(
                    admin_pb2.RemoveNodeRequest(node_id=node, force=force), timeout=conn.timeout
                )
            )

    resp = run(go())
    out = st.output()
    if output is Format.json:
        out.json(
            {
                "node_id": node,
                "removed": resp.removed,
                "message": resp.message,
                "certificates_revoked": resp.certificates_revoked,
            }
        )
        return
    out.line(resp.message or f"node {node} removed")
    if resp.certificates_revoked:
        out.line(
            f"its certificates are revoked: {node} cannot reconnect; "
            "join it again with a new token ('fleetctl tokens create')"
        )
