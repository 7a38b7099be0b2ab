"""``fleetctl agent logs [NODE] AGENT``: the last lines an agent wrote, without ssh.

The Daemon reads them from the agent's log files on its host (``GetAgentLog``); through
the Manager by default, straight from the Daemon with ``--daemon``. With ``-f`` the lines
keep coming as the agent writes them (``FollowAgentLog``) until Ctrl-C, which ends it
with exit 0.
"""

import contextlib
import enum
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import CliError, ExitCode, usage
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

if TYPE_CHECKING:
    from ..client import Connection

MAX_LINES = 5000  # common.validate.MAX_LOG_LINES (not imported: it would load grpclib)
DEFAULT_LINES = 100
FOLLOW_LINES = 10  # history before following, as tail -f


class Stream(enum.StrEnum):
    """``--stream`` values."""

    stderr = "stderr"
    stdout = "stdout"


def agent_logs(
    ctx: typer.Context,
    first: NodeOrAgentArg,
    second: AgentArg = None,
    lines: Annotated[
        int | None,
        typer.Option(
            "--lines",
            "-n",
            help=f"How many lines, newest last (1..{MAX_LINES}; default {DEFAULT_LINES}, "
            f"with -f {FOLLOW_LINES} and 0 for none).",
            metavar="N",
            show_default=False,
        ),
    ] = None,
    stream: Annotated[
        Stream, typer.Option(help="stderr or stdout.", case_sensitive=False)
    ] = Stream.stderr,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing lines as they are written, until Ctrl-C."
        ),
    ] = False,
    output: OutputOpt = Format.table,
    daemon: DaemonOpt = None,
) -> None:
    """The last lines AGENT wrote to stderr (or --stream stdout) on NODE; -f follows."""
    if follow:
        lines = FOLLOW_LINES if lines is None else lines
        if not 0 <= lines <= MAX_LINES:
            raise usage(f"-n {lines}: give 0..{MAX_LINES} lines with -f")
    else:
        lines = DEFAULT_LINES if lines is None else lines
        if not 1 <= lines <= MAX_LINES:
            raise usage(f"-n {lines}: give 1..{MAX_LINES} lines")
    node, agent = split_node_agent(first, second)
    st = state(ctx)
    if follow:
        printer = _Printer(agent, stream.value, json=output is Format.json, output=st.output())
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a follow ends
            run(_follow(st.connect(daemon, node=node), daemon, node, agent, stream, lines, printer))
        sys.stdout.flush()
        return

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


class _Printer:
    """Prints followed chunks: the lines on stdout (or one JSON object per chunk), and
    skips, rotations and the first line saying what is followed on stderr."""

    def __init__(self, agent: str, stream: str, *, json: bool, output: Any) -> None:
        self._agent = agent
        self._stream = stream
        self._json = json
        self._output = output
        self.started = False

    def __call__(self, node_id: str, chunk: Any) -> None:
        if not self.started:
            self.started = True
            where = f" on node {node_id}" if node_id else ""
            typer.echo(f"following {self._agent} {self._stream}{where} (Ctrl-C to stop)", err=True)
        if self._json:
            text = chunk.text
            self._output.json(
                {
                    "node_id": node_id or None,
                    "agent_id": chunk.agent_id or self._agent,
                    "stream": chunk.stream or self._stream,
                    "skipped": chunk.skipped,
                    "rotated": chunk.rotated,
                    "lines": text.removesuffix("\n").split("\n") if text else [],
                }
            )
            sys.stdout.flush()
            return
        if chunk.skipped:
            plural = "line" if chunk.skipped == 1 else "lines"
            typer.echo(f"({chunk.skipped} {plural} skipped: too slow)", err=True)
        if chunk.rotated:
            typer.echo("(log rotated)", err=True)
        if chunk.text:
            sys.stdout.write(chunk.text)
            sys.stdout.flush()


async def _follow(
    connection: "Connection",
    daemon: str | None,
    node: str,
    agent: str,
    stream: Stream,
    lines: int,
    show: _Printer,
) -> None:
    """Open FollowAgentLog (on the Manager, or the Daemon with ``--daemon``) and print
    what comes until the server ends it or Ctrl-C cancels this."""
    async with connection as conn:
        await conn.ready()
        if daemon:
            from schema import daemon_pb2

            request: Any = daemon_pb2.AgentLogRequest(
                agent_id=agent, stream=stream.value, lines=lines
            )
            peer = node or conn.peer_name() or ""
            await _stream(
                conn, conn.daemon().FollowAgentLog, request, lambda r: show(peer, r), show, ""
            )
            return
        from schema import admin_pb2

        request = admin_pb2.FollowAgentLogRequest(
            node_id=node, agent_id=agent, stream=stream.value, lines=lines
        )
        await _stream(
            conn,
            conn.admin().FollowAgentLog,
            request,
            lambda r: show(r.node_id or node, r.chunk),
            show,
            "" if node else "as NODE AGENT",
        )


async def _stream(
    conn: "Connection",
    method: Any,
    request: Any,
    each: Callable[[Any], None],
    show: _Printer,
    agent_without_node: str,
) -> None:
    """One server-streaming call: ``each`` reply until the stream ends; failures as one
    line (a server that goes away while following: exit 5)."""
    import asyncio

    from grpclib.const import Status
    from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

    try:
        async with method.open() as call:
            await call.send_message(request, end=True)
            while (reply := await call.recv_message()) is not None:
                each(reply)
            await call.recv_trailing_metadata()
    except (asyncio.CancelledError, BrokenPipeError):
        raise
    except Exception as exc:
        gone = isinstance(exc, StreamTerminatedError | ProtocolError | OSError) or (
            isinstance(exc, GRPCError) and exc.status is Status.CANCELLED
        )
        if show.started and gone:
            raise CliError(
                f"the {conn.router.current()} went away while following: "
                f"{exc or type(exc).__name__}",
                ExitCode.UNAVAILABLE,
            ) from exc
        err = await conn.explain(exc)
        if (
            agent_without_node
            and isinstance(exc, GRPCError)
            and exc.status is Status.FAILED_PRECONDITION
        ):
            err = CliError(f"{err.message} ({agent_without_node})", ExitCode.USAGE)
        raise err from exc
