"""``fleetctl certs list|revoke``: the certificates the Manager issued, and revocations.

A revocation names a certificate by serial (``certs revoke``, any certificate: node, admin
or manager, issued by the Manager or made with certgen) or every certificate of a node
issued until then (``nodes remove``: listed with an empty serial, shown as ``*``). Every
Fleet server refuses a revoked certificate from its next call.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import CliError, ExitCode, usage
from ..render import Cell, ago, iso
from ._complete import complete_node, complete_serial
from ._shared import Format, OutputOpt, run, state

app = typer.Typer(
    help="Certificates the Manager issued, and revocations: list, revoke.",
    no_args_is_help=True,
)

HEADERS = ["SERIAL", "IDENTITY", "NOT AFTER", "ISSUED", "STATUS"]
WIDE_HEADERS = [*HEADERS, "NOT BEFORE", "REVOKED", "REVOKED BY"]
STATUS_STYLES = {"valid": "green", "expired": "dim", "revoked": "red"}
# Hex, any case, colons allowed (as `openssl x509 -serial` prints it); 20 bytes at most.
_SERIAL = re.compile(r"(?:0x)?[0-9a-f]{1,64}")


def check_serial(text: str) -> str:
    """``SERIAL`` as typed, once checked to be hex (colons allowed); exit 2 otherwise."""
    serial = text.strip()
    if not _SERIAL.fullmatch(serial.replace(":", "").lower()):
        raise usage(
            f"SERIAL {text[:80]!r}: expected the certificate's serial number in hex "
            "(colons allowed), as 'certs list' or 'openssl x509 -noout -serial' print it"
        )
    return serial


def same_serial(a: str, b: str) -> bool:
    """Whether two serials (hex, any case, colons, leading zeros) are the same number."""

    def value(text: str) -> str:
        return text.replace(":", "").lower().removeprefix("0x").lstrip("0") or "0"

    return value(a) == value(b)


def own_serial(cert_file: Path | None) -> str | None:
    """The serial of the certificate this fleetctl presents (None if it cannot be read:
    the call itself then reports the file)."""
    if cert_file is None:
        return None
    from cryptography import x509

    try:
        return format(x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number, "x")
    except (OSError, ValueError):
        return None


def cert_status(c: Any, now: float | None = None) -> str:
    """``revoked``, ``expired`` or ``valid``."""
    if c.revoked_at:
        return "revoked"
    if c.not_after and c.not_after <= (time.time() if now is None else now):
        return "expired"
    return "valid"


def cert_json(c: Any) -> dict[str, Any]:
    """A ``Certificate`` as documented in docs/fleetctl.md."""
    return {
        "serial": c.serial or None,
        "identity": c.identity,
        "status": cert_status(c),
        "not_before": iso(c.not_before),
        "not_after": iso(c.not_after),
        "issued_at": iso(c.issued_at),
        "issued_by": c.issued_by or None,
        "token_id": c.token_id or None,
        "revoked_at": iso(c.revoked_at),
        "revoked_reason": c.revoked_reason or None,
        "revoked_by": c.revoked_by or None,
    }


def issued_text(c: Any) -> str:
    """``join (token ab12cd), 2h ago``, ``renew, 1d ago``; ``-`` for a certificate the
    Manager did not issue (one made with certgen, listed for its revocation)."""
    if not c.issued_by:
        return "-"
    how = f"{c.issued_by} (token {c.token_id})" if c.token_id else c.issued_by
    return f"{how}, {ago(c.issued_at)}" if c.issued_at else how


def status_cell(c: Any) -> Cell:
    status = cert_status(c)
    text = status
    if status == "revoked" and c.revoked_reason:
        text = f"revoked: {c.revoked_reason}"
    return (text, STATUS_STYLES[status])


def cert_row(c: Any, *, wide: bool = False) -> list[Cell]:
    row: list[Cell] = [
        c.serial or "*",
        c.identity or "-",
        ago(c.not_after) if c.not_after else "-",
        issued_text(c),
        status_cell(c),
    ]
    if wide:
        row += [
            iso(c.not_before) or "-",
            ago(c.revoked_at) if c.revoked_at else "-",
            c.revoked_by or "-",
        ]
    return row


@app.command("list")
def list_certs(
    ctx: typer.Context,
    node: Annotated[
        str | None,
        typer.Option(
            metavar="NODE",
            help="Only this node's certificates.",
            autocompletion=complete_node,
            show_default=False,
        ),
    ] = None,
    revoked: Annotated[
        bool,
        typer.Option("--revoked", help="Only revocations (a removed node's: serial *)."),
    ] = False,
    all_: Annotated[
        bool, typer.Option("--all", "-a", help="Also certificates that have expired.")
    ] = False,
    limit: Annotated[
        int,
        typer.Option(
            metavar="N", help="At most this many, newest first (0 = the Manager's 1000).", min=0
        ),
    ] = 0,
    output: OutputOpt = Format.table,
) -> None:
    """Certificates the Manager issued (joins, renewals) and revoked ones, newest first.

    A node removed with 'nodes remove' shows as serial * : every certificate of it
    issued until then is revoked, those made with certgen included.
    """
    from schema import admin_pb2

    st = state(ctx)

    async def go() -> Any:
        async with st.connect() as conn:
            return await conn.call(
                conn.admin().ListCertificates(
                    admin_pb2.ListCertificatesRequest(
                        node_id=node or "", revoked=revoked, all=all_, limit=limit
                    ),
                    timeout=conn.timeout,
                )
            )

    certs = list(run(go()).certificates)
    out = st.output()
    if output is Format.json:
        out.json([cert_json(c) for c in certs])
        return
    wide = output is Format.wide
    out.table(WIDE_HEADERS if wide else HEADERS, [cert_row(c, wide=wide) for c in certs])


@app.command("revoke")
def revoke_cert(
    ctx: typer.Context,
    serial: Annotated[
        str,
        typer.Argument(
            metavar="SERIAL",
            help="The certificate's serial number, in hex (colons allowed).",
            autocompletion=complete_serial,
            show_default=False,
        ),
    ],
    reason: Annotated[
        str, typer.Option(metavar="TEXT", help="Why (shown by 'certs list' and in logs).")
    ] = "",
    output: OutputOpt = Format.table,
) -> None:
    """Revoke a certificate (node, admin or manager; the Manager's or certgen's).

    The Manager refuses it from its next call and closes its open connections at once;
    Daemons refuse it from their next heartbeat. It cannot be undone.
    """
    from schema import admin_pb2

    typed = check_serial(serial)
    st = state(ctx)
    ours = not st.settings.insecure and same_serial(typed, own_serial(st.settings.cert) or "")

    async def go() -> Any:
        async with st.connect() as conn:
            try:
                return await conn.call(
                    conn.admin().RevokeCertificate(
                        admin_pb2.RevokeCertificateRequest(serial=typed, reason=reason),
                        timeout=conn.timeout,
                    ),
                    what=f"revoke certificate {typed}",
                )
            except CliError as exc:
                # Revoking the certificate this call presents: the Manager closes its
                # connections at once, the reply with them. Whether it is revoked shows
                # in the next call's refusal.
                dropped = exc.code is ExitCode.UNAVAILABLE
                if not (ours and dropped and await refused_as_revoked()):
                    raise
                return None

    async def refused_as_revoked() -> bool:
        async with st.connect() as conn:
            try:
                await conn.call(
                    conn.admin().ListJoinTokens(
                        admin_pb2.ListJoinTokensRequest(), timeout=min(conn.timeout, 5.0)
                    )
                )
            except CliError as exc:
                return exc.code is ExitCode.PERMISSION_DENIED and "revoked" in exc.message
        return False

    resp = run(go())
    out = st.output()
    own_note = (
        f"it is the certificate this fleetctl presents ({st.settings.cert}): use another "
        "admin certificate from now on"
    )
    if resp is None:
        if output is Format.json:
            out.json({"certificate": None, "connections_closed": None})
            return
        out.line(
            f"certificate {typed} revoked (the Manager closed this connection before it answered)"
        )
        out.line(own_note, "yellow")
        return
    c = resp.certificate
    if output is Format.json:
        out.json({"certificate": cert_json(c), "connections_closed": resp.connections_closed})
        return
    who = f" of {c.identity}" if c.identity else ""
    why = f" ({c.revoked_reason})" if c.revoked_reason else ""
    out.line(f"certificate {c.serial or typed}{who} revoked{why}")
    closed = resp.connections_closed
    out.line(
        f"the Manager closed {closed} open connection{'' if closed == 1 else 's'} of it; "
        "Daemons refuse it from their next heartbeat"
    )
    if ours:
        out.line(own_note, "yellow")
