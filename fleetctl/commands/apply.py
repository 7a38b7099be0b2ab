"""``fleetctl apply -f FILE`` and ``fleetctl diff -f FILE``: sign a spec revision, send it,
follow its rollout (docs/specs.md).

The steps: read and validate the file; ``GetSpec`` for the revision to sign
(``next_revision``; a spec never applied starts at 1); stop there when the content equals
the current revision's; sign with the operator's admin key (and, with
``--auto-rollback``, the current content as the rollback revision the Manager may need);
``ApplySpec``; follow the rollout until it has ended. ``rollout undo`` goes through the
same :func:`apply_document` with older content.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import CliError, ExitCode
from ._outcome import Outcome, report
from ._shared import Format, OutputOpt, State, run, state

if TYPE_CHECKING:
    from ..client import Connection
    from ..signing import Signer
    from ..specfile import RolloutOptions

FileOpt = Annotated[
    str,
    typer.Option(
        "--file",
        "-f",
        metavar="FILE",
        help="The spec file (TOML; - reads stdin).",
        show_default=False,
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show per node what would change; change nothing.")
]
MaxUnavailableOpt = Annotated[
    str | None,
    typer.Option(
        metavar="N|N%",
        help="Nodes changing at once: a count or a percentage of the targeted nodes "
        "[default: the spec file's [rollout], else 25%].",
        show_default=False,
    ),
]
MaxFailuresOpt = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        min=0,
        help="Failed nodes tolerated before the rollout stops [default: 0].",
        show_default=False,
    ),
]
AutoRollbackOpt = Annotated[
    bool | None,
    typer.Option(
        "--auto-rollback/--no-auto-rollback",
        help="When the rollout stops, put the previous revision's content back "
        "[default: the spec file's [rollout], else no].",
        show_default=False,
    ),
]
HealthyDeadlineOpt = Annotated[
    str | None,
    typer.Option(
        metavar="DURATION",
        help="How long a node may take to run the new revision healthy, e.g. 2m [default: 2m].",
        show_default=False,
    ),
]
DetachOpt = Annotated[
    bool,
    typer.Option("--detach", help="Return once the revision is stored; do not follow the rollout."),
]


def rollout_flags(
    max_unavailable: str | None,
    max_failures: int | None,
    auto_rollback: bool | None,
    healthy_deadline: str | None,
) -> RolloutOptions:
    """The rollout flags as options (usage errors for bad values); None = not given."""
    from ..specfile import RolloutOptions, parse_healthy_deadline, parse_max_unavailable

    return RolloutOptions(
        max_unavailable=parse_max_unavailable(max_unavailable, where="--max-unavailable")
        if max_unavailable is not None
        else None,
        max_failures=max_failures,
        auto_rollback=auto_rollback,
        healthy_deadline=parse_healthy_deadline(healthy_deadline, where="--healthy-deadline")
        if healthy_deadline is not None
        else None,
    )


def apply_cmd(
    ctx: typer.Context,
    file: FileOpt,
    dry_run: DryRunOpt = False,
    max_unavailable: MaxUnavailableOpt = None,
    max_failures: MaxFailuresOpt = None,
    auto_rollback: AutoRollbackOpt = None,
    healthy_deadline: HealthyDeadlineOpt = None,
    detach: DetachOpt = False,
    output: OutputOpt = Format.table,
) -> None:
    """Sign the spec in FILE as its next revision and roll it out; follow until it ends.

    Exit 0 when every targeted node runs it (or nothing changed), 1 when the rollout
    stopped (failed, rolled back, interrupted), 2 for a bad file or flag.
    """
    from ..specfile import read_spec_file

    flags = rollout_flags(max_unavailable, max_failures, auto_rollback, healthy_deadline)
    spec = read_spec_file(file)
    apply_document(
        state(ctx),
        spec.document,
        policy=spec.rollout.overridden_by(flags),
        dry_run=dry_run,
        detach=detach,
        as_json=output is Format.json,
    )


def diff_cmd(ctx: typer.Context, file: FileOpt, output: OutputOpt = Format.table) -> None:
    """What applying FILE would change, per node (the same as apply --dry-run)."""
    from ..specfile import read_spec_file

    spec = read_spec_file(file)
    apply_document(
        state(ctx),
        spec.document,
        policy=spec.rollout,
        dry_run=True,
        detach=False,
        as_json=output is Format.json,
    )


# ---- the apply itself -------------------------------------------------------------------------


@dataclass
class Phase:
    """How far an apply got, for what to say when it is interrupted."""

    revision: int = 0
    sent: bool = False
    stored: bool = False


def to_policy(options: RolloutOptions) -> Any:
    from schema import admin_pb2

    return admin_pb2.RolloutPolicy(
        max_unavailable=options.max_unavailable or "",
        max_failures=options.max_failures or 0,
        auto_rollback=bool(options.auto_rollback),
        healthy_deadline_seconds=options.healthy_deadline or 0,
    )


def apply_document(
    st: State,
    document: dict[str, Any],
    *,
    policy: RolloutOptions,
    dry_run: bool,
    detach: bool,
    as_json: bool,
) -> None:
    """Sign ``document`` (kind, name, target, agents) as the spec's next revision, apply it
    and follow its rollout; print the outcome; exit 1 unless it succeeded."""
    from ..signing import Signer

    signer = Signer.from_settings(st.settings)
    phase = Phase()
    name = str(document["name"])
    try:
        outcome = run(
            _apply(
                st,
                signer,
                document,
                policy=to_policy(policy),
                dry_run=dry_run,
                detach=detach,
                phase=phase,
            )
        )
    except KeyboardInterrupt:
        raise CliError(interrupted_message(name, phase, dry_run), ExitCode.INTERRUPTED) from None
    report(st, outcome, as_json=as_json)


def interrupted_message(name: str, phase: Phase, dry_run: bool) -> str:
    if dry_run or not phase.sent:
        return "interrupted: nothing was applied"
    if not phase.stored:
        return (
            f"interrupted while the Manager was storing {name} revision {phase.revision}: "
            f"see 'fleetctl specs show {name}' for whether it was"
        )
    return (
        f"interrupted: the rollout of {name} revision {phase.revision} goes on without "
        f"fleetctl — follow it with 'fleetctl rollout status {name} --watch', stop it with "
        f"'fleetctl rollout pause {name}'"
    )


async def get_spec(conn: Connection, name: str, *, history_limit: int = 1) -> Any | None:
    """``GetSpec`` of ``name``, or None when the Manager does not know the spec."""
    from schema import admin_pb2

    try:
        return await conn.call(
            conn.admin().GetSpec(
                admin_pb2.GetSpecRequest(name=name, history_limit=history_limit),
                timeout=conn.timeout,
            )
        )
    except CliError as err:
        if err.code is ExitCode.NOT_FOUND:
            return None
        raise


def current_content(reply: Any | None) -> Any | None:
    """The current revision of a ``GetSpec`` reply as a ``common.specdoc.SpecDoc`` (None when
    the spec has none: new, deleted, or a payload that does not parse)."""
    from common.specdoc import SpecError, parse_payload

    if reply is None or reply.spec.deleted or not reply.HasField("current"):
        return None
    try:
        return parse_payload(bytes(reply.current.signed.payload))
    except SpecError:
        return None


async def _apply(
    st: State,
    signer: Signer,
    document: dict[str, Any],
    *,
    policy: Any,
    dry_run: bool,
    detach: bool,
    phase: Phase,
) -> Outcome:
    from common.specdoc import KIND, canonical
    from schema import admin_pb2

    from ..signing import ROLLBACK_VALIDITY_SECONDS
    from ..specfile import content_of
    from ._follow import RolloutProgress, follow_rollout

    name = str(document["name"])
    async with st.connect() as conn:
        reply = await get_spec(conn, name)
        revision = max(reply.spec.next_revision if reply is not None else 1, 1)
        current = current_content(reply)
        outcome = Outcome(
            name=name,
            revision=revision,
            changed=True,
            dry_run=dry_run,
            detached=detach,
            policy=policy,
        )
        if current is not None and canonical(content_of(document)) == canonical(current.content()):
            assert reply is not None
            outcome.changed = False
            outcome.revision = reply.spec.revision or current.revision
            return outcome
        now = int(time.time())
        request = admin_pb2.ApplySpecRequest(
            spec=signer.sign(document, revision=revision, signed_at=now),
            dry_run=dry_run,
            policy=policy,
        )
        if policy.auto_rollback and current is not None and not dry_run:
            outcome.rollback_revision = revision + 1
            request.rollback.CopyFrom(
                signer.sign(
                    {"kind": KIND, "name": name, **current.content()},
                    revision=revision + 1,
                    signed_at=now,
                    expires_at=now + ROLLBACK_VALIDITY_SECONDS,
                    rollback_of=revision,
                )
            )
        phase.revision, phase.sent = revision, True
        started = time.monotonic()
        resp = await send_apply(conn, request, name, revision)
        phase.stored = resp.changed and not dry_run
        outcome.plan = list(resp.plan)
        outcome.changed = resp.changed
        if not resp.changed:
            outcome.revision = resp.spec.revision or revision
            return outcome
        if dry_run or not resp.HasField("rollout"):
            return outcome
        outcome.rollout = resp.rollout
        if detach:
            return outcome
        with RolloutProgress(
            enabled=st.stderr_is_terminal(), title=f"{name} revision {revision}"
        ) as progress:
            followed = await follow_rollout(
                conn,
                name,
                revision=revision,
                first=resp.rollout,
                progress=progress,
                rollback_revision=outcome.rollback_revision,
            )
        outcome.rollout, outcome.final = followed.ours, followed.final
        outcome.elapsed = time.monotonic() - started
        if outcome.result in ("failed", "rolled_back", "interrupted"):
            outcome.nodes = await failed_node_statuses(conn, name, followed.ours)
        return outcome


async def send_apply(conn: Connection, request: Any, name: str, revision: int) -> Any:
    """``ApplySpec``; somebody else's apply in between (FAILED_PRECONDITION) says to re-run."""
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    try:
        return await conn.call(
            conn.admin().ApplySpec(request, timeout=conn.timeout), what=f"apply {name}"
        )
    except CliError as err:
        cause = err.__cause__
        if isinstance(cause, GRPCError) and cause.status is Status.FAILED_PRECONDITION:
            raise CliError(
                f"spec {name} changed while fleetctl signed revision {revision} "
                f"({cause.message or 'revision out of date'}): somebody applied it in "
                "between — run the command again",
                ExitCode.FAILED,
            ) from None
        raise


async def failed_node_statuses(conn: Connection, name: str, rollout: Any) -> list[Any]:
    """Status (with the reason) of the nodes that failed ``rollout``, as the Manager has them."""
    try:
        reply = await get_spec(conn, name)
    except CliError:
        reply = None  # the reasons are a bonus: the outcome is known already
    failed = set(rollout.failed_nodes)
    by_node = {n.node_id: n for n in reply.nodes} if reply is not None else {}
    out = [by_node[n] for n in sorted(failed) if n in by_node]
    out += [
        n
        for n in sorted(by_node.values(), key=lambda n: n.node_id)
        if n.node_id not in failed and n.state in ("refused", "failed")
    ]
    if not out:
        from schema import admin_pb2

        out = [admin_pb2.SpecNodeStatus(node_id=n, state="failed") for n in sorted(failed)]
    return out
