"""Revocation storage: certificates revoked by serial, identities revoked up to a moment,
and the revocation list's version.

Every change advances the shared counter ``revocations`` (``fleet_counter``) with one
``UPDATE … SET value = value + 1`` inside the change's own transaction and stamps the
row with the new value (``revocation_seq``). On PostgreSQL that UPDATE holds the
counter's row lock until commit, so two Managers revoking at once get consecutive
versions in commit order: a Manager that reads version N sees every change numbered up
to N. On SQLite the transaction holds the database's write lock, which orders them the
same way.

A serial the Manager never issued (a certgen-made admin certificate, say) is revocable
all the same: a row is inserted with ``issued_at`` 0 and an empty identity. Revoking an
already revoked serial changes nothing (the first ``revoked_at`` and reason stay).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from common.revocation import Revocation

from .database import Database, db_errors_unavailable
from .models import Certificate, IdentityRevocation

log = logging.getLogger(__name__)

COUNTER = "revocations"

_CERT_COLUMNS = (
    "serial",
    "identity",
    "not_before",
    "not_after",
    "issued_at",
    "issued_by",
    "token_id",
    "revoked_at",
    "revoked_reason",
    "revoked_by",
    "revocation_seq",
)


@dataclass(frozen=True)
class CertificateRecord:
    """One row of ``fleet_certificate`` as the admin API shows it."""

    serial: str
    identity: str
    not_before: float
    not_after: float
    issued_at: float
    issued_by: str
    token_id: str
    revoked_at: float
    revoked_reason: str
    revoked_by: str
    revocation_seq: int


@dataclass(frozen=True)
class SerialRevoked:
    """What :meth:`RevocationStore.revoke_serial` did."""

    certificate: CertificateRecord
    # False when the serial was already revoked (nothing changed).
    changed: bool
    # The revocation list version after the call.
    version: int


def _marks(count: int, pg: bool) -> list[str]:
    return [f"${i}" for i in range(1, count + 1)] if pg else ["?"] * count


class RevocationStore:
    """Queries and updates over the revocation tables (see module doc)."""

    def __init__(self, *, database: Database) -> None:
        self._db = database
        self._pg = database.backend == "postgres"

    # ---- the version ----

    @db_errors_unavailable
    async def version(self) -> int:
        """The revocation list's current version (0 before the first revocation)."""
        return await self._version(self._db.connection())

    async def _version(self, conn: BaseDBAsyncClient) -> int:
        mark = _marks(1, self._pg)[0]
        _, rows = await conn.execute_query(
            f"SELECT value FROM fleet_counter WHERE name = {mark}", [COUNTER]
        )
        return int(rows[0][0]) if rows else 0

    async def _bump(self, tx: BaseDBAsyncClient) -> int:
        """Advance the counter by one in ``tx``; the new value. The row is created when
        missing (``ON CONFLICT DO NOTHING``: two Managers creating it at once both go on
        to the UPDATE, which then serialises them)."""
        mark = _marks(1, self._pg)[0]
        update = f"UPDATE fleet_counter SET value = value + 1 WHERE name = {mark} RETURNING value"
        # execute_query_dict: Tortoise's execute_query drops the rows of an UPDATE on asyncpg.
        rows = await tx.execute_query_dict(update, [COUNTER])
        if not rows:
            await tx.execute_query(
                f"INSERT INTO fleet_counter (name, value) VALUES ({mark}, 0) "
                "ON CONFLICT (name) DO NOTHING",
                [COUNTER],
            )
            rows = await tx.execute_query_dict(update, [COUNTER])
        return int(rows[0]["value"])

    # ---- changes ----

    @db_errors_unavailable
    async def revoke_serial(
        self, serial: str, *, reason: str, revoked_by: str, now: float
    ) -> SerialRevoked:
        """Revoke the certificate with ``serial`` (normalised hex), known or not."""
        marks = _marks(len(_CERT_COLUMNS), self._pg)
        pg = self._pg
        async with in_transaction() as tx:
            await tx.execute_query(
                f"INSERT INTO fleet_certificate ({', '.join(_CERT_COLUMNS)}) "
                f"VALUES ({', '.join(marks)}) ON CONFLICT (serial) DO NOTHING",
                [serial, "", 0.0, 0.0, 0.0, "", "", 0.0, "", "", 0],
            )
            mark = _marks(1, pg)[0]
            _, rows = await tx.execute_query(
                f"SELECT {', '.join(_CERT_COLUMNS)} FROM fleet_certificate "
                f"WHERE serial = {mark}" + (" FOR UPDATE" if pg else ""),
                [serial],
            )
            record = _record(list(rows[0]))
            if record.revoked_at > 0:
                return SerialRevoked(record, False, await self._version(tx))
            seq = await self._bump(tx)
            set_marks = _marks(5, pg)
            await tx.execute_query(
                f"UPDATE fleet_certificate SET revoked_at = {set_marks[0]}, "
                f"revoked_reason = {set_marks[1]}, revoked_by = {set_marks[2]}, "
                f"revocation_seq = {set_marks[3]} WHERE serial = {set_marks[4]}",
                [now, reason, revoked_by, seq, serial],
            )
        record = CertificateRecord(
            **{
                **record.__dict__,
                "revoked_at": now,
                "revoked_reason": reason,
                "revoked_by": revoked_by,
                "revocation_seq": seq,
            }
        )
        return SerialRevoked(record, True, seq)

    @db_errors_unavailable
    async def revoke_identity(
        self, identity: str, *, not_before_max: float, reason: str, revoked_by: str, now: float
    ) -> int:
        """Revoke every certificate of ``identity`` (``node/web-1``) with notBefore at or
        before ``not_before_max``; the new list version."""
        async with in_transaction() as tx:
            seq = await self._bump(tx)
            await IdentityRevocation.create(
                identity=identity,
                not_before_max=not_before_max,
                revoked_at=now,
                reason=reason,
                revoked_by=revoked_by,
                revocation_seq=seq,
                using_db=tx,
            )
        return seq

    # ---- reads ----

    @db_errors_unavailable
    async def load(self, *, now: float) -> tuple[int, list[Revocation]]:
        """(version, every revocation that still matters): revoked serials whose
        certificate has not expired (or whose expiry is unknown) and every identity
        revocation. The version is read first, so the entries are at least that new."""
        conn = self._db.connection()
        version = await self._version(conn)
        serials = await Certificate.filter(revoked_at__gt=0).values_list(
            "serial", "not_after", "revoked_at", "revoked_reason"
        )
        entries = [
            Revocation(serial=serial, revoked_at=revoked_at, reason=reason)
            for serial, not_after, revoked_at, reason in serials
            if not not_after or not_after > now
        ]
        identities = await IdentityRevocation.all().values_list(
            "identity", "not_before_max", "revoked_at", "reason"
        )
        entries += [
            Revocation(identity=identity, not_before_max=nbm, revoked_at=at, reason=reason)
            for identity, nbm, at, reason in identities
        ]
        return version, entries

    @db_errors_unavailable
    async def certificate(self, serial: str) -> CertificateRecord | None:
        row = await Certificate.get_or_none(serial=serial)
        return None if row is None else _record([getattr(row, c) for c in _CERT_COLUMNS])

    @db_errors_unavailable
    async def delete_expired(self, cutoff: float, *, batch: int) -> int:
        """Delete at most ``batch`` revoked rows of certificates that expired before
        ``cutoff`` (a server refuses an expired certificate anyway). Rows of foreign
        certificates (``not_after`` 0) stay: their expiry is unknown."""
        serials = (
            await Certificate.filter(revoked_at__gt=0, not_after__gt=0, not_after__lt=cutoff)
            .limit(batch)
            .values_list("serial", flat=True)
        )
        if not serials:
            return 0
        return await Certificate.filter(serial__in=list(serials)).delete()


def _record(row: Sequence[Any]) -> CertificateRecord:
    values = list(row)
    return CertificateRecord(
        serial=str(values[0]),
        identity=str(values[1]),
        not_before=float(values[2]),
        not_after=float(values[3]),
        issued_at=float(values[4]),
        issued_by=str(values[5]),
        token_id=str(values[6]),
        revoked_at=float(values[7]),
        revoked_reason=str(values[8]),
        revoked_by=str(values[9]),
        revocation_seq=int(values[10]),
    )
