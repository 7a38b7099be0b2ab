"""``fleetctl agent start|stop|restart AGENT --all``: one agent on every matching node.

Nodes come from ``ListNodes`` (with the ``--label`` filter), narrowed to those the
Manager's synced view says run AGENT; then one ``OperateAgent`` per node through the
Manager, at most ``--parallel`` at once, with a progress bar on a terminal and a summary
table at the end.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ..errors import CliError, ExitCode
from ._shared import PAST, State, run


@dataclass
class Result:
    node_id: str
    success: bool
    error: str | None
    agent: Any | None


def operate_everywhere(
    st: State, op: str, agent: str, *, labels: dict[str, str], parallel: int, as_json: bool
) -> None:
    """Run ``op`` on ``agent`` on every matching node; exit 1 naming the nodes that failed."""
    results, skipped = run(_operate_all(st, op, agent, labels, parallel))
    _report(st, op, agent, labels, results, skipped, as_json=as_json)
    failed = [r.node_id for r in results if not r.success]
    if failed:
        raise CliError(
            f"{op} {agent} failed on {len(failed)} of {len(results)} node(s): {', '.join(failed)}",
            ExitCode.FAILED,
        )


async def _operate_all(
    st: State, op: str, agent: str, labels: dict[str, str], parallel: int
) -> tuple[list[Result], list[str]]:
    from schema import admin_pb2

    async with st.connect() as conn:
        stub = conn.admin()
        nodes = (
            await conn.call(
                stub.ListNodes(admin_pb2.ListNodesRequest(labels=labels), timeout=conn.timeout)
            )
        ).nodes
        listed = await conn.call(
            stub.ListAgents(admin_pb2.ListAgentsRequest(), timeout=conn.timeout)
        )
        having = {a.node_id for a in listed.agents if a.id == agent}
        targets = sorted(n.node_id for n in nodes if n.node_id in having)
        skipped = sorted(n.node_id for n in nodes if n.node_id not in having)
        if not targets:
            selector = " with " + ",".join(f"{k}={v}" for k, v in labels.items()) if labels else ""
            raise CliError(
                f"agent {agent} is not on any node{selector} "
                f"({len(nodes)} node(s) matched; see 'fleetctl agents list')",
                ExitCode.NOT_FOUND,
            )

        sem = asyncio.Semaphore(parallel)
        progress = _Progress(st, f"{op} {agent}", len(targets))

        async def one(node_id: str) -> Result:
            async with sem:
                try:
                    resp = await stub.OperateAgent(
                        admin_pb2.OperateAgentRequest(
                            node_id=node_id, agent_id=agent, operation=op
                        ),
                        timeout=conn.timeout,
                    )
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    err = await conn.explain(exc)
                    result = Result(node_id, False, err.message, None)
                else:
                    has = resp.agent is not None and bool(resp.agent.id)
                    result = Result(
                        node_id,
                        resp.success,
                        None if resp.success else (resp.error_message or "failed"),
                        resp.agent if has else None,
                    )
                progress.advance(result)
                return result

        with progress:
            results = await asyncio.gather(*(one(n) for n in targets))
    return list(results), skipped


class _Progress:
    """A Rich progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, st: State, description: str, total: int) -> None:
        self._bar: Any = None
        self._task: Any = None
        if st.stderr_is_terminal():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[failed]} failed"),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task(description, total=total, failed=0)
        self._failed = 0

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, result: Result) -> None:
        self._failed += not result.success
        if self._bar is not None:
            self._bar.update(self._task, advance=1, failed=self._failed)


def _report(
    st: State,
    op: str,
    agent: str,
    labels: dict[str, str],
    results: list[Result],
    skipped: list[str],
    *,
    as_json: bool,
) -> None:
    from ..views import agent_json

    out = st.output()
    ok = sum(r.success for r in results)
    failed = len(results) - ok
    if as_json:
        out.json(
            {
                "operation": op,
                "agent_id": agent,
                "labels": labels,
                "succeeded": ok,
                "failed": failed,
                "skipped": skipped,
                "results": [
                    {
                        "node_id": r.node_id,
                        "success": r.success,
                        "error": r.error,
                        "agent": agent_json(r.agent, node_id=r.node_id) if r.agent else None,
                    }
                    for r in results
                ],
            }
        )
        return
    rows = []
    for r in results:
        a = r.agent
        rows.append(
            [
                r.node_id,
                ("ok", "green") if r.success else ("failed", "bold red"),
                a.status if a else "-",
                str(a.pid) if a and a.pid else "-",
                r.error or "",
            ]
        )
    out.table(["NODE", "RESULT", "STATUS", "PID", "ERROR"], rows, right=("PID",))
    summary = f"{PAST[op]} {agent} on {ok} of {len(results)} node(s)"
    if failed:
        summary += f"; {failed} failed"
    if skipped:
        summary += f"; {len(skipped)} matching node(s) do not run it"
    out.line(summary, "bold red" if failed else "green")
