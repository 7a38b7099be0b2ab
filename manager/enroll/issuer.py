"""Signing node certificates: the issuing CA, joins with a token, renewals.

:func:`load_issuing_ca` reads ``enroll.ca_cert``/``enroll.ca_key`` at start (a bad one
stops the Manager with one line). :class:`NodeIssuer` holds it and does the work of
``EnrollService.Join`` and ``ManagerService.RenewCertificate``: it checks, signs, and
records what it issued; the gRPC edges only translate. Refusals are typed
(:class:`JoinRefused` and ``common.errors``) so the edge can log and rate-limit them.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from grpclib.const import Status

from common import validate
from common.errors import (
    AlreadyExists,
    FailedPrecondition,
    FleetError,
    InvalidArgument,
)
from common.pki import CertgenError, IssuingCA, load_csr, load_pem_certs, validate_name

from ..config import ManagerConfig
from ..store.enroll import EnrollStore, IssuedCertificate
from .labels import EnrollmentLabels
from .tokens import MAX_TOKEN_NODES, parse_token, secret_matches, token_status

log = logging.getLogger(__name__)

NO_ISSUING_CA = (
    "this Manager has no issuing CA: set enroll.ca_cert and enroll.ca_key (docs/security.md)"
)


class IssuingCAError(FleetError):
    """The configured issuing CA cannot be used (a start-up error)."""

    status = Status.FAILED_PRECONDITION


class JoinRefused(FleetError):
    """A join refused for its token: ``status`` says how (UNAUTHENTICATED for a token
    that does not exist or whose secret is wrong, PERMISSION_DENIED for one that no
    longer works)."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status


def load_issuing_ca(config: ManagerConfig) -> IssuingCA | None:
    """The issuing CA of ``enroll.ca_cert``/``enroll.ca_key`` under the fleet root(s) of
    ``grpc.tls.ca_file``; None when none is configured or TLS is off."""
    if not config.enroll_ca_cert or not config.tls_enabled:
        return None
    try:
        roots = load_pem_certs(Path(config.ca_file).read_bytes())
    except OSError as exc:
        raise IssuingCAError(f"cannot read grpc.tls.ca_file {config.ca_file}: {exc}") from None
    except ValueError as exc:
        raise IssuingCAError(f"grpc.tls.ca_file {config.ca_file}: {exc}") from None
    try:
        ca = IssuingCA.load(Path(config.enroll_ca_cert), Path(config.enroll_ca_key), roots=roots)
    except CertgenError as exc:
        raise IssuingCAError(
            f"enroll.ca_cert {config.enroll_ca_cert} / enroll.ca_key {config.enroll_ca_key}: {exc}"
        ) from None
    now = dt.datetime.now(dt.UTC)
    if ca.not_after <= now or ca.ca.cert.not_valid_before_utc > now:
        raise IssuingCAError(
            f"enroll.ca_cert {config.enroll_ca_cert} is not valid now (valid "
            f"{ca.ca.cert.not_valid_before_utc:%Y-%m-%d} to {ca.not_after:%Y-%m-%d})"
        )
    return ca


def describe_ca(ca: IssuingCA | None, config: ManagerConfig) -> str:
    """The start-up log line's words for the signing mode."""
    if ca is None:
        why = "TLS is off" if not config.tls_enabled else "enroll.ca_cert is not set"
        return f"no issuing CA ({why}): joins and renewals refused"
    kind = "ROOT: see docs/security.md" if ca.ca.is_root else "intermediate"
    subject = ca.ca.cert.subject.rfc4514_string()
    return (
        f"node certificates signed by issuing CA {subject} ({kind}), valid until "
        f"{ca.not_after:%Y-%m-%d}"
    )


@dataclass(frozen=True)
class Issued:
    """A signed node certificate and what the node needs with it."""

    node_id: str
    cert_pem: bytes  # the certificate, then the intermediate if any
    ca_pem: bytes  # the fleet root(s)
    serial: str
    not_after: int
    labels: dict[str, str] = field(default_factory=dict)


class NodeIssuer:
    """Checks joins and renewals, signs with the issuing CA, records what it issued."""

    def __init__(
        self,
        *,
        store: EnrollStore,
        ca: IssuingCA | None,
        lifetime: float,
        labels: EnrollmentLabels,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.ca = ca
        self._lifetime = dt.timedelta(seconds=lifetime)
        self._labels = labels
        self._clock = clock

    def _require_ca(self) -> IssuingCA:
        if self.ca is None:
            raise FailedPrecondition(NO_ISSUING_CA)
        return self.ca

    async def join(self, *, token: str, node_id: str, csr_pem: str, hostname: str) -> Issued:
        """Trade a join token and a CSR for a certificate of ``node/<node_id>``."""
        ca = self._require_ca()
        check_node_id(node_id)
        validate.check_text("hostname", hostname, max_len=255)
        public_key = _csr_key(csr_pem)
        parsed = parse_token(token)
        if parsed is None:
            raise JoinRefused(Status.UNAUTHENTICATED, "invalid join token")
        token_id, secret = parsed
        row = await self._store.get_token(token_id)
        if row is None or not secret_matches(secret, row.secret_sha256):
            raise JoinRefused(Status.UNAUTHENTICATED, "invalid join token")
        now = self._clock()
        self._check_usable(token_id, token_status(row, now))
        if await self._store.node_registered(node_id):
            raise AlreadyExists(
                f"node {node_id} is already registered: remove it with `fleetctl nodes remove "
                f"{node_id}` first, or join with another --node-id"
            )
        live = await self._store.live_certificate(node_id, now)
        if live is not None:
            raise AlreadyExists(
                f"node {node_id} has already joined (certificate {live[0]}, its Daemon not "
                f"registered yet): remove it with `fleetctl nodes remove {node_id}` first, or "
                "join with another --node-id"
            )
        labels = dict(row.labels or {})
        cert, chain = await self._sign(ca, node_id, public_key, now)
        issued = _record(cert, node_id, now, "join", token_id)
        if not await self._store.record_join(
            token_id=token_id, node_id=node_id, cert=issued, labels=labels,
            max_nodes=MAX_TOKEN_NODES,
        ):  # fmt: skip
            # Spent, expired or revoked since it was read (another join took its last use).
            again = await self._store.get_token(token_id)
            self._check_usable(token_id, token_status(again, now) if again else "revoked")
            raise JoinRefused(Status.PERMISSION_DENIED, f"join token {token_id} cannot be used")
        self._labels.joined(node_id)
        return Issued(node_id, chain, ca.roots_pem, issued.serial, int(issued.not_after), labels)

    @staticmethod
    def _check_usable(token_id: str, status: str) -> None:
        reasons = {
            "expired": "has expired",
            "used": "has no uses left",
            "revoked": "was revoked",
        }
        if status in reasons:
            raise JoinRefused(
                Status.PERMISSION_DENIED,
                f"join token {token_id} {reasons[status]}: ask an admin for a new one "
                "(`fleetctl tokens create`)",
            )

    async def renew(self, *, node_id: str, csr_pem: str) -> Issued:
        """A new certificate of ``node/<node_id>`` (the caller's own identity) for the
        CSR's key."""
        ca = self._require_ca()
        public_key = _csr_key(csr_pem)
        now = self._clock()
        cert, chain = await self._sign(ca, node_id, public_key, now)
        issued = _record(cert, node_id, now, "renew", "")
        await self._store.record_renewal(issued)
        return Issued(node_id, chain, ca.roots_pem, issued.serial, int(issued.not_after))

    async def _sign(
        self, ca: IssuingCA, node_id: str, public_key: object, now: float
    ) -> tuple[x509.Certificate, bytes]:
        # A node removed (identity revocation) and joining again gets a certificate
        # that revocation does not cover: notBefore after its not_before_max.
        revoked_up_to = await self._store.revoked_up_to(f"node/{node_id}")
        after = (
            dt.datetime.fromtimestamp(revoked_up_to, dt.UTC) if revoked_up_to is not None else None
        )
        return ca.sign_node(
            node_id,
            public_key,  # type: ignore[arg-type]
            lifetime=self._lifetime,
            not_before_after=after,
            now=dt.datetime.fromtimestamp(now, dt.UTC),
        )


def check_node_id(node_id: str) -> str:
    """A node id a certificate can carry (common.pki's name rules, and the API's)."""
    if not node_id:
        raise InvalidArgument("node_id is required")
    try:
        validate_name(node_id)
    except CertgenError as exc:
        raise InvalidArgument(f"node_id: {exc}") from None
    return validate.check_id("node_id", node_id)


def _csr_key(csr_pem: str) -> object:
    try:
        return load_csr(csr_pem)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None


def _record(
    cert: x509.Certificate, node_id: str, now: float, how: str, token_id: str
) -> IssuedCertificate:
    return IssuedCertificate(
        serial=format(cert.serial_number, "x"),
        identity=f"node/{node_id}",
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
        issued_at=now,
        issued_by=how,
        token_id=token_id,
    )


def merge_labels(reported: Mapping[str, str], enrolled: Mapping[str, str] | None) -> dict[str, str]:
    """The labels a node is stored with: its join labels over what its Daemon reports."""
    if not enrolled:
        return dict(reported)
    return {**reported, **enrolled}
