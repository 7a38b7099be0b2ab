"""``fleetctl rollout status|pause|resume|undo SPEC``: a spec's rollout, run by the Manager."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..errors import CliError, ExitCode
from ._complete import complete_spec
from ._shared import Format, OutputOpt, State, run, state
from .apply import (
    AutoRollbackOpt,
    DetachOpt,
    DryRunOpt,
    HealthyDeadlineOpt,
    MaxFailuresOpt,
    MaxUnavailableOpt,
    apply_document,
    rollout_flags,
)

app = typer.Typer(
    help="A spec's rollout: status, pause, resume, undo (back to an earlier revision).",
    no_args_is_help=True,
)

SpecArg = Annotated[
    str, typer.Argument(metavar="SPEC", help="Spec name.", autocompletion=complete_spec)
]
# Revision kinds whose content can be signed again (a "delete" revision has none).
CONTENT_KINDS = ("apply", "rollback")


def print_rollout(st: State, rollout: Any | None, spec: str, *, as_json: bool) -> None:
    from ..spec_views import rollout_fields, rollout_json

    out = st.output()
    if as_json:
        out.json(rollout_json(rollout) if rollout is not None else None)
    elif rollout is None:
        out.line(f"spec {spec} has no rollout")
    else:
        out.fields(rollout_fields(rollout))


@app.command("status")
def rollout_status(
    ctx: typer.Context,
    spec: SpecArg,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", "-w", help="Follow it until it ends (exit 1 if it did not succeed)."
        ),
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """The latest rollout of SPEC: revision, state, nodes done / failed / pending, policy.

    Exits 0 whatever its state; with --watch, follows it (and any newer one) until it
    ends and exits 0 only when it succeeded.
    """
    from schema import admin_pb2

    from ._follow import RolloutProgress, follow_rollout

    st = state(ctx)

    async def go() -> Any | None:
        async with st.connect() as conn:
            reply = await conn.call(
                conn.admin().GetRollout(
                    admin_pb2.GetRolloutRequest(spec=spec), timeout=conn.timeout
                )
            )
            rollout = reply.rollout if reply.HasField("rollout") else None
            if not watch or rollout is None:
                return rollout
            with RolloutProgress(
                enabled=st.stderr_is_terminal(), title=f"{spec} revision {rollout.revision}"
            ) as progress:
                while True:
                    followed = await follow_rollout(
                        conn, spec, revision=rollout.revision, first=rollout, progress=progress
                    )
                    if followed.final is None or followed.final.revision == rollout.revision:
                        return followed.final
                    rollout = followed.final  # a newer revision took over: follow that one

    try:
        rollout = run(go())
    except KeyboardInterrupt:
        raise CliError(
            "interrupted: the rollout goes on without fleetctl", ExitCode.INTERRUPTED
        ) from None
    print_rollout(st, rollout, spec, as_json=output is Format.json)
    if watch and rollout is not None and rollout.state != "succeeded":
        raise CliError(
            f"the rollout of {spec} revision {rollout.revision} "
            f"{rollout.state.replace('_', ' ')}"
            + (f": {rollout.reason}" if rollout.reason else ""),
            ExitCode.FAILED,
        )


def _set_state(action: str, past: str, expected: str) -> Any:
    def command(ctx: typer.Context, spec: SpecArg, output: OutputOpt = Format.table) -> None:
        from schema import admin_pb2

        from ..spec_views import rollout_counts, rollout_json

        st = state(ctx)

        async def go() -> Any:
            async with st.connect() as conn:
                return await conn.call(
                    conn.admin().SetRolloutState(
                        admin_pb2.SetRolloutStateRequest(spec=spec, action=action),
                        timeout=conn.timeout,
                    ),
                    what=f"{action} the rollout of {spec}",
                )

        r = run(go()).rollout
        out = st.output()
        if output is Format.json:
            out.json(rollout_json(r))
            return
        text = f"{past} the rollout of {spec} revision {r.revision} ({rollout_counts(r)})"
        if r.state != expected:
            text += f"; it is {r.state.replace('_', ' ')}"
        out.line(text)

    command.__doc__ = (
        "Pause SPEC's rollout: nodes being changed finish, no new wave starts."
        if action == "pause"
        else "Resume SPEC's paused rollout."
    )
    return command


app.command("pause")(_set_state("pause", "paused", "paused"))
app.command("resume")(_set_state("resume", "resumed", "running"))


@app.command("undo")
def rollout_undo(
    ctx: typer.Context,
    spec: SpecArg,
    to: Annotated[
        int | None,
        typer.Option(
            "--to",
            metavar="REV",
            min=1,
            help="The revision whose content to restore [default: the one before the current].",
            show_default=False,
        ),
    ] = None,
    dry_run: DryRunOpt = False,
    max_unavailable: MaxUnavailableOpt = None,
    max_failures: MaxFailuresOpt = None,
    auto_rollback: AutoRollbackOpt = None,
    healthy_deadline: HealthyDeadlineOpt = None,
    detach: DetachOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Sign an earlier revision's content as SPEC's next revision and roll it out.

    The earlier revision is the one before the current (an apply or a rollback), or --to
    REV. Rolled out and followed like 'apply', with the same exit codes.
    """
    flags = rollout_flags(max_unavailable, max_failures, auto_rollback, healthy_deadline)
    st = state(ctx)
    revision, document = run(_earlier_content(st, spec, to))
    if output is not Format.json:
        st.output().line(f"restoring the content of {spec} revision {revision}")
    apply_document(
        st, document, policy=flags, dry_run=dry_run, detach=detach, as_json=output is Format.json
    )


async def _earlier_content(st: State, spec: str, to: int | None) -> tuple[int, dict[str, Any]]:
    """``(revision, unsigned document)`` of the content to restore."""
    from common.specdoc import KIND, SpecError, parse_payload

    from .apply import get_spec

    async with st.connect() as conn:
        reply = await get_spec(conn, spec, history_limit=50)
        if reply is None:
            raise CliError(f"spec {spec} is not known to the Manager", ExitCode.NOT_FOUND)
        current = reply.spec.revision
        oldest = min((r.revision for r in reply.history), default=current)
        if to is not None and to < oldest:
            # Not in the first page of history: ask for all of it down to --to.
            reply = await get_spec(conn, spec, history_limit=current - to + 1) or reply
    candidates = [
        r
        for r in sorted(reply.history, key=lambda r: r.revision, reverse=True)
        if r.kind in CONTENT_KINDS and r.signed.payload
    ]
    if to is not None:
        chosen = next((r for r in candidates if r.revision == to), None)
        if chosen is None:
            known = ", ".join(str(r.revision) for r in sorted(candidates, key=lambda r: r.revision))
            raise CliError(
                f"revision {to} of spec {spec} is not an apply or rollback in its history "
                f"(those are: {known or 'none'})",
                ExitCode.NOT_FOUND,
            )
    else:
        chosen = next((r for r in candidates if r.revision < current), None)
        if chosen is None:
            raise CliError(
                f"spec {spec} has no revision before {current} to go back to", ExitCode.FAILED
            )
    try:
        doc = parse_payload(bytes(chosen.signed.payload))
    except SpecError as exc:
        raise CliError(
            f"revision {chosen.revision} of spec {spec} cannot be restored: {exc}", ExitCode.FAILED
        ) from None
    return chosen.revision, {"kind": KIND, "name": spec, **doc.content()}
