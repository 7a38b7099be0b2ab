"""Signing spec revisions with the operator's admin key (docs/specs.md).

fleetctl signs with the certificate and key it already connects with (``--cert`` /
``--key``); the certificate travels with the signature (``signer_cert``) so a Daemon can
check it against the fleet CA. The signing itself is ``common.specdoc.sign`` — the one
implementation the Manager and the Daemons verify against — and every signature is
verified here too, with the CA fleetctl trusts, before it is sent: what a Daemon would
refuse is a usage error on the operator's screen, not a ``REFUSED`` on every host.

Imported only by the commands that sign (``cryptography`` is not cheap to load).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import usage
from .settings import FIELDS, Settings

if TYPE_CHECKING:
    from cryptography import x509

    from common.specdoc import PrivateKey
    from schema import daemon_pb2

ROLLBACK_VALIDITY_SECONDS = 24 * 3600


@dataclass(frozen=True)
class Signer:
    """An admin's key and certificate, ready to sign spec documents."""

    key: PrivateKey
    cert_pem: bytes
    identity: str  # "admin/alice"
    cert_file: Path
    key_file: Path
    ca_certs: tuple[x509.Certificate, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer:
        """The signer of ``settings``' cert and key files (also with ``--insecure``)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from common.specdoc import SpecError, cert_identity, load_ca_certs, load_signing_key

        missing = [name for name in ("cert", "key") if getattr(settings, name) is None]
        if missing:
            hints = ", ".join(f"{FIELDS[m][0]} / {FIELDS[m][1]}" for m in missing)
            raise usage(
                f"signing a spec needs your admin certificate and key: set {hints} "
                "(see 'fleetctl config show')"
            )
        assert settings.cert is not None and settings.key is not None
        for name, path in (("cert", settings.cert), ("key", settings.key)):
            if not path.is_file():
                raise usage(f"{name} file not found: {path} (from {settings.sources.get(name)})")
        try:
            cert_pem = settings.cert.read_bytes()
            cert = x509.load_pem_x509_certificate(cert_pem)
        except (OSError, ValueError) as exc:
            raise usage(f"cannot load the certificate {settings.cert}: {exc}") from None
        identity = cert_identity(cert)
        if identity is None or identity.role != "admin":
            raise usage(
                f"certificate {settings.cert} is {identity or 'not a Fleet certificate'}, not "
                "an admin: specs are signed with an admin certificate (check --cert/--key)"
            )
        try:
            key = load_signing_key(settings.key)
        except SpecError as exc:
            raise usage(str(exc)) from None

        def public(k: Any) -> bytes:
            return bytes(
                k.public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )

        if public(key.public_key()) != public(cert.public_key()):
            raise usage(
                f"key {settings.key} does not belong to certificate {settings.cert} "
                "(check --cert/--key)"
            )
        ca_certs: list[x509.Certificate] = []
        if settings.ca is not None and settings.ca.is_file():
            try:
                ca_certs = load_ca_certs(settings.ca)
            except SpecError:
                ca_certs = []  # the connection reports a bad CA file in its own words
        return cls(
            key=key,
            cert_pem=cert_pem,
            identity=str(identity),
            cert_file=settings.cert,
            key_file=settings.key,
            ca_certs=tuple(ca_certs),
        )

    def sign(
        self,
        document: Mapping[str, Any],
        *,
        revision: int,
        signed_at: int,
        expires_at: int = 0,
        rollback_of: int = 0,
    ) -> daemon_pb2.SignedSpec:
        """``document`` (kind, name, target, agents) signed as ``revision``."""
        from common.specdoc import SpecError, sign, verify
        from schema import daemon_pb2

        full = {
            **document,
            "revision": revision,
            "signed_at": signed_at,
            "expires_at": expires_at,
            "rollback_of": rollback_of,
        }
        try:
            payload, signature = sign(full, self.key)
        except SpecError as exc:
            raise usage(f"cannot sign spec {document.get('name')!r}: {exc}") from None
        signed = daemon_pb2.SignedSpec(
            payload=payload, signature=signature, signer_cert=self.cert_pem
        )
        if self.ca_certs:
            try:
                verify(signed, ca_certs=self.ca_certs, now=signed_at)
            except SpecError as exc:
                raise usage(
                    f"the Daemons would refuse a spec signed with {self.cert_file}: {exc} "
                    "(check --cert/--key/--ca)"
                ) from None
        return signed
