"""``fleetctl agents list`` and ``fleetctl agent start|stop|restart``.

Fleet-wide operations (``--all``) live in :mod:`.fleetwide`; ``agent config`` in
:mod:`.agent_config`; ``agent logs`` in :mod:`.agent_logs`; ``agent show`` in
:mod:`.events`.
"""

from collections.abc import Callable
from typing import Annotated, Any

import typer

from ..errors import CliError, ExitCode, usage
from . import agent_config, agent_logs, events
from ._complete import complete_node
from ._shared import (
    PAST,
    AgentArg,
    DaemonOpt,
    Format,
    NodeOrAgentArg,
    OutputOpt,
    State,
    parse_labels,
    run,
    split_node_agent,
    state,
)

agents_app = typer.Typer(help="List agents fleet-wide or on one node.", no_args_is_help=True)
agent_app = typer.Typer(
    help="Operate one agent: start, stop, restart (one node or --all), show, config, logs.",
    no_args_is_help=True,
)
agent_app.add_typer(agent_config.app, name="config")

AGENT_STATES = ("RUNNING", "STARTING", "BACKOFF", "STOPPING", "STOPPED", "EXITED", "FATAL")


@agents_app.command("list")
def list_agents(
    ctx: typer.Context,
    node: Annotated[
        str | None,
        typer.Argument(
            metavar="[NODE]", help="Only this node's agents.", autocompletion=complete_node
        ),
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(help="Only agents in this status (RUNNING, STOPPED, BACKOFF, FATAL, ...)."),
    ] = None,
    live: Annotated[
        bool, typer.Option("--live", help="Ask the Daemons now instead of the Manager's view.")
    ] = False,
    output: OutputOpt = Format.table,
    daemon: DaemonOpt = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", "-w", help="Redraw the list whenever something changes, until Ctrl-C."
        ),
    ] = False,
) -> None:
    """Agents on every node (or NODE), from the Manager's synced view or --live."""
    from ..views import AGENT_HEADERS, AGENT_RIGHT, AGENT_WIDE_HEADERS, agent_json, agent_row

    st = state(ctx)
    wanted = (status or "").upper()
    if wanted and wanted not in AGENT_STATES:
        raise usage(f"--status {status!r}: use one of {', '.join(AGENT_STATES)}")

    async def go() -> tuple[list[Any], list[Any], str]:
        if daemon:
            from schema import daemon_pb2

            async with st.connect(daemon, node=node) as conn:
                dresp = await conn.call(
                    conn.daemon().ListAgents(daemon_pb2.ListAgentsRequest(), timeout=conn.timeout)
                )
                found = [a for a in dresp.agents if not wanted or a.status == wanted]
                return found, [], node or conn.peer_name() or ""
        from schema import admin_pb2

        async with st.connect() as conn:
            resp = await conn.call(
                conn.admin().ListAgents(
                    admin_pb2.ListAgentsRequest(node_id=node or "", status=wanted, live=live),
                    timeout=conn.timeout,
                )
            )
            return list(resp.agents), list(resp.errors), node or ""

    out = st.output()

    def show(found: tuple[list[Any], list[Any], str]) -> None:
        agents, _, node = found
        agents.sort(key=lambda a: (getattr(a, "node_id", "") or node or "", a.id))
        if output is Format.json:
            out.json([agent_json(a, node_id=node) for a in agents])
        else:
            wide = output is Format.wide
            out.table(
                AGENT_WIDE_HEADERS if wide else AGENT_HEADERS,
                [agent_row(a, node_id=node or "", wide=wide) for a in agents],
                right=AGENT_RIGHT,
            )

    if watch:
        if daemon:
            raise usage("--watch follows the Manager's events: it does not go with --daemon")
        from schema import admin_pb2

        from ._watch import run_watch

        async def fetch(conn: Any) -> tuple[list[Any], list[Any], str]:
            resp = await conn.call(
                conn.admin().ListAgents(
                    admin_pb2.ListAgentsRequest(node_id=node or "", status=wanted, live=live),
                    timeout=conn.timeout,
                )
            )
            return list(resp.agents), [], node or ""

        run_watch(
            st, request=admin_pb2.WatchEventsRequest(node_id=node or ""), fetch=fetch, show=show
        )
        return
    found = run(go())
    show(found)
    errors = found[1]
    if errors:
        for err in errors:
            typer.echo(f"fleetctl: {err.node_id}: {err.code}: {err.message}", err=True)
        raise typer.Exit(ExitCode.FAILED)


def _operation(op: str) -> Callable[..., None]:
    def command(
        ctx: typer.Context,
        first: NodeOrAgentArg,
        second: AgentArg = None,
        all_nodes: Annotated[
            bool, typer.Option("--all", help="Every node running AGENT (see --label).")
        ] = False,
        label: Annotated[
            list[str] | None,
            typer.Option(
                "--label", "-l", metavar="KEY=VALUE", help="With --all: only nodes with KEY=VALUE."
            ),
        ] = None,
        parallel: Annotated[
            int,
            typer.Option(
                help="With --all: nodes operated on at once.", min=1, max=256, metavar="N"
            ),
        ] = 10,
        output: OutputOpt = Format.table,
        daemon: DaemonOpt = None,
    ) -> None:
        st = state(ctx)
        if all_nodes:
            if second is not None:
                raise usage(f"--all takes only AGENT, not NODE AGENT: {first} {second}")
            if daemon:
                raise usage("--all goes through the Manager; it cannot be combined with --daemon")
            from .fleetwide import operate_everywhere

            operate_everywhere(
                st,
                op,
                first,
                labels=parse_labels(label),
                parallel=parallel,
                as_json=output is Format.json,
            )
            return
        if label:
            raise usage("--label selects nodes for --all; name the NODE instead")
        node, agent = split_node_agent(first, second)
        if daemon:
            from schema import daemon_pb2

            async def via_daemon() -> tuple[str, Any]:
                async with st.connect(daemon, node=node) as conn:
                    r = await conn.call(
                        conn.daemon().OperateAgent(
                            daemon_pb2.AgentOperationRequest(agent_id=agent, operation=op),
                            timeout=conn.timeout,
                        )
                    )
                    return node or conn.peer_name() or "", r

            node_id, resp = run(via_daemon())
        else:
            from schema import admin_pb2

            async def via_manager() -> tuple[str, Any]:
                async with st.connect() as conn:
                    r = await conn.call(
                        conn.admin().OperateAgent(
                            admin_pb2.OperateAgentRequest(
                                node_id=node, agent_id=agent, operation=op
                            ),
                            timeout=conn.timeout,
                        ),
                        agent_without_node="" if node else "as NODE AGENT",
                    )
                    return r.node_id or node, r

            node_id, resp = run(via_manager())
        report_operation(st, op, node_id, agent, resp, as_json=output is Format.json)

    command.__doc__ = (
        f"{op.capitalize()} AGENT on NODE and wait for the result (or on every node: --all)."
    )
    return command


def report_operation(
    st: State, op: str, node_id: str, agent: str, resp: Any, *, as_json: bool
) -> None:
    """Print one operation's outcome; exit 1 with the Daemon's error when it failed."""
    from ..render import status_cell
    from ..views import agent_json

    has_agent = resp.agent is not None and bool(resp.agent.id)
    out = st.output()
    where = f" on {node_id}" if node_id else ""
    if as_json:
        out.json(
            {
                "node_id": node_id or None,
                "agent_id": agent,
                "operation": op,
                "success": resp.success,
                "error": resp.error_message or None,
                "agent": agent_json(resp.agent, node_id=node_id) if has_agent else None,
            }
        )
    elif resp.success:
        state_text = ""
        if has_agent:
            a = resp.agent
            state_text = f": {a.status}" + (f", pid {a.pid}" if a.pid else "")
        text = f"{PAST[op]} {agent}{where}{state_text}"
        out.line(text, status_cell(resp.agent.status)[1] if has_agent else "")
    if not resp.success:
        now = ""
        if has_agent:
            reason = resp.agent.status_reason
            same = not reason or reason.startswith(resp.error_message or "\0")
            now = f" (now {resp.agent.status}" + (")" if same else f": {reason})")
        raise CliError(
            f"{op} {agent}{where} failed: {resp.error_message or 'no reason given'}{now}",
            ExitCode.FAILED,
        )


for _op in ("start", "stop", "restart"):
    agent_app.command(_op)(_operation(_op))
agent_app.command("logs")(agent_logs.agent_logs)
agent_app.command("show")(events.agent_show)
