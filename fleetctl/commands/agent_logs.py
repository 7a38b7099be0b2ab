"""``fleetctl agent logs [NODE] AGENT``: the last lines an agent wrote, without ssh.

The Daemon reads them from the agent's log files on its host (``GetAgentLog``); through
the Manager by default, straight from the Daemon with ``--daemon``.
"""

import enum
import sys
from typing import Annotated, Any

import typer

from ..errors import usage
from ..render import human_size
from ._shared import (
    AgentArg,
    DaemonOpt,
    Format,
    NodeOrAgentArg,
    OutputOpt,
    run,
    split_node_agent,
    state,
)

MAX_LINES = 5000  # common.validate.MAX_LOG_LINES (not imported: it would load grpclib)


class Stream(enum.StrEnum):
    """``--stream`` values."""

    stderr = "stderr"
    stdout = "stdout"


def agent_logs(
    ctx: typer.Context,
    first: NodeOrAgentArg,
    second: AgentArg = None,
    lines: Annotated[
        int,
        typer.Option(
            "--lines", "-n", help=f"How many lines, newest last (1..{MAX_LINES}).", metavar="N"
        ),
    ] = 100,
    stream: Annotated[
        Stream, typer.Option(help="stderr or stdout.", case_sensitive=False)
    ] = Stream.stderr,
    output: OutputOpt = Format.table,
    daemon: DaemonOpt = None,
) -> None:
    """The last lines AGENT wrote to stderr (or --stream stdout) on NODE."""
    if not 1 <= lines <= MAX_LINES:
        raise usage(f"-n {lines}: give 1..{MAX_LINES} lines")
    node, agent = split_node_agent(first, second)
    st = state(ctx)

    async def go() -> tuple[str, Any]:
        if daemon:
            from schema import daemon_pb2

            async with st.connect(daemon, node=node) as conn:
                log = await conn.call(
                    conn.daemon().GetAgentLog(
                        daemon_pb2.AgentLogRequest(
                            agent_id=agent, stream=stream.value, lines=lines
                        ),
                        timeout=conn.timeout,
                    )
                )
                return node or conn.peer_name() or "", log
        from schema import admin_pb2

        async with st.connect() as conn:
            resp = await conn.call(
                conn.admin().GetAgentLog(
                    admin_pb2.GetAgentLogRequest(
                        node_id=node, agent_id=agent, stream=stream.value, lines=lines
                    ),
                    timeout=conn.timeout,
                ),
                agent_without_node="" if node else "as NODE AGENT",
            )
            return resp.node_id or node, resp.log

    node_id, log = run(go())
    # Split on "\n" only, as the Daemon counted: an agent's \r stays inside its line.
    text_lines = log.text.removesuffix("\n").split("\n") if log.text else []
    if output is Format.json:
        st.output().json(
            {
                "node_id": node_id or None,
                "agent_id": log.agent_id or agent,
                "stream": log.stream or stream.value,
                "path": log.path or None,
                "size_bytes": log.size_bytes,
                "truncated": log.truncated,
                "lines": text_lines,
            }
        )
        return
    where = f" on node {node_id}" if node_id else ""
    file = f"{log.path}, {human_size(log.size_bytes)}"
    if not text_lines:
        header = f"no {log.stream} output from {agent}{where} ({file})"
    else:
        count = len(text_lines)
        which = f"last {count}" if log.truncated else f"all {count}"
        plural = "line" if count == 1 else "lines"
        header = f"{which} {plural} of {agent} {log.stream}{where} ({file})"
    typer.echo(header, err=True)
    sys.stdout.write(log.text)
    sys.stdout.flush()
