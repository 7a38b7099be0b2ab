"""Mutual-TLS contexts and peer identities, the same for every tier.

Identity lives in the certificate, never in request data: ``tools/certgen.py`` puts a URI
SAN ``spiffe://fleet/<role>/<name>`` in every leaf certificate, with role ``manager``,
``node`` or ``admin``. Servers read the verified peer certificate; clients verify the
server they reached holds the identity they meant to reach (role, and for the Manager
dialling a Daemon, the node's name) instead of matching host names, so an address that
is not in a certificate's SANs still works and a valid certificate of the wrong node does
not.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPIFFE_PREFIX = "spiffe://fleet/"
ROLES = frozenset({"manager", "node", "admin"})


@dataclass(frozen=True)
class Identity:
    """Who a peer is: ``role`` (manager, node, admin) and ``name`` (node id, manager name…).

    Two pseudo-roles exist for connections without a certificate: ``local`` (the agent
    Unix socket, where agents authenticate with a token) and ``insecure`` (plaintext
    mode, explicitly asked for by the operator, where nobody can be told apart).
    """

    role: str
    name: str

    def __str__(self) -> str:
        return f"{self.role}/{self.name}" if self.name else self.role

    @property
    def uri(self) -> str:
        return f"{SPIFFE_PREFIX}{self.role}/{self.name}"


INSECURE = Identity("insecure", "")
LOCAL = Identity("local", "")


@dataclass(frozen=True)
class TLSFiles:
    """Paths of a certificate, its key and the CA that verifies peers."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def __post_init__(self) -> None:
        for label, path in (("cert", self.cert_file), ("key", self.key_file), ("CA", self.ca_file)):
            if not str(path):
                raise ValueError(f"TLS {label} file is not set")

    def check_readable(self) -> None:
        """Raise ``FileNotFoundError`` naming the first missing file."""
        for label, path in (("cert", self.cert_file), ("key", self.key_file), ("CA", self.ca_file)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"TLS {label} file not found: {path}")


def identity_from_cert(cert: Mapping[str, Any] | None) -> Identity | None:
    """The Fleet identity in a verified peer certificate (``SSLObject.getpeercert()``)."""
    if not cert:
        return None
    for kind, value in cert.get("subjectAltName", ()):
        if kind != "URI" or not value.startswith(SPIFFE_PREFIX):
            continue
        role, sep, name = value[len(SPIFFE_PREFIX) :].partition("/")
        if sep and role in ROLES and name and "/" not in name:
            return Identity(role, name)
    return None


def _base_context(purpose: ssl.Purpose, files: TLSFiles) -> ssl.SSLContext:
    files.check_readable()
    proto = (
        ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT
    )
    ctx = ssl.SSLContext(proto)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(files.ca_file))
    ctx.load_cert_chain(certfile=str(files.cert_file), keyfile=str(files.key_file))
    ctx.set_alpn_protocols(["h2"])
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """A server context that requires a client certificate signed by the CA."""
    return _base_context(ssl.Purpose.CLIENT_AUTH, files)


class PeerIdentityError(ssl.SSLCertVerificationError):
    """The server's certificate is valid but names another identity than expected."""


def client_context(
    files: TLSFiles, *, expect_role: str, expect_name: str | None = None
) -> ssl.SSLContext:
    """A client context presenting our certificate and checking the server's identity.

    The handshake fails unless the server's certificate chains to the CA and carries
    ``spiffe://fleet/<expect_role>/<expect_name>`` (any name when ``expect_name`` is None).
    """
    ctx = _base_context(ssl.Purpose.SERVER_AUTH, files)
    # Identity replaces host-name matching: see the module docstring.
    ctx.check_hostname = False

    class _IdentityCheckingSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            peer = identity_from_cert(self.getpeercert())
            if (
                peer is None
                or peer.role != expect_role
                or (expect_name is not None and peer.name != expect_name)
            ):
                wanted = f"{expect_role}/{expect_name or '*'}"
                raise PeerIdentityError(f"server identity is {peer or 'none'}, expected {wanted}")

    ctx.sslobject_class = _IdentityCheckingSSLObject
    return ctx


def warn_insecure(component: str) -> None:
    """Log the one warning every tier prints when started without TLS."""
    log.warning(
        "%s running WITHOUT TLS (--insecure): any peer can call it and claim any identity; "
        "use only for local development",
        component,
    )
