"""``fleetctl events [NODE] [AGENT]`` and ``fleetctl agent show [NODE] AGENT``: the
Manager's event history (starts, exits and why, crash restarts, FATAL, operations with
who asked, config pushes, reloads, node status changes) and one agent's whole story.
"""

import time
from typing import Annotated, Any

import typer

from ..errors import usage
from ._complete import complete_agent, complete_node
from ._shared import (
    AgentArg,
    Format,
    NodeOrAgentArg,
    OutputOpt,
    parse_since,
    run,
    split_node_agent,
    state,
)

# admin.proto Event.kind (manager/services/admin_service.py EVENT_KINDS).
KINDS = (
    "started",
    "exited",
    "restarted",
    "fatal",
    "status",
    "added",
    "removed",
    "suppressed",
    "operation",
    "config",
    "reload",
    "spec",
)
MAX_LIMIT = 5000  # ListEvents' bound
MAX_AGENT_EVENTS = 100  # GetAgent's bound

EVENT_HEADERS = ["TIME", "NODE", "AGENT", "KIND", "MESSAGE", "ACTOR"]
EVENT_WIDE_HEADERS = [*EVENT_HEADERS, "AT", "STATUS", "PID"]


def event_json(e: Any) -> dict[str, Any]:
    """One history event (docs/fleetctl.md, JSON reference: event)."""
    from ..render import iso

    return {
        "id": e.id,
        "timestamp": iso(e.timestamp),
        "node_id": e.node_id,
        "agent_id": e.agent_id or None,
        "kind": e.kind,
        "message": e.message,
        "actor": e.actor or None,
        "old_status": e.old_status or None,
        "new_status": e.new_status or None,
        "pid": e.pid or None,
    }


def _kind_style(kind: str) -> str:
    if kind in ("exited", "fatal", "suppressed"):
        return "red"
    if kind in ("restarted",):
        return "yellow"
    if kind in ("started",):
        return "green"
    return ""


def event_row(e: Any, *, wide: bool = False) -> list[Any]:
    from ..render import ago, iso

    row: list[Any] = [
        ago(e.timestamp),
        e.node_id or "-",
        e.agent_id or "-",
        (e.kind, _kind_style(e.kind)),
        e.message or "-",
        e.actor or "-",
    ]
    if wide:
        change = f"{e.old_status or '?'} -> {e.new_status}" if e.new_status else "-"
        row += [iso(e.timestamp) or "-", change, str(e.pid) if e.pid else "-"]
    return row


def events(
    ctx: typer.Context,
    node: Annotated[
        str | None,
        typer.Argument(
            metavar="[NODE]", help="Only this node's events.", autocompletion=complete_node
        ),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Argument(
            metavar="[AGENT]",
            help="Only this agent's events (after its NODE).",
            autocompletion=complete_agent,
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only events of the last DURATION (30s, 15m, 1h, 7d).", metavar="DURATION"
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(
            "--limit", help=f"At most N events, newest first (1..{MAX_LIMIT}).", metavar="N"
        ),
    ] = 50,
    kind: Annotated[
        list[str] | None,
        typer.Option(
            "--kind", "-k", metavar="KIND", help=f"Only this kind (repeatable): {', '.join(KINDS)}."
        ),
    ] = None,
    node_only: Annotated[
        bool, typer.Option("--node-only", help="Only node events (no agent named).")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Print new events as they happen, until Ctrl-C (one JSON object a line "
            "with -o json).",
        ),
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Recent events, newest first: fleet-wide, of NODE, or of AGENT on NODE.

    With -f, new events as the Manager records them instead, oldest first, until Ctrl-C.
    """
    from schema import admin_pb2

    if not 1 <= limit <= MAX_LIMIT:
        raise usage(f"--limit {limit}: give 1..{MAX_LIMIT}")
    kinds = [k.strip().lower() for item in kind or [] for k in item.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            raise usage(f"--kind {k!r}: use one of {', '.join(KINDS)}")
    if node_only and agent:
        raise usage("--node-only lists node events: name no AGENT")
    st = state(ctx)
    if follow:
        if since:
            raise usage("--since lists past events: -f follows new ones (run both)")
        _follow(st, node or "", agent or "", kinds, node_only=node_only, output=output)
        return
    since_ts = int(time.time()) - parse_since(since) if since else 0

    async def go() -> admin_pb2.ListEventsResponse:
        async with st.connect() as conn:
            return await conn.call(
                conn.admin().ListEvents(
                    admin_pb2.ListEventsRequest(
                        node_id=node or "",
                        agent_id=agent or "",
                        since=since_ts,
                        limit=limit,
                        kinds=kinds,
                        node_only=node_only,
                    ),
                    timeout=conn.timeout,
                )
            )

    found = list(run(go()).events)
    out = st.output()
    if output is Format.json:
        out.json([event_json(e) for e in found])
        return
    wide = output is Format.wide
    out.table(
        EVENT_WIDE_HEADERS if wide else EVENT_HEADERS,
        [event_row(e, wide=wide) for e in found],
    )


FOLLOW_WIDTHS = (8, 16, 16, 10)  # TIME, NODE, AGENT, KIND; then MESSAGE and ACTOR


def follow_line(e: Any, *, wide: bool = False) -> str:
    """One followed event as a plain line, in columns (``events -f``)."""
    clock = time.strftime("%H:%M:%S", time.localtime(e.timestamp))
    cells = [clock, e.node_id or "-", e.agent_id or "-", e.kind]
    text = "  ".join(c.ljust(w) for c, w in zip(cells, FOLLOW_WIDTHS, strict=True))
    text += f"  {e.message or '-'}"
    if e.actor:
        text += f"  (by {e.actor})"
    if wide:
        change = f"{e.old_status or '?'} -> {e.new_status}" if e.new_status else ""
        extra = [x for x in (change, f"pid {e.pid}" if e.pid else "", f"#{e.id}") if x]
        text += "  [" + ", ".join(extra) + "]"
    return text


def _follow(
    st: Any, node: str, agent: str, kinds: list[str], *, node_only: bool, output: Format
) -> None:
    """``events -f``: WatchEvents until Ctrl-C (exit 0); the Manager gone: exit 5."""
    import json
    import sys

    from schema import admin_pb2

    from ._watch import follow_events, until_interrupted

    request = admin_pb2.WatchEventsRequest(node_id=node, agent_id=agent, kinds=kinds)
    out = st.output()
    stream = out.stream

    def show(e: Any) -> None:
        if node_only and e.agent_id:
            return
        if output is Format.json:
            stream.write(json.dumps(event_json(e), ensure_ascii=False) + "\n")
        else:
            out.line(follow_line(e, wide=output is Format.wide), _kind_style(e.kind))
        stream.flush()

    def opened() -> None:
        if output is not Format.json:
            header = "  ".join(
                h.ljust(w) for h, w in zip(EVENT_HEADERS, FOLLOW_WIDTHS, strict=False)
            )
            out.line(f"{header}  MESSAGE", "bold")
            stream.flush()
        if st.stderr_is_terminal():
            sys.stderr.write("following events — Ctrl-C to stop\n")

    async def go() -> None:
        async with st.connect() as conn:
            await follow_events(conn, request, show, opened=opened)

    until_interrupted(lambda: run(go()))


def agent_show(
    ctx: typer.Context,
    first: NodeOrAgentArg,
    second: AgentArg = None,
    events: Annotated[
        int,
        typer.Option(help=f"How many recent events to show (1..{MAX_AGENT_EVENTS}).", metavar="N"),
    ] = 10,
    output: OutputOpt = Format.table,
) -> None:
    """One agent: status, pid, uptime, restarts, last exit and why, config, recent events."""
    from schema import admin_pb2

    from ..render import age, ago, iso, status_cell
    from ..views import agent_json

    if not 1 <= events <= MAX_AGENT_EVENTS:
        raise usage(f"--events {events}: give 1..{MAX_AGENT_EVENTS}")
    node, agent = split_node_agent(first, second)
    st = state(ctx)

    async def go() -> admin_pb2.GetAgentResponse:
        async with st.connect() as conn:
            return await conn.call(
                conn.admin().GetAgent(
                    admin_pb2.GetAgentRequest(node_id=node, agent_id=agent, events=events),
                    timeout=conn.timeout,
                ),
                agent_without_node="" if node else "as NODE AGENT",
            )

    resp = run(go())
    a = resp.agent
    out = st.output()
    if output is Format.json:
        out.json(
            {
                "agent": agent_json(a),
                "last_exit": resp.last_exit or None,
                "last_exit_at": iso(resp.last_exit_at),
                "events": [event_json(e) for e in resp.events],
            }
        )
        return
    running = a.status in ("RUNNING", "STARTING", "STOPPING")
    status_text = a.status + (f" ({a.status_reason})" if a.status_reason else "")
    if a.node_status in ("offline", "stopped"):
        status_text += f" — last reported, node {a.node_status}"
    last_exit = "-"
    if resp.last_exit:
        last_exit = f"{resp.last_exit} ({ago(resp.last_exit_at)})"
    out.fields(
        [
            ("Agent", a.id),
            ("Node", f"{a.node_id} ({a.node_status or '?'})"),
            ("Type", a.type or "-"),
            ("Status", (status_text, status_cell(a.status)[1])),
            ("PID", str(a.pid) if a.pid else "-"),
            ("Uptime", age(a.start_time) if running and a.start_time else "-"),
            ("Restarts", str(a.restart_count)),
            ("Last exit", last_exit),
            ("Version", a.version or "-"),
            ("Config hash", a.config_hash or "-"),
            ("Spec", f"{a.spec}@{a.spec_revision}" if a.spec else "- (daemon.toml)"),
            ("Heartbeat", ago(a.last_heartbeat) if a.last_heartbeat else "-"),
            ("Synced", ago(a.updated_at)),
        ]
    )
    out.line()
    if resp.events:
        out.table(
            ["TIME", "KIND", "MESSAGE", "ACTOR"],
            [[r[0], r[3], r[4], r[5]] for r in (event_row(e) for e in resp.events)],
            title=f"Recent events ({len(resp.events)})",
        )
    else:
        out.line("Events: none recorded")
