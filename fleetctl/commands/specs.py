"""``fleetctl specs list|show|history|status|delete``: the central specs the Manager holds."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from ..errors import CliError, ExitCode, usage
from ._complete import complete_spec
from ._shared import Format, OutputOpt, run, state

app = typer.Typer(
    help="Central specs: list, show, history, per-node status, delete.", no_args_is_help=True
)

SpecArg = Annotated[
    str, typer.Argument(metavar="NAME", help="Spec name.", autocompletion=complete_spec)
]


def fetch_spec(ctx: typer.Context, name: str, *, history_limit: int = 1) -> Any:
    """``GetSpec`` of ``name`` (an unknown spec exits 3)."""
    from schema import admin_pb2

    st = state(ctx)

    async def go() -> Any:
        async with st.connect() as conn:
            return await conn.call(
                conn.admin().GetSpec(
                    admin_pb2.GetSpecRequest(name=name, history_limit=history_limit),
                    timeout=conn.timeout,
                )
            )

    return run(go())


@app.command("list")
def list_specs(
    ctx: typer.Context,
    deleted: Annotated[bool, typer.Option("--deleted", help="Include deleted specs.")] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Every spec: revision, target, agents, nodes converged of targeted, last change."""
    from schema import admin_pb2

    from ..spec_views import SPEC_HEADERS, SPEC_RIGHT, spec_json, spec_row

    st = state(ctx)

    async def go() -> Any:
        async with st.connect() as conn:
            return await conn.call(
                conn.admin().ListSpecs(
                    admin_pb2.ListSpecsRequest(include_deleted=deleted), timeout=conn.timeout
                )
            )

    specs = sorted(run(go()).specs, key=lambda s: s.name)
    out = st.output()
    if output is Format.json:
        out.json([spec_json(s) for s in specs])
        return
    out.table(SPEC_HEADERS, [spec_row(s) for s in specs], right=SPEC_RIGHT)


@app.command("show")
def show_spec(ctx: typer.Context, name: SpecArg, output: OutputOpt = Format.table) -> None:
    """One spec: its current document (target, agents), its rollout, every node's status."""
    from ..render import ago
    from ..spec_views import (
        NODE_STATUS_HEADERS,
        NODE_STATUS_RIGHT,
        agent_definition_row,
        document_of,
        node_status_json,
        node_status_row,
        revision_json,
        rollout_fields,
        rollout_json,
        spec_json,
        target_text,
    )

    reply = fetch_spec(ctx, name)
    out = state(ctx).output()
    s = reply.spec
    has_current = reply.HasField("current")
    has_rollout = reply.HasField("rollout")
    nodes = sorted(reply.nodes, key=lambda n: n.node_id)
    if output is Format.json:
        out.json(
            {
                "spec": spec_json(s),
                "current": revision_json(reply.current) if has_current else None,
                "rollout": rollout_json(reply.rollout) if has_rollout else None,
                "nodes": [node_status_json(n) for n in nodes],
            }
        )
        return
    document = document_of(reply.current) if has_current else None
    pairs: list[tuple[str, Any]] = [("Spec", s.name)]
    if s.deleted:
        pairs.append(("Status", ("deleted", "red")))
    if has_current:
        c = reply.current
        who = ", ".join(
            part
            for part in (
                c.kind,
                f"signed by {c.signed_by}" if c.signed_by else "",
                f"applied by {c.applied_by}" if c.applied_by else "",
                ago(c.created_at),
            )
            if part
        )
        pairs.append(("Revision", f"{c.revision} ({who})"))
    else:
        pairs.append(("Revision", "-"))
    pairs.append(("Next revision", str(s.next_revision)))
    pairs.append(("Target", target_text(s.target_labels, list(s.target_nodes))))
    pairs.append(("Nodes", f"{s.converged_count} of {s.node_count} converged"))
    out.fields(pairs)
    out.line()
    agents = (document or {}).get("agents") or []
    if agents:
        out.table(
            ["AGENT", "TYPE", "COMMAND", "USER"],
            [agent_definition_row(a) for a in agents],
            title=f"Agents ({len(agents)})",
        )
    else:
        out.line("Agents: none")
    out.line()
    if has_rollout:
        out.heading("Rollout")
        out.fields(rollout_fields(reply.rollout))
    else:
        out.line("Rollout: none")
    out.line()
    if nodes:
        out.table(
            NODE_STATUS_HEADERS,
            [node_status_row(n) for n in nodes],
            title=f"Nodes ({len(nodes)})",
            right=NODE_STATUS_RIGHT,
        )
    else:
        out.line("Nodes: none targeted")


@app.command("history")
def spec_history(
    ctx: typer.Context,
    name: SpecArg,
    limit: Annotated[
        int,
        typer.Option("--limit", "-n", help="How many revisions, newest first.", min=1, max=1000),
    ] = 20,
    output: OutputOpt = Format.table,
) -> None:
    """A spec's revisions, newest first: kind, who signed and applied, what changed."""
    from ..render import ago
    from ..spec_views import changes_text, document_changes, document_of, revision_json

    # One more than shown: the oldest shown revision is compared with it.
    reply = fetch_spec(ctx, name, history_limit=limit + 1)
    revisions = sorted(reply.history, key=lambda r: r.revision, reverse=True)
    rows: list[tuple[Any, dict[str, Any] | None]] = []
    for i, rev in enumerate(revisions[:limit]):
        older = revisions[i + 1] if i + 1 < len(revisions) else None
        if older is None and rev.revision > 1:
            changes = None  # its predecessor was not fetched (or is gone)
        else:
            changes = document_changes(
                document_of(rev), document_of(older) if older is not None else None
            )
        rows.append((rev, changes))
    out = state(ctx).output()
    if output is Format.json:
        out.json({"spec": name, "history": [revision_json(r, c) for r, c in rows]})
        return
    out.table(
        ["REV", "KIND", "SIGNED BY", "APPLIED BY", "WHEN", "CHANGES"],
        [
            [
                str(r.revision),
                (r.kind or "-", "yellow" if r.kind == "rollback" else ""),
                r.signed_by or "-",
                r.applied_by or "-",
                ago(r.created_at),
                changes_text(c),
            ]
            for r, c in rows
        ],
        right=("REV",),
    )


@app.command("status")
def spec_status(ctx: typer.Context, name: SpecArg, output: OutputOpt = Format.table) -> None:
    """Per node: the revision it should run, the one it runs, its state and why.

    Exits 0 whatever the nodes' states (a summary line counts them); see 'rollout status'.
    """
    from ..spec_views import (
        NODE_STATUS_HEADERS,
        NODE_STATUS_RIGHT,
        node_status_json,
        node_status_row,
    )

    reply = fetch_spec(ctx, name)
    nodes = sorted(reply.nodes, key=lambda n: n.node_id)
    converged = sum(n.state == "converged" for n in nodes)
    out = state(ctx).output()
    if output is Format.json:
        out.json(
            {
                "spec": reply.spec.name or name,
                "revision": reply.spec.revision or None,
                "converged": converged,
                "total": len(nodes),
                "nodes": [node_status_json(n) for n in nodes],
            }
        )
        return
    out.table(NODE_STATUS_HEADERS, [node_status_row(n) for n in nodes], right=NODE_STATUS_RIGHT)
    others: dict[str, int] = {}
    for n in nodes:
        if n.state != "converged":
            others[n.state or "unknown"] = others.get(n.state or "unknown", 0) + 1
    summary = (
        f"spec {name} revision {reply.spec.revision or '-'}: {converged} of {len(nodes)} "
        "node(s) converged"
    )
    if others:
        summary += "; " + ", ".join(f"{count} {st}" for st, count in sorted(others.items()))
    out.line(summary, "yellow" if others else "green")


@app.command("delete")
def delete_spec(
    ctx: typer.Context,
    name: SpecArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be removed; delete nothing.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask (required without a terminal).")
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Delete a spec: its agents are stopped and removed from every node it targeted."""
    from schema import admin_pb2

    from ..spec_views import counts_text, plan_counts, plan_json, print_plan, spec_json

    st = state(ctx)
    interactive = sys.stdin.isatty()
    if not dry_run and not yes and not interactive:
        raise usage(
            f"deleting spec {name} removes its agents from every node: confirm with --yes "
            "(no terminal to ask on)"
        )

    async def delete(dry: bool) -> Any:
        async with st.connect() as conn:
            return await conn.call(
                conn.admin().DeleteSpec(
                    admin_pb2.DeleteSpecRequest(name=name, dry_run=dry), timeout=conn.timeout
                ),
                what=f"delete {name}",
            )

    out = st.output()
    as_json = output is Format.json
    if not dry_run and not yes:
        # The preview goes with the question, on stderr: stdout keeps only the result.
        from ..render import Output

        plan = run(delete(True)).plan
        counts = plan_counts(plan)
        if counts["nodes"]:
            print_plan(Output(rich=st.stderr_is_terminal(), stream=sys.stderr), plan)
        # Asked and answered on stderr/stdin by hand: click's prompt writes to stdout.
        sys.stderr.write(
            f"Delete spec {name} and remove {counts['removed']} agent(s) from "
            f"{counts['nodes']} node(s)? [y/N] "
        )
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise CliError("not deleted", ExitCode.FAILED)
    resp = run(delete(dry_run))
    counts = plan_counts(resp.plan)
    if as_json:
        out.json({"spec": spec_json(resp.spec), "dry_run": dry_run, "plan": plan_json(resp.plan)})
        return
    if dry_run:
        out.line(f"deleting spec {name} would change:", "bold")
        print_plan(out, resp.plan)
        out.line(f"dry run: {counts_text(counts)}; nothing was deleted")
        return
    out.line(
        f"spec {name} deleted: {counts['removed']} agent(s) are being removed from "
        f"{counts['nodes']} node(s)"
    )
