"""The ``fleetctl`` Typer application: global options, command groups, error edge.

:class:`FleetGroup` is the root command. It lets the global connection options appear
anywhere on the command line (``fleetctl nodes list --manager h:50051``), and it is the one
place that turns errors into one line on stderr and an exit code (see ``errors.ExitCode``).
Only light modules are imported here: gRPC, the schema (protobuf) and Rich load inside
the commands that need them; betterproto never does.
"""

import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ._click import click_exceptions
from .commands import (
    agents,
    apply,
    certs,
    config,
    daemon,
    events,
    metrics,
    nodes,
    rollout,
    specs,
    tokens,
)
from .commands._shared import Format, OutputOpt, State
from .errors import CliError, ExitCode

# Options of the root command that may be written after the subcommand too.
_GLOBAL_VALUE_OPTIONS = ("--manager", "--ca", "--cert", "--key", "--config", "--timeout")
_GLOBAL_FLAG_OPTIONS = ("--debug", "--insecure")


def hoist_global_options(args: Sequence[str]) -> list[str]:
    """Move global options (and their values) in front of the subcommand."""
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg in _GLOBAL_FLAG_OPTIONS or (
            "=" in arg and arg.split("=", 1)[0] in _GLOBAL_VALUE_OPTIONS
        ):
            hoisted.append(arg)
        elif arg in _GLOBAL_VALUE_OPTIONS and i + 1 < len(args):
            hoisted.extend(args[i : i + 2])
            i += 1
        else:
            rest.append(arg)
        i += 1
    return hoisted + rest


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"fleetctl: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def usage_message(exc: Any) -> str:
    """Click's message for a usage error, said the way fleetctl says things.

    A missing argument names every argument still missing and the command's shape
    (instead of only the first one); a rejected choice (``-o yaml``) loses the
    "Value error, " that Typer's pydantic coercion puts in front of it.
    """
    param = getattr(exc, "param", None)
    ctx = exc.ctx
    if isinstance(exc, click_exceptions.MissingParameter) and ctx and param is not None:
        arguments = [p for p in ctx.command.params if p.param_type_name == "argument"]
        if param in arguments:
            later = arguments[arguments.index(param) + 1 :]
            missing = [param, *(p for p in later if p.required)]
            # "NODE|AGENT" missing: what is missing is at least the AGENT.
            names = [_name(p).rpartition("|")[2] for p in missing]
            listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
            return f"missing {listed}: {ctx.command_path} {' '.join(_shapes(arguments))} [OPTIONS]"
        if param.param_type_name == "option" and param.opts:
            return f"missing option {param.opts[0]} {_name(param)}".rstrip()
    if isinstance(exc, click_exceptions.BadParameter):
        error = _value_error(exc.__cause__)
        if error is not None:
            exc.message = str(error)
    return str(exc.format_message())


def _shapes(arguments: Sequence[Any]) -> list[str]:
    """Argument names for a usage line: ``NODE|AGENT`` followed by an optional
    ``AGENT`` (the ``[NODE] AGENT`` commands) is written ``[NODE] AGENT``."""
    out: list[str] = []
    paired = False
    for arg, nxt in zip(arguments, [*arguments[1:], None], strict=True):
        if paired:
            paired = False
            continue
        name = _name(arg)
        first, bar, rest = name.partition("|")
        paired = bool(bar) and nxt is not None and not nxt.required and _name(nxt) == rest
        if paired:
            out.append(f"[{first}] {rest}")
        else:
            out.append(name if arg.required else f"[{name}]")
    return out


def _name(arg: Any) -> str:
    return str(arg.metavar or arg.name or "").upper().strip("[]")


def _value_error(cause: BaseException | None) -> ValueError | None:
    """The ValueError inside a pydantic ValidationError (how Typer validates choices)."""
    errors = getattr(cause, "errors", None)
    if not callable(errors):
        return None
    try:
        first = errors()[0]
    except (IndexError, TypeError):
        return None
    error = first.get("ctx", {}).get("error") if isinstance(first, dict) else None
    return error if isinstance(error, ValueError) else None


COMPLETION_SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")
_COMPLETION_HELP = {
    "install_completion": "Install completion for [SHELL] (bash, zsh, fish, pwsh; "
    "default: the current shell).",
    "show_completion": "Print the completion script for [SHELL] (bash, zsh, fish, pwsh; "
    "default: the current shell).",
}


def completion_script(argv: Sequence[str]) -> None:
    """``--show-completion SHELL`` / ``--install-completion SHELL`` for the named shell.

    Typer's options take no value (they detect the shell this runs in), so a shell
    named after them was ignored: ``--show-completion zsh`` printed bash from bash.
    Without a shell name, Typer's own options run as before.
    """
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag not in ("--show-completion", "--install-completion"):
            continue
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else ""
            if not value or value.startswith("-"):
                return  # no shell named: Typer's option detects it
        if value not in COMPLETION_SHELLS:
            raise CliError(
                f"{flag} {value}: not a shell fleetctl completes: use "
                f"{', '.join(COMPLETION_SHELLS[:-1])} or {COMPLETION_SHELLS[-1]}",
                ExitCode.USAGE,
            )
        from typer import completion

        complete_var = "_FLEETCTL_COMPLETE"
        if flag == "--show-completion":
            script = completion.get_completion_script(
                prog_name="fleetctl", complete_var=complete_var, shell=value
            )
            sys.stdout.write(script + "\n")
        else:
            _, path = completion.install(
                shell=value, prog_name="fleetctl", complete_var=complete_var
            )
            sys.stdout.write(
                f"{value} completion installed in {path}\n"
                "Completion will take effect once you restart the terminal\n"
            )
        sys.stdout.flush()
        sys.exit(ExitCode.OK)


class FleetGroup(TyperGroup):
    """Root command: global options anywhere, and errors as one line plus an exit code."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)
        for param in params:
            # Typer's help says "for the current shell"; a shell may be named (main()).
            if param.name in _COMPLETION_HELP:
                param.help = _COMPLETION_HELP[param.name]
        return params

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        cut = argv.index("--") if "--" in argv else len(argv)
        debug = "--debug" in argv[:cut] or bool(os.environ.get("FLEET_DEBUG"))
        try:
            completion_script(argv[:cut])
            rv = super().main(
                argv,
                prog_name=prog_name or "fleetctl",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
        except CliError as exc:
            if debug:
                import traceback

                traceback.print_exc()
            _fail(exc.message, int(exc.code))
        except click_exceptions.NoArgsIsHelpError as exc:
            # Only command groups (`fleetctl agent`): commands say what is missing.
            exc.show()
            sys.exit(ExitCode.USAGE)
        except click_exceptions.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "fleetctl"
            _fail(f"{usage_message(exc)} (see '{where} --help')", ExitCode.USAGE)
        except click_exceptions.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except typer.Abort:
            _fail("aborted", ExitCode.FAILED)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:
            # stdout closed early (| head): not an error worth a line.
            sys.stderr.close()
            sys.exit(ExitCode.FAILED)
        except Exception as exc:
            if debug:
                raise
            _fail(
                f"internal error: {type(exc).__name__}: {exc} (run again with --debug for "
                "the traceback, and report it)",
                ExitCode.FAILED,
            )
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=FleetGroup,
    name="fleetctl",
    help="Operate a Fleet: nodes, agents, metrics, configuration, central specs, join tokens "
    "and certificates, through the Manager (or one Daemon with --daemon).",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    manager: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT[,HOST:PORT...]",
            help="Manager's gRPC address, or several to fail over between "
            "[env FLEET_MANAGER; default 127.0.0.1:50051].",
            show_default=False,
        ),
    ] = None,
    ca: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="CA certificate [env FLEET_CA].", show_default=False),
    ] = None,
    cert: Annotated[
        str | None,
        typer.Option(
            metavar="FILE", help="Admin certificate [env FLEET_CERT].", show_default=False
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="Admin key [env FLEET_KEY].", show_default=False),
    ] = None,
    config_file: Annotated[
        str | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="Config file [env FLEET_CONFIG; default ~/.config/fleet/fleetctl.toml].",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="Deadline per call, e.g. 10s [env FLEET_TIMEOUT; default 30s].",
            show_default=False,
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Plaintext gRPC (only against an --insecure manager/daemon)."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and gRPC debug logs on errors.")
    ] = False,
) -> None:
    """Global options may be given before or after the command."""
    if debug:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = State(
        flags={
            "manager": manager,
            "ca": ca,
            "cert": cert,
            "key": key,
            "timeout": timeout,
            "insecure": insecure,
        },
        config_flag=config_file,
        debug=debug,
        environ=dict(os.environ),
    )


app.add_typer(nodes.app, name="nodes")
app.add_typer(agents.agents_app, name="agents")
app.add_typer(agents.agent_app, name="agent")
app.command("metrics")(metrics.agent_metrics)
app.command("events")(events.events)
app.add_typer(config.app, name="config")
app.command("apply")(apply.apply_cmd)
app.command("diff")(apply.diff_cmd)
app.add_typer(specs.app, name="specs")
app.add_typer(rollout.app, name="rollout")
app.add_typer(daemon.app, name="daemon")
app.add_typer(tokens.app, name="tokens")
app.add_typer(certs.app, name="certs")


@app.command("version")
def version(output: OutputOpt = Format.table) -> None:
    """Print fleetctl's version."""
    import platform

    from . import __version__

    if output is Format.json:
        import json

        print(json.dumps({"fleetctl": __version__, "python": platform.python_version()}))
    else:
        print(f"fleetctl {__version__} (python {platform.python_version()})")
