"""The AdminService RPCs of onboarding: join tokens and the certificates issued.

``AdminService`` delegates CreateJoinToken, ListJoinTokens, RevokeJoinToken and
ListCertificates here. A token's secret is returned once, by CreateJoinToken, with what
``fleet-daemon join`` needs besides: the root's ``--ca-hash`` and the enrollment address.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from common import validate
from common.errors import FailedPrecondition, InvalidArgument, NotFound
from common.rpc import current_call
from schema import admin_pb

from ..store.enroll import EnrollStore, Revocation
from ..store.models import Certificate, JoinToken
from .issuer import NO_ISSUING_CA, NodeIssuer, check_node_id
from .tokens import (
    KEEP_STOPPED,
    USED,
    is_token_id,
    new_token,
    secret_digest,
    token_status,
)

log = logging.getLogger(__name__)

DEFAULT_CERT_LIMIT = 1000
MAX_CERT_LIMIT = 10_000
MAX_TOKEN_USES = 1_000_000


def token_message(token: JoinToken, now: float) -> admin_pb.JoinToken:
    return admin_pb.JoinToken(
        id=token.id,
        created_at=int(token.created_at),
        expires_at=int(token.expires_at),
        max_uses=token.max_uses,
        uses=token.uses,
        labels=dict(token.labels or {}),
        description=token.description,
        created_by=token.created_by,
        revoked_at=int(token.revoked_at),
        status=token_status(token, now),
        nodes=list(token.nodes or []),
    )


def certificate_message(row: Certificate) -> admin_pb.Certificate:
    return admin_pb.Certificate(
        serial=row.serial,
        identity=row.identity,
        not_before=int(row.not_before),
        not_after=int(row.not_after),
        issued_at=int(row.issued_at),
        issued_by=row.issued_by,
        token_id=row.token_id,
        revoked_at=int(row.revoked_at),
        revoked_reason=row.revoked_reason,
        revoked_by=row.revoked_by,
    )


def revocation_message(rev: Revocation) -> admin_pb.Certificate:
    """An identity revocation as a row without serial; ``not_before`` carries its
    ``not_before_max`` (every certificate of the identity up to then is revoked)."""
    return admin_pb.Certificate(
        serial="",
        identity=rev.identity,
        not_before=int(rev.not_before_max),
        revoked_at=int(rev.revoked_at),
        revoked_reason=rev.reason,
        revoked_by=rev.revoked_by,
    )


class EnrollAdmin:
    """CreateJoinToken, ListJoinTokens, RevokeJoinToken, ListCertificates."""

    def __init__(
        self,
        *,
        store: EnrollStore,
        issuer: NodeIssuer,
        ca_hash: Callable[[], str],
        enroll_address: Callable[[], str],
        default_ttl: float,
        max_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._issuer = issuer
        self._ca_hash = ca_hash
        self._enroll_address = enroll_address
        self._default_ttl = default_ttl
        self._max_ttl = max_ttl
        self._clock = clock

    async def live_certificate(self, node_id: str) -> str | None:
        """The serial of a working certificate issued to ``node_id`` (joined, maybe not
        registered yet), or None."""
        found = await self._store.live_certificate(node_id, self._clock())
        return found[0] if found else None

    async def create_join_token(
        self, request: admin_pb.CreateJoinTokenRequest
    ) -> admin_pb.CreateJoinTokenResponse:
        if self._issuer.ca is None:
            raise FailedPrecondition(NO_ISSUING_CA)
        ttl = request.ttl_seconds or self._default_ttl
        if ttl < 0 or request.ttl_seconds < 0:
            raise InvalidArgument(f"ttl_seconds {request.ttl_seconds} is negative")
        if ttl > self._max_ttl:
            raise InvalidArgument(
                f"ttl_seconds {request.ttl_seconds} is longer than this Manager allows "
                f"({int(self._max_ttl)} s, enroll.token_max_ttl)"
            )
        if not 0 <= request.max_uses <= MAX_TOKEN_USES:
            raise InvalidArgument(
                f"max_uses {request.max_uses} is outside 0..{MAX_TOKEN_USES} (0: unlimited)"
            )
        labels = validate.check_labels("labels", request.labels)
        description = validate.check_text("description", request.description, max_len=255)
        created_by = str(current_call().identity)
        now = self._clock()
        token_id, secret = new_token()
        ids = iter([token_id])
        row = await self._store.create_token(
            make_id=lambda: next(ids, None) or new_token()[0],
            secret_sha256=secret_digest(secret),
            now=now,
            expires_at=now + ttl,
            max_uses=request.max_uses,
            labels=labels,
            description=description,
            created_by=created_by,
        )
        log.info(
            "join token %s created by %s (ttl %d s, %s, labels %s)",
            row.id,
            created_by,
            int(ttl),
            f"{row.max_uses} use(s)" if row.max_uses else "unlimited uses",
            ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none",
        )
        return admin_pb.CreateJoinTokenResponse(
            token=f"{row.id}.{secret}",
            info=token_message(row, now),
            ca_hash=self._ca_hash(),
            enroll_address=self._enroll_address(),
        )

    async def list_join_tokens(
        self, request: admin_pb.ListJoinTokensRequest
    ) -> admin_pb.ListJoinTokensResponse:
        now = self._clock()
        tokens = [token_message(t, now) for t in await self._store.list_tokens()]
        if not request.all:
            tokens = [t for t in tokens if t.status == "active"]
        return admin_pb.ListJoinTokensResponse(tokens=tokens)

    async def revoke_join_token(
        self, request: admin_pb.RevokeJoinTokenRequest
    ) -> admin_pb.RevokeJoinTokenResponse:
        token_id = request.id.strip().split(".", 1)[0]  # a whole token works too
        if not token_id:
            raise InvalidArgument("id is required")
        if not is_token_id(token_id):
            raise InvalidArgument(f"id {token_id[:40]!r} is not a token id (6 of [a-z0-9])")
        now = self._clock()
        row = await self._store.revoke_token(token_id, now)
        if row is None:
            raise NotFound(f"join token {token_id} does not exist (or was deleted)")
        log.info("join token %s revoked by %s", token_id, current_call().identity)
        return admin_pb.RevokeJoinTokenResponse(token=token_message(row, now))

    async def list_certificates(
        self, request: admin_pb.ListCertificatesRequest
    ) -> admin_pb.ListCertificatesResponse:
        identity = f"node/{check_node_id(request.node_id)}" if request.node_id else ""
        limit = request.limit or DEFAULT_CERT_LIMIT
        if not 0 < limit <= MAX_CERT_LIMIT:
            raise InvalidArgument(f"limit {request.limit} is outside 0..{MAX_CERT_LIMIT}")
        now = self._clock()
        rows = await self._store.certificates(
            identity=identity,
            revoked_only=request.revoked,
            now=None if request.all else now,
            limit=limit,
        )
        revocations = await self._store.identity_revocations(identity=identity, limit=limit)
        # Newest first: a certificate by when it was issued (or revoked, for a foreign
        # one), an identity revocation by when it was made.
        entries = [(row.issued_at or row.revoked_at, certificate_message(row)) for row in rows]
        entries += [(rev.revoked_at, revocation_message(rev)) for rev in revocations]
        entries.sort(key=lambda entry: entry[0], reverse=True)
        return admin_pb.ListCertificatesResponse(
            certificates=[message for _, message in entries[:limit]]
        )

    async def purge_stopped_tokens(self) -> int:
        """Delete tokens that stopped working more than 7 days ago; how many."""
        now = self._clock()
        cutoff = now - KEEP_STOPPED
        tokens = await self._store.list_tokens()
        used = [t.id for t in tokens if token_status(t, now) == USED]
        last_join = await self._store.last_issued(used)
        stale = []
        for t in tokens:
            status = token_status(t, now)
            if status == "revoked":
                stopped = t.revoked_at
            elif status == USED:
                stopped = min(last_join.get(t.id, t.created_at), t.expires_at)
            elif status == "expired":
                stopped = t.expires_at
            else:
                continue
            if stopped < cutoff:
                stale.append(t.id)
        deleted = await self._store.delete_tokens(stale)
        if deleted:
            log.info("deleted %d join token(s) stopped more than 7 days ago", deleted)
        return deleted
