"""Revoked certificates, checked the same way by every Fleet server.

A revocation names a certificate by **serial**, or every certificate of an **identity**
(``node/web-1``) whose notBefore is at or before a moment — how ``fleetctl nodes remove``
revokes a node's certificates, the ones certgen made included, while a certificate the
Manager issues when the node joins again starts after that moment and stays valid.

The Manager keeps revocations in its database and serves them to Daemons
(``ManagerService.GetRevocations``, fetched when ``HeartbeatResponse.revocations_version``
changes). Each server holds one :class:`RevocationList`; :class:`common.rpc.GuardedService`
checks the caller's certificate against it on every call (``UNAUTHENTICATED``) and closes
the open connections of a certificate as soon as the list revokes it.

:class:`PeerCertificate` is what a server knows of a verified peer: parsed once per
connection from the DER the handshake gave.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cryptography import x509

from .pki import cert_identity, normalize_serial
from .tls import Identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Revocation:
    """One revocation: ``serial`` (normalised hex) or ``identity`` + ``not_before_max``."""

    serial: str = ""
    identity: str = ""
    not_before_max: float = 0.0
    revoked_at: float = 0.0
    reason: str = ""

    def describe(self) -> str:
        what = f"serial {self.serial}" if self.serial else f"every certificate of {self.identity}"
        return f"{what} revoked" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True)
class PeerCertificate:
    """A verified peer certificate's facts a server decides on."""

    serial: str
    identity: Identity | None
    not_before: float
    not_after: float
    # Signed directly by one of the fleet roots (not by a Manager's issuing CA).
    by_root: bool

    @classmethod
    def from_der(cls, der: bytes, *, root_subjects: Sequence[x509.Name] = ()) -> PeerCertificate:
        """Parse ``der``. ``by_root`` compares the issuer with ``root_subjects``: the
        handshake already verified the chain, so the issuer names which CA signed it."""
        cert = x509.load_der_x509_certificate(der)
        return cls(
            serial=normalize_serial(cert.serial_number),
            identity=cert_identity(cert),
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            by_root=cert.issuer in root_subjects,
        )


class RevocationList:
    """The revocations a server enforces, with a version to tell whether it changed.

    ``subscribe`` callbacks run (synchronously, on the caller's thread) after every change.
    """

    def __init__(self) -> None:
        self._version = 0
        self._serials: dict[str, Revocation] = {}
        self._identities: dict[str, Revocation] = {}  # the latest moment per identity
        self._subscribers: list[Callable[[], object]] = []
        # Connections closed by subscribers because of changes (a running total).
        self.closed = 0

    @property
    def version(self) -> int:
        return self._version

    def __len__(self) -> int:
        return len(self._serials) + len(self._identities)

    def subscribe(self, callback: Callable[[], object]) -> None:
        self._subscribers.append(callback)

    def entries(self) -> list[Revocation]:
        return [*self._serials.values(), *self._identities.values()]

    def replace(self, version: int, entries: Iterable[Revocation]) -> bool:
        """Hold exactly ``entries`` as ``version``; True (and subscribers told) if that
        changed anything."""
        serials: dict[str, Revocation] = {}
        identities: dict[str, Revocation] = {}
        for entry in entries:
            if entry.serial:
                serials[entry.serial] = entry
            elif entry.identity:
                held = identities.get(entry.identity)
                if held is None or entry.not_before_max > held.not_before_max:
                    identities[entry.identity] = entry
        changed = serials != self._serials or identities != self._identities
        self._version = version
        self._serials, self._identities = serials, identities
        if changed:
            for callback in list(self._subscribers):
                try:
                    callback()
                except Exception:  # one broken subscriber must not stop the others
                    log.exception("revocation subscriber failed")
        return changed

    def check(self, cert: PeerCertificate) -> Revocation | None:
        """The revocation covering ``cert``, or None."""
        found = self._serials.get(cert.serial)
        if found is not None:
            return found
        if cert.identity is not None:
            rule = self._identities.get(f"{cert.identity.role}/{cert.identity.name}")
            if rule is not None and cert.not_before <= rule.not_before_max:
                return rule
        return None

    def to_json(self) -> dict[str, Any]:
        return {"version": self._version, "revocations": [asdict(e) for e in self.entries()]}

    def load_json(self, data: Mapping[str, Any]) -> None:
        """Replace the content with a :meth:`to_json` document (``ValueError`` if malformed)."""
        try:
            version = int(data["version"])
            entries = [
                Revocation(
                    serial=str(e.get("serial", "")),
                    identity=str(e.get("identity", "")),
                    not_before_max=float(e.get("not_before_max", 0)),
                    revoked_at=float(e.get("revoked_at", 0)),
                    reason=str(e.get("reason", "")),
                )
                for e in data["revocations"]
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed revocation list: {exc}") from None
        self.replace(version, entries)
