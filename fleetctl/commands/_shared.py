"""What every command needs: the invocation state, output choice, parsing helpers.

Nothing here imports gRPC or Rich; :meth:`State.connect` imports the client lazily.
"""

import enum
import sys
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from common.durations import parse_duration

from ..errors import CliError, ExitCode, usage
from ..render import Output, use_rich
from ..settings import DEFAULT_DAEMON_PORT, Settings, parse_address, resolve
from ._complete import complete_agent, complete_node, complete_node_or_agent

if TYPE_CHECKING:
    from ..client import Connection

T = TypeVar("T")


# Past tense of the agent operations, for messages.
PAST = {"start": "started", "stop": "stopped", "restart": "restarted"}


class Format(enum.StrEnum):
    """``-o`` values."""

    table = "table"
    wide = "wide"
    json = "json"


OutputOpt = Annotated[
    Format,
    typer.Option("-o", "--output", help="table, wide or json.", case_sensitive=False),
]
DaemonOpt = Annotated[
    str | None,
    typer.Option(
        "--daemon",
        metavar="HOST:PORT",
        help="Talk straight to this Daemon (admin certificate) instead of the Manager.",
        show_default=False,
    ),
]


@dataclass
class State:
    """One invocation's global options; settings are resolved on first use."""

    flags: Mapping[str, str | bool | None]
    config_flag: str | None
    debug: bool
    environ: Mapping[str, str]
    _settings: Settings | None = field(default=None, repr=False)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = resolve(
                self.flags,
                environ=self.environ,
                home=Path.home(),
                config_flag=self.config_flag,
            )
        return self._settings

    def output(self) -> Output:
        return Output(rich=use_rich(sys.stdout, self.environ))

    def stderr_is_terminal(self) -> bool:
        return use_rich(sys.stderr, self.environ)

    def connect(self, daemon: str | None = None, *, node: str | None = None) -> "Connection":
        """A connection to the Manager, or to ``daemon`` (expected to be node ``node``)."""
        from ..client import Connection, Target

        if daemon:
            address = parse_address(daemon, default_port=DEFAULT_DAEMON_PORT, what="--daemon")
            return Connection(self.settings, Target("daemon", address, node or None))
        return Connection(self.settings, Target("manager", self.settings.manager))


NodeArg = Annotated[
    str, typer.Argument(metavar="NODE", help="Node id.", autocompletion=complete_node)
]


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine to completion and return its result."""
    import asyncio

    # The result is handed out through a list, not as the main task's result: when
    # asyncio.run (3.11) restores the SIGINT handler it formats the repr of its handler,
    # which holds the main task, whose repr holds repr(result) in full. For a 10,000-node
    # reply that text rendering alone took 80 ms of every `nodes list`.
    box: list[T] = []

    async def main() -> None:
        box.append(await coro)

    asyncio.run(main())
    return box[0]


def parse_since(text: str) -> int:
    """``--since`` in whole seconds (at least 1); exit 2 on a bad duration."""
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise CliError(f"--since: {exc}", ExitCode.USAGE) from None
    if seconds < 1:
        raise usage(f"--since: {text!r} is shorter than one second")
    return int(seconds)


def parse_labels(pairs: list[str] | None) -> dict[str, str]:
    """``--label k=v`` (repeatable; also ``k=v,k2=v2``) as a dict; exit 2 when malformed."""
    labels: dict[str, str] = {}
    for item in pairs or []:
        for pair in item.split(","):
            key, sep, value = pair.partition("=")
            if not sep or not key.strip():
                raise usage(f"--label {pair!r}: expected KEY=VALUE")
            labels[key.strip()] = value.strip()
    return labels


def split_node_agent(first: str, second: str | None) -> tuple[str, str]:
    """``[NODE] AGENT`` positional arguments as (node or "", agent)."""
    return ("", first) if second is None else (first, second)


# ``[NODE] AGENT``: two positional arguments, the first optional in meaning.
NodeOrAgentArg = Annotated[
    str,
    typer.Argument(
        metavar="NODE|AGENT",
        help="NODE AGENT, or AGENT alone when its id is unique in the fleet.",
        show_default=False,
        autocompletion=complete_node_or_agent,
    ),
]
AgentArg = Annotated[
    str | None,
    typer.Argument(
        metavar="AGENT",
        help="The agent id, after its NODE.",
        show_default=False,
        autocompletion=complete_agent,
    ),
]
