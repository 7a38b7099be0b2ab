"""``fleetctl daemon reload NODE`` (through the Manager) or ``--daemon HOST:PORT`` (direct):
a Daemon re-reads its daemon.toml and applies the difference, as SIGHUP does."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..errors import CliError, ExitCode, usage
from ._complete import complete_node
from ._shared import DaemonOpt, Format, OutputOpt, run, state

app = typer.Typer(help="Daemons: reload their config file.", no_args_is_help=True)


@app.command("reload")
def reload_daemon(
    ctx: typer.Context,
    node: Annotated[
        str | None,
        typer.Argument(
            metavar="[NODE]",
            help="The node whose Daemon reloads (optional with --daemon).",
            autocompletion=complete_node,
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; change nothing.")
    ] = False,
    output: OutputOpt = Format.table,
    daemon: DaemonOpt = None,
) -> None:
    """Make NODE's Daemon re-read its daemon.toml: added agents start, removed ones stop,
    changed ones restart, the others keep their processes. A file that does not parse or
    validate changes nothing (exit 1 with the Daemon's reason)."""
    if not node and not daemon:
        raise usage("give the NODE to reload, or --daemon HOST:PORT")
    st = state(ctx)

    async def go() -> tuple[str, Any]:
        if daemon:
            from schema import daemon_pb2

            async with st.connect(daemon, node=node) as conn:
                res = await conn.call(
                    conn.daemon().ReloadConfig(
                        daemon_pb2.ReloadConfigRequest(dry_run=dry_run), timeout=conn.timeout
                    ),
                    what="reload",
                )
                return node or conn.peer_name() or "", res
        from schema import admin_pb2

        assert node
        async with st.connect() as conn:
            resp = await conn.call(
                conn.admin().ReloadDaemon(
                    admin_pb2.ReloadDaemonRequest(node_id=node, dry_run=dry_run),
                    timeout=conn.timeout,
                ),
                what=f"reload {node}",
            )
            return resp.node_id or node, resp.result

    node_id, res = run(go())
    report_reload(ctx, node_id, res, dry_run=dry_run, as_json=output is Format.json)


def report_reload(
    ctx: typer.Context, node_id: str, res: Any, *, dry_run: bool, as_json: bool
) -> None:
    """Print a reload's changes; exit 1 when the Daemon refused it or an agent failed."""
    from ..spec_views import print_changes, reload_json

    out = state(ctx).output()
    where = node_id or "the daemon"
    if as_json:
        out.json(reload_json(node_id, dry_run, res))
    if not res.success:
        raise CliError(
            f"reload of {where} refused: {res.error_message or 'no reason given'} "
            "(nothing was changed)",
            ExitCode.FAILED,
        )
    counts = {"added": 0, "changed": 0, "removed": 0}
    for c in res.changes:
        if c.action in counts:
            counts[c.action] += 1
    failed = [c for c in res.changes if c.error]
    if not as_json:
        summary = ", ".join(f"{n} {action}" for action, n in counts.items())
        summary += f", {len(res.unchanged)} unchanged"
        source = f" from {res.config_file}" if res.config_file else ""
        verb = "would reload" if dry_run else "reloaded"
        out.line(f"{verb} {where}{source}: {summary}", "bold red" if failed else "")
        print_changes(out, res.changes)
        if res.unchanged:
            out.line(f"  = {', '.join(sorted(res.unchanged))}", "dim")
        if dry_run:
            out.line("dry run: nothing was changed")
    if failed:
        raise CliError(
            f"reload of {where} applied, but {len(failed)} agent(s) failed: "
            + "; ".join(f"{c.agent_id}: {c.error}" for c in failed),
            ExitCode.FAILED,
        )
