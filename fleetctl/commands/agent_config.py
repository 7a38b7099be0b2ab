"""``fleetctl agent config get|push``: an agent's effective config, and updating it
through ``PushUpdate``."""

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import CliError, ExitCode, usage
from ._complete import complete_agent
from ._shared import (
    AgentArg,
    DaemonOpt,
    Format,
    NodeArg,
    NodeOrAgentArg,
    OutputOpt,
    run,
    split_node_agent,
    state,
)

if TYPE_CHECKING:
    from ..client import Connection

app = typer.Typer(help="An agent's config: get it, push a new one.", no_args_is_help=True)


@app.command("get")
def get_config(
    ctx: typer.Context,
    first: NodeOrAgentArg,
    second: AgentArg = None,
    output: OutputOpt = Format.table,
    daemon: DaemonOpt = None,
) -> None:
    """The config AGENT runs with (what the Daemon hands it), its hash and version."""
    node, agent = split_node_agent(first, second)
    st = state(ctx)

    async def go() -> tuple[str, Any]:
        if daemon:
            from schema import daemon_pb2

            async with st.connect(daemon, node=node) as conn:
                cfg = await conn.call(
                    conn.daemon().GetAgentConfig(
                        daemon_pb2.AgentConfigRequest(agent_id=agent), timeout=conn.timeout
                    )
                )
                return node or conn.peer_name() or "", cfg
        from schema import admin_pb2

        async with st.connect() as conn:
            resp = await conn.call(
                conn.admin().GetAgentConfig(
                    admin_pb2.GetAgentConfigRequest(node_id=node, agent_id=agent),
                    timeout=conn.timeout,
                ),
                agent_without_node="" if node else "as NODE AGENT",
            )
            return resp.node_id or node, resp.config

    node_id, cfg = run(go())
    try:
        config = json.loads(cfg.config_json) if cfg.config_json else {}
    except ValueError:
        config = cfg.config_json  # shown as received
    out = st.output()
    if output is Format.json:
        out.json(
            {
                "node_id": node_id or None,
                "agent_id": cfg.agent_id or agent,
                "version": cfg.version or None,
                "config_hash": cfg.config_hash or None,
                "config": config,
            }
        )
        return
    out.fields(
        [
            ("Node", node_id or "-"),
            ("Agent", cfg.agent_id or agent),
            ("Version", cfg.version or "-"),
            ("Config hash", cfg.config_hash or "-"),
        ]
    )
    out.line()
    out.line(json.dumps(config, indent=2, sort_keys=True))


def read_config_file(path: str) -> dict[str, Any]:
    """FILE as a config object: JSON (or TOML for ``*.toml``); ``-`` reads stdin."""
    if path == "-":
        text, name = sys.stdin.read(), "stdin"
    else:
        p = Path(path)
        try:
            text, name = p.read_text(), str(p)
        except OSError as exc:
            raise usage(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        if name.endswith(".toml"):
            import tomllib

            data: Any = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise usage(
            f"{name} is not valid {'TOML' if name.endswith('.toml') else 'JSON'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise usage(f"{name}: the config must be a JSON object, got {type(data).__name__}")
    return data


@app.command("push")
def push_config(
    ctx: typer.Context,
    node: NodeArg,
    agent: Annotated[str, typer.Argument(metavar="AGENT", autocompletion=complete_agent)],
    file: Annotated[
        str, typer.Argument(metavar="FILE", help="JSON object (or .toml); - for stdin.")
    ],
    version: Annotated[
        str | None, typer.Option(help="Version label to record with the config.")
    ] = None,
    restart: Annotated[
        bool,
        typer.Option("--restart", help="Restart the agent with it (rolled back if that fails)."),
    ] = False,
    output: OutputOpt = Format.table,
    daemon: DaemonOpt = None,
) -> None:
    """Push FILE as AGENT's config on NODE; prints the new hash and APPLIED / FAILED."""
    if version is not None and not version.strip():
        raise usage("--version '': give a label, e.g. --version v2 (an empty one is not sent)")
    config_json = json.dumps(read_config_file(file), sort_keys=True, separators=(",", ":"))
    st = state(ctx)

    async def go() -> tuple[str, Any, str | None]:
        if daemon:
            from schema import daemon_pb2

            async with st.connect(daemon, node=node) as conn:
                res = await conn.call(
                    conn.daemon().PushUpdate(
                        daemon_pb2.UpdateRequest(
                            agent_id=agent,
                            config_json=config_json,
                            version=version or "",
                            restart=restart,
                        ),
                        timeout=conn.timeout,
                    )
                )
                label = await label_after(
                    conn,
                    res,
                    lambda: conn.daemon().GetAgentConfig(
                        daemon_pb2.AgentConfigRequest(agent_id=agent), timeout=conn.timeout
                    ),
                )
                return node, res, label
        from schema import admin_pb2

        async with st.connect() as conn:
            resp = await conn.call(
                conn.admin().PushUpdate(
                    admin_pb2.PushUpdateRequest(
                        node_id=node,
                        agent_id=agent,
                        config_json=config_json,
                        version=version or "",
                        restart=restart,
                    ),
                    timeout=conn.timeout,
                )
            )
            label = await label_after(
                conn,
                resp.result,
                lambda: conn.admin().GetAgentConfig(
                    admin_pb2.GetAgentConfigRequest(node_id=node, agent_id=agent),
                    timeout=conn.timeout,
                ),
            )
            return resp.node_id or node, resp.result, label

    async def label_after(
        conn: "Connection", res: Any, ask: Callable[[], Awaitable[Any]]
    ) -> str | None:
        """The version label in effect after the push ("" none, None unknown).

        The Daemon keeps the label it had when an update brings none (an empty
        ``version`` means "keep" on the wire), so without --version the label shown
        can be an older config's: ask which it is, to say so.
        """
        if version and res.success:
            return version
        try:
            reply = await conn.call(ask())
        except CliError:
            return None
        cfg = getattr(reply, "config", reply)  # the Manager wraps the Daemon's reply
        return str(cfg.version)

    node_id, res, label = run(go())
    status = res.status or ("APPLIED" if res.success else "FAILED")
    out = st.output()
    if output is Format.json:
        out.json(
            {
                "node_id": node_id,
                "agent_id": res.agent_id or agent,
                "status": status,
                "success": res.success,
                "config_hash": res.config_hash or None,
                "version": label or None,
                "restart": restart,
                "error": res.error_message or None,
            }
        )
    else:
        restarted = " (restarted)" if restart and res.success else ""
        labelled = ""
        if label and version and res.success:
            labelled = f", version {label}"
        elif label:
            labelled = f", version {label} (kept: this push set none; label it with --version)"
        out.line(
            f"{status}: {agent} on {node_id}{restarted}, config hash {res.config_hash or '-'}"
            f"{labelled}",
            "green" if res.success else "bold red",
        )
    if not res.success:
        raise CliError(
            f"config push to {agent} on {node_id} FAILED: {res.error_message or 'no reason given'}",
            ExitCode.FAILED,
        )
