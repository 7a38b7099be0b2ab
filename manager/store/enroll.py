"""Storage of enrollment: join tokens, the certificates the Manager issued, join labels.

Every Manager on a database shares these tables, so a token's uses are counted with one
conditional UPDATE (``uses < max_uses``, not expired, not revoked): on PostgreSQL two
Managers consuming the last use at once serialise on the row and the second matches
nothing; on SQLite there is one writer. The use, the issued certificate's row and the
node's join labels are written in one transaction: a join that fails leaves no trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from .database import Database, db_errors_unavailable
from .group_commit import GroupCommit
from .models import Certificate, IdentityRevocation, JoinToken, Node, NodeEnrollment

log = logging.getLogger(__name__)

# Enrollment lookups answered by one SELECT at most.
_LOOKUP_BATCH = 500


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate the Manager just signed, as recorded in ``fleet_certificate``."""

    serial: str
    identity: str
    not_before: float
    not_after: float
    issued_at: float
    issued_by: str  # "join" or "renew"
    token_id: str = ""


@dataclass(frozen=True)
class Revocation:
    """A revocation of every certificate of ``identity`` up to ``not_before_max``."""

    identity: str
    not_before_max: float
    revoked_at: float
    reason: str
    revoked_by: str


class EnrollStore:
    """Queries and updates of the enrollment tables (see module doc)."""

    def __init__(self, *, database: Database) -> None:
        self._db = database
        self._pg = database.backend == "postgres"
        self._lookups: GroupCommit[str, dict[str, str] | None] = GroupCommit(
            self._lookup_batch,
            key=lambda node_id: node_id,
            max_batch=_LOOKUP_BATCH,
            name="enrollment-lookup",
        )

    def _sql(self, text: str) -> str:
        """``?`` placeholders in the backend's style."""
        if not self._pg:
            return text
        parts = text.split("?")
        return "".join(f"{p}${i}" if i < len(parts) else p for i, p in enumerate(parts, 1))

    # ---- tokens ----

    @db_errors_unavailable
    async def create_token(
        self,
        *,
        make_id: Callable[[], str],
        secret_sha256: str,
        now: float,
        expires_at: float,
        max_uses: int,
        labels: Mapping[str, str],
        description: str,
        created_by: str,
    ) -> JoinToken:
        """Insert a token; ``make_id()`` gives its id (called again on the rare clash)."""
        for attempt in range(5):
            try:
                return await JoinToken.create(
                    id=make_id(),
                    secret_sha256=secret_sha256,
                    created_at=now,
                    expires_at=expires_at,
                    max_uses=max_uses,
                    uses=0,
                    labels=dict(labels),
                    description=description,
                    created_by=created_by,
                    revoked_at=0,
                    nodes=[],
                )
            except IntegrityError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    @db_errors_unavailable
    async def get_token(self, token_id: str) -> JoinToken | None:
        return await JoinToken.get_or_none(id=token_id)

    @db_errors_unavailable
    async def list_tokens(self) -> list[JoinToken]:
        """Every stored token, newest first."""
        return await JoinToken.all().order_by("-created_at", "id")

    @db_errors_unavailable
    async def revoke_token(self, token_id: str, now: float) -> JoinToken | None:
        """Revoke a token (a revoked one keeps its first revocation time); None if unknown."""
        await JoinToken.filter(id=token_id, revoked_at=0).update(revoked_at=now)
        return await JoinToken.get_or_none(id=token_id)

    @db_errors_unavailable
    async def delete_tokens(self, token_ids: Sequence[str]) -> int:
        if not token_ids:
            return 0
        return await JoinToken.filter(id__in=list(token_ids)).delete()

    @db_errors_unavailable
    async def last_issued(self, token_ids: Sequence[str]) -> dict[str, float]:
        """When each token last got a certificate issued (tokens without one left out)."""
        if not token_ids:
            return {}
        rows = await Certificate.filter(token_id__in=list(token_ids)).values_list(
            "token_id", "issued_at"
        )
        last: dict[str, float] = {}
        for token_id, issued_at in rows:
            last[token_id] = max(last.get(token_id, 0.0), issued_at)
        return last

    # ---- joins and renewals ----

    @db_errors_unavailable
    async def node_registered(self, node_id: str) -> bool:
        return await Node.exists(node_id=node_id)

    @db_errors_unavailable
    async def live_certificate(self, node_id: str, now: float) -> tuple[str, float] | None:
        """(serial, not_after) of a certificate this Manager issued to ``node_id`` that
        still works — not expired, not revoked by serial, issued after the node's latest
        identity revocation — or None. A host that joined but whose Daemon has not
        registered yet holds one: its node id is taken all the same."""
        identity = f"node/{node_id}"
        revoked_up_to = await self.revoked_up_to(identity)
        query = Certificate.filter(identity=identity, revoked_at=0, not_after__gt=now)
        if revoked_up_to is not None:
            query = query.filter(not_before__gt=revoked_up_to)
        row = await query.order_by("-not_after").first().values_list("serial", "not_after")
        return (str(row[0]), float(row[1])) if row else None

    @db_errors_unavailable
    async def revoked_up_to(self, identity: str) -> float | None:
        """The latest ``not_before_max`` of the identity revocations of ``identity``."""
        row = (
            await IdentityRevocation.filter(identity=identity)
            .order_by("-not_before_max")
            .first()
            .values_list("not_before_max")
        )
        return float(row[0]) if row else None

    @db_errors_unavailable
    async def record_join(
        self,
        *,
        token_id: str,
        node_id: str,
        cert: IssuedCertificate,
        labels: Mapping[str, str],
        max_nodes: int,
    ) -> bool:
        """Spend one use of the token and record the certificate and the node's join
        labels, in one transaction. False (nothing written) when the token has no use
        left, expired or was revoked by the time of the write."""
        for attempt in (1, 2):
            try:
                return await self._record_join(token_id, node_id, cert, labels, max_nodes)
            except IntegrityError:
                # Two Managers wrote the same node's first enrollment row at once: the
                # retry updates it.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _record_join(
        self,
        token_id: str,
        node_id: str,
        cert: IssuedCertificate,
        labels: Mapping[str, str],
        max_nodes: int,
    ) -> bool:
        async with in_transaction() as tx:
            spent, _ = await tx.execute_query(
                self._sql(
                    "UPDATE fleet_join_token SET uses = uses + 1 WHERE id = ? AND revoked_at = 0 "
                    "AND expires_at > ? AND (max_uses = 0 OR uses < max_uses)"
                ),
                [token_id, cert.issued_at],
            )
            if spent != 1:
                return False
            # The UPDATE holds the row (PostgreSQL) or the database (SQLite) until commit.
            token = await JoinToken.get(id=token_id)
            token.nodes = [*(n for n in token.nodes if n != node_id), node_id][-max_nodes:]
            await token.save(update_fields=["nodes"])
            await _insert_certificate(cert)
            updated = await NodeEnrollment.filter(node_id=node_id).update(
                labels=dict(labels), token_id=token_id, joined_at=cert.issued_at
            )
            if not updated:
                await NodeEnrollment.create(
                    node_id=node_id,
                    labels=dict(labels),
                    token_id=token_id,
                    joined_at=cert.issued_at,
                )
        return True

    @db_errors_unavailable
    async def record_renewal(self, cert: IssuedCertificate) -> None:
        await _insert_certificate(cert)

    # ---- join labels ----

    @db_errors_unavailable
    async def enrollment_labels(self, node_id: str) -> dict[str, str] | None:
        """The labels ``node_id`` got when it joined, or None if it never joined.
        Concurrent lookups are answered together, one SELECT per batch."""
        return await self._lookups.submit(node_id)

    async def _lookup_batch(
        self, node_ids: list[str]
    ) -> Sequence[dict[str, str] | BaseException | None]:
        try:
            rows = await NodeEnrollment.filter(node_id__in=node_ids).values_list(
                "node_id", "labels"
            )
        except Exception as exc:
            # Each caller gets it, and maps it (db_errors_unavailable) to UNAVAILABLE.
            return [exc] * len(node_ids)
        found = {node_id: dict(labels or {}) for node_id, labels in rows}
        return [found.get(node_id) for node_id in node_ids]

    # ---- certificates ----

    @db_errors_unavailable
    async def certificates(
        self, *, identity: str, revoked_only: bool, now: float | None, limit: int
    ) -> list[Certificate]:
        """Certificate rows newest first; ``now`` given: only those not expired then
        (and those whose expiry is unknown)."""
        query = Certificate.all()
        if identity:
            query = query.filter(identity=identity)
        if revoked_only:
            query = query.filter(revoked_at__gt=0)
        if now is not None:
            query = query.filter(Q(not_after__gt=now) | Q(not_after=0))
        return await query.order_by("-issued_at", "-revoked_at", "serial").limit(limit)

    @db_errors_unavailable
    async def identity_revocations(self, *, identity: str, limit: int) -> list[Revocation]:
        query = IdentityRevocation.all()
        if identity:
            query = query.filter(identity=identity)
        rows = await query.order_by("-revoked_at", "-id").limit(limit)
        return [
            Revocation(r.identity, r.not_before_max, r.revoked_at, r.reason, r.revoked_by)
            for r in rows
        ]


async def _insert_certificate(cert: IssuedCertificate) -> None:
    await Certificate.create(
        serial=cert.serial,
        identity=cert.identity,
        not_before=cert.not_before,
        not_after=cert.not_after,
        issued_at=cert.issued_at,
        issued_by=cert.issued_by,
        token_id=cert.token_id,
    )
