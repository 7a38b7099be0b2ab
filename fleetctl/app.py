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
from .commands import agents, apply, config, daemon, metrics, nodes, rollout, specs
from .commands._shared import State
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


class FleetGroup(TyperGroup):
    """Root command: global options anywhere, and errors as one line plus an exit code."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))

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
            exc.show()
            sys.exit(ExitCode.USAGE)
        except click_exceptions.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "fleetctl"
            _fail(f"{exc.format_message()} (see '{where} --help')", ExitCode.USAGE)
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
    help="Operate a Fleet: nodes, agents, metrics, configuration and central specs, through "
    "the Manager (or one Daemon with --daemon).",
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
            metavar="HOST:PORT",
            help="Manager's gRPC address [env FLEET_MANAGER; default 127.0.0.1:50051].",
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
app.command("metrics", no_args_is_help=True)(metrics.agent_metrics)
app.add_typer(config.app, name="config")
app.command("apply", no_args_is_help=True)(apply.apply_cmd)
app.command("diff", no_args_is_help=True)(apply.diff_cmd)
app.add_typer(specs.app, name="specs")
app.add_typer(rollout.app, name="rollout")
app.add_typer(daemon.app, name="daemon")


@app.command("version")
def version(
    output: Annotated[
        str, typer.Option("-o", "--output", help="table or json.", metavar="FORMAT")
    ] = "table",
) -> None:
    """Print fleetctl's version."""
    import platform

    from . import __version__

    if output == "json":
        import json

        print(json.dumps({"fleetctl": __version__, "python": platform.python_version()}))
    else:
        print(f"fleetctl {__version__} (python {platform.python_version()})")
