"""``fleetctl tokens create|list|revoke``: join tokens, with which a host joins the fleet
(``fleet-daemon join``) and gets a node certificate signed by the Manager.

A token is ``<id>.<secret>``: the Manager stores only a hash of the secret and shows the
whole token once, in the reply to ``tokens create``. Everything else names a token by its
id, and fleetctl never sends or prints the secret part back.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from ..errors import CliError, ExitCode, usage
from ..render import Cell, ago, iso, labels_text
from ._complete import complete_token
from ._shared import Format, OutputOpt, parse_labels, run, state

app = typer.Typer(
    help="Join tokens: create one for `fleet-daemon join`, list them, revoke one.",
    no_args_is_help=True,
)

# int32 on the wire.
MAX_USES = 2**31 - 1
STATUS_STYLES = {"active": "green", "expired": "dim", "used": "dim", "revoked": "red"}
HEADERS = ["ID", "STATUS", "USES", "EXPIRES", "LABELS", "CREATED BY", "NODES"]
WIDE_HEADERS = [*HEADERS, "CREATED", "DESCRIPTION"]


# ---- parsing ------------------------------------------------------------------------------------


def parse_ttl(text: str) -> int:
    """``--ttl`` in whole seconds (at least 1, fractions rounded up); exit 2 when malformed."""
    import math

    from common.durations import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise usage(f"--ttl: {exc}") from None
    if seconds < 1:
        raise usage(f"--ttl: {text!r} is shorter than one second")
    return math.ceil(seconds)


def parse_token_labels(pairs: list[str] | None) -> dict[str, str]:
    """``--label KEY=VALUE`` as given to nodes: the same rules as a Daemon's ``labels``."""
    from common.errors import InvalidArgument
    from common.validate import check_labels

    labels = parse_labels(pairs)
    try:
        return check_labels("--label", labels)
    except InvalidArgument as exc:
        raise usage(str(exc)) from None


def token_id(text: str) -> str:
    """The id part of a token id or of a whole ``<id>.<secret>`` token (exit 2 when empty).

    Only the id goes to the Manager, and only the id may appear in messages: a whole
    token pasted on the command line must not be echoed back.
    """
    ident = text.strip().partition(".")[0]
    if not ident:
        raise usage("ID: expected a token id (or the whole token ID.SECRET)")
    return ident


# ---- what is printed ----------------------------------------------------------------------------


def join_command(enroll_address: str, token: str, ca_hash: str) -> str:
    """The command to run on a new host, quoted for a POSIX shell."""
    return shlex.join(
        [
            "fleet-daemon",
            "join",
            "--manager",
            enroll_address,
            "--token",
            token,
            "--ca-hash",
            ca_hash,
        ]
    )


def token_json(t: Any) -> dict[str, Any]:
    """A ``JoinToken`` as documented in docs/fleetctl.md (never its secret: it has none)."""
    return {
        "id": t.id,
        "status": t.status,
        "uses": t.uses,
        "max_uses": t.max_uses or None,
        "expires_at": iso(t.expires_at),
        "labels": dict(sorted(t.labels.items())),
        "description": t.description or None,
        "created_by": t.created_by or None,
        "created_at": iso(t.created_at),
        "revoked_at": iso(t.revoked_at),
        "nodes": list(t.nodes),
    }


def uses_text(t: Any, *, unicode: bool) -> str:
    """``1/3``; ``2/∞`` for unlimited uses (``2/inf`` in plain output)."""
    limit = str(t.max_uses) if t.max_uses else ("∞" if unicode else "inf")
    return f"{t.uses}/{limit}"


def nodes_text(nodes: Sequence[str]) -> str:
    """How many nodes joined with a token, and the last one: ``2 (last web-3)``."""
    if not nodes:
        return "-"
    return f"{len(nodes)} (last {nodes[-1]})"


def token_row(t: Any, *, unicode: bool, wide: bool = False) -> list[Cell]:
    row: list[Cell] = [
        t.id,
        (t.status or "-", STATUS_STYLES.get(t.status, "")),
        uses_text(t, unicode=unicode),
        ago(t.expires_at) if t.expires_at else "never",
        labels_text(t.labels),
        t.created_by or "-",
        nodes_text(t.nodes),
    ]
    if wide:
        row += [ago(t.created_at), t.description or "-"]
    return row


def expiry_text(t: Any) -> str:
    """``in 2h (2026-11-28T06:18:12Z)``: its TTL from its creation, not from the moment
    this prints (which would say ``in 1h59m`` a second later)."""
    from common.durations import format_duration

    if not t.expires_at:
        return "never"
    return f"in {format_duration(t.expires_at - t.created_at)} ({iso(t.expires_at)})"


# ---- commands -----------------------------------------------------------------------------------


@app.command("create")
def create_token(
    ctx: typer.Context,
    ttl: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION",
            help="How long it works: 30m, 1h, 7d (default: the Manager's, 1h; at most 30d).",
            show_default=False,
        ),
    ] = None,
    uses: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="How many hosts may join with it (default: any number within its TTL).",
            min=0,
            show_default=False,
        ),
    ] = 0,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            metavar="KEY=VALUE",
            help="A label every node that joins with it gets (repeatable).",
        ),
    ] = None,
    description: Annotated[
        str,
        typer.Option(metavar="TEXT", help="What the token is for (shown by 'tokens list')."),
    ] = "",
    output: OutputOpt = Format.table,
) -> None:
    """Create a join token and print it with the `fleet-daemon join` command to run on a
    new host. The token is shown only here: the Manager stores it hashed."""
    from schema import admin_pb2

    ttl_seconds = parse_ttl(ttl) if ttl is not None else 0
    if uses > MAX_USES:
        raise usage(f"--uses {uses}: at most {MAX_USES}")
    labels = parse_token_labels(label)
    st = state(ctx)

    async def go() -> Any:
        async with st.connect() as conn:
            return await conn.call(
                conn.admin().CreateJoinToken(
                    admin_pb2.CreateJoinTokenRequest(
                        ttl_seconds=ttl_seconds,
                        max_uses=uses,
                        labels=labels,
                        description=description,
                    ),
                    timeout=conn.timeout,
                ),
                what="create a join token",
            )

    resp = run(go())
    info = resp.info
    command = join_command(resp.enroll_address, resp.token, resp.ca_hash)
    out = st.output()
    if output is Format.json:
        out.json(
            {
                "token": resp.token,
                "info": token_json(info),
                "ca_hash": resp.ca_hash,
                "enroll_address": resp.enroll_address,
                "join_command": command,
            }
        )
        return
    out.fields(
        [
            ("Token", resp.token),
            ("ID", info.id),
            ("Expires", expiry_text(info)),
            ("Uses", f"up to {info.max_uses} host(s)" if info.max_uses else "any number of hosts"),
            ("Labels", labels_text(info.labels)),
            *([("Description", info.description)] if info.description else []),
        ]
    )
    out.line()
    out.line("Run on each new host (the token is shown only now):")
    out.line()
    # Alone on its line, unstyled: copied as it is.
    out.line(f"  {command}")


@app.command("list")
def list_tokens(
    ctx: typer.Context,
    all_: Annotated[
        bool,
        typer.Option("--all", "-a", help="Also tokens that stopped working (kept 7 days)."),
    ] = False,
    output: OutputOpt = Format.table,
) -> None:
    """Join tokens that still work (--all: also those that stopped), oldest first: uses,
    expiry, labels, who created them and which nodes joined with them."""
    from schema import admin_pb2

    st = state(ctx)

    async def go() -> Any:
        async with st.connect() as conn:
            return await conn.call(
                conn.admin().ListJoinTokens(
                    admin_pb2.ListJoinTokensRequest(all=all_), timeout=conn.timeout
                )
            )

    tokens = sorted(run(go()).tokens, key=lambda t: (t.created_at, t.id))
    out = st.output()
    if output is Format.json:
        out.json([token_json(t) for t in tokens])
        return
    wide = output is Format.wide
    out.table(
        WIDE_HEADERS if wide else HEADERS,
        [token_row(t, unicode=out.rich, wide=wide) for t in tokens],
        right=("USES",),
    )


@app.command("revoke")
def revoke_token(
    ctx: typer.Context,
    token: Annotated[
        str,
        typer.Argument(
            metavar="ID",
            help="The token's id, or the whole token (only its id is sent).",
            autocompletion=complete_token,
            show_default=False,
        ),
    ],
    output: OutputOpt = Format.table,
) -> None:
    """Revoke a join token: no host can join with it any more. Nodes that already joined
    keep their certificates (see 'certs revoke' and 'nodes remove')."""
    from schema import admin_pb2

    ident = token_id(token)
    st = state(ctx)

    async def go() -> Any:
        async with st.connect() as conn:
            try:
                return await conn.call(
                    conn.admin().RevokeJoinToken(
                        admin_pb2.RevokeJoinTokenRequest(id=ident), timeout=conn.timeout
                    )
                )
            except CliError as exc:
                if exc.code is not ExitCode.NOT_FOUND:
                    raise
                raise CliError(exc.message + await _did_you_mean(conn, ident), exc.code) from None

    t = run(go()).token
    out = st.output()
    if output is Format.json:
        out.json(token_json(t))
        return
    was = f" after {t.uses} use(s)" if t.uses else ", never used"
    out.line(f"join token {t.id or ident} revoked{was}: no host can join with it any more")


async def _did_you_mean(conn: Any, typed: str) -> str:
    """`` — did you mean …?`` among the Manager's token ids ("" if none is close, or the
    Manager cannot say within 5 s)."""
    import asyncio

    from schema import admin_pb2

    from ..suggest import close_ids, did_you_mean

    try:
        reply = await conn.admin().ListJoinTokens(
            admin_pb2.ListJoinTokensRequest(all=True), timeout=min(conn.timeout, 5.0)
        )
    except asyncio.CancelledError:
        raise
    except Exception:
        return ""
    return did_you_mean(close_ids(typed, [t.id for t in reply.tokens]))
