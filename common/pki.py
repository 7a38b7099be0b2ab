"""The Fleet PKI in memory: identities, the CA, leaf issuance, CSRs and fingerprints.

Identity scheme
---------------
Every Fleet peer (Manager, Daemon, fleetctl) authenticates with a certificate chaining to
the fleet root CA, and its identity is carried *in the certificate* as a single URI SAN::

    spiffe://fleet/<role>/<name>        role ∈ {manager, node, admin}

Peers authorise on that URI, never on the subject, which is informational only
(CN=<name>, O=fleet, OU=<role>; CN is left out for names over 64 characters, the X.509
limit). DNS and IP SANs exist only so TLS hostname checks pass when a Manager or Daemon
is dialled; they say nothing about who the peer is.

Extended key usages follow who dials whom: the Manager serves fleetctl and Daemons but
also dials Daemons, and a Daemon serves DaemonService but also dials the Manager, so both
get serverAuth + clientAuth; admins only dial, so they get clientAuth alone.

Two kinds of CA sign leaves: the **root** (made once with ``certgen init``, kept offline)
signs manager and admin certificates, and may sign node certificates; an **issuing CA**
(``certgen intermediate``, an intermediate under the root) lets a Manager sign node
certificates for hosts that join (:class:`IssuingCA`). Servers accept the manager and
admin roles only from certificates the root signed directly (``common.tls``), so a
Manager's issuing key can mint node identities and nothing more.

:func:`ca_hash` is the root's fingerprint a joining host pins (``--ca-hash``):
``sha256:`` and the hex SHA-256 of its SubjectPublicKeyInfo, as kubeadm's
``--discovery-token-ca-cert-hash``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .tls import SPIFFE_PREFIX, Identity

TRUST_DOMAIN = "fleet"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
DEV_SANS = ("localhost", "127.0.0.1", "::1")
ROLE_EKUS: Mapping[str, tuple[x509.ObjectIdentifier, ...]] = MappingProxyType(
    {
        "manager": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        "node": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
        "admin": (ExtendedKeyUsageOID.CLIENT_AUTH,),
    }
)
# Backdate notBefore so a peer whose clock runs a little behind still accepts a fresh cert.
_CLOCK_SKEW = dt.timedelta(minutes=5)
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DNS_RE = re.compile(r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")
_CN_MAX = 64


class CertgenError(Exception):
    """A problem the user can fix; the CLI prints it as one line."""

    exit_code = 1


class UsageError(CertgenError):
    """A bad name, role or SAN on the command line."""

    exit_code = 2


def spiffe_id(role: str, name: str) -> str:
    """Return the URI SAN that identifies ``name`` acting as ``role``."""
    return f"spiffe://{TRUST_DOMAIN}/{role}/{name}"


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid manager/node/admin name, else raise UsageError."""
    if not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid name {name!r}: use 1-128 characters of [A-Za-z0-9._-], "
            "not starting with '.' or '-'"
        )
    if name == "ca":
        # NAME.crt/NAME.key would clobber the CA's own files.
        raise UsageError("invalid name 'ca': reserved for the CA's files")
    return name


def _validate_role(role: str) -> None:
    if role not in ROLE_EKUS:
        raise UsageError(f"invalid role {role!r}: expected one of {', '.join(ROLE_EKUS)}")


def _san(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _DNS_RE.fullmatch(value) or value.endswith("."):
        raise UsageError(f"invalid --san {value!r}: expected a host name or IP address")
    return x509.DNSName(value)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """CA keys only sign certs and CRLs; EC leaf keys sign handshakes and do ECDH."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ski(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


class CertificateAuthority:
    """A Fleet CA held in memory (the root, or an issuing intermediate): load or generate
    it once, then issue many leaves."""

    def __init__(self, *, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        """Wrap an already-parsed CA certificate and its private key."""
        self.cert = cert
        self.key = key
        # Computed once: the fast path for issuing thousands of certs reuses it.
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())

    @classmethod
    def generate(cls, *, days: int = 3650) -> CertificateAuthority:
        """Create a new self-signed EC P-256 root valid for ``days`` days.

        Its path length is 1: it may sign one level of issuing CA (``intermediate``) whose
        own path length is 0 (it signs leaves only).
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fleet CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(_ski(key), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert=cert, key=key)

    @classmethod
    def load(cls, dir: Path) -> CertificateAuthority:
        """Load ``dir/ca.crt`` and ``dir/ca.key``; raise CertgenError if absent or unusable."""
        cert_path, key_path = dir / CA_CERT, dir / CA_KEY
        if not cert_path.exists() or not key_path.exists():
            raise CertgenError(f"no CA in {dir}: run `certgen init {dir}` first")
        return cls.load_files(cert_path, key_path)

    @classmethod
    def load_files(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        """Load a CA certificate (the first of the file) and its key from two PEM files."""
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except OSError as exc:
            raise CertgenError(f"cannot read the CA: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise CertgenError(f"cannot read the CA in {cert_path.parent}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertgenError(f"{key_path} is not an EC private key")
        if _spki(key.public_key()) != _spki(cert.public_key()):
            raise CertgenError(f"{key_path} does not match {cert_path}")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CertgenError(f"{cert_path} is not a CA certificate")
        return cls(cert=cert, key=key)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate as PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The CA private key as unencrypted PKCS8 PEM."""
        return _key_pem(self.key)

    @property
    def is_root(self) -> bool:
        """Self-signed (the fleet root) rather than an intermediate."""
        return self.cert.issuer == self.cert.subject

    @property
    def path_length(self) -> int | None:
        return self.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length

    def intermediate(self, name: str, *, days: int = 365) -> tuple[bytes, bytes]:
        """An issuing CA under this root for ``name`` (e.g. the Manager that holds it);
        return ``(cert_pem, key_pem)``. It signs leaves only (path length 0)."""
        validate_name(name)
        if not self.is_root:
            raise CertgenError("an issuing CA is made by the root CA, not by another issuing CA")
        if self.path_length == 0:
            raise CertgenError(
                "this root CA was made with path length 0 (before Fleet had issuing CAs) and "
                "cannot sign one: make a new root with `certgen init`, or let the Manager sign "
                "with the root itself (docs/security.md)"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        not_after = min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"Fleet issuing CA {name}"[:_CN_MAX]),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(self._aki, critical=False)
            .add_extension(_ski(key), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def sign_public_key(
        self,
        role: str,
        name: str,
        public_key: ec.EllipticCurvePublicKey,
        *,
        not_before: dt.datetime,
        not_after: dt.datetime,
        sans: Sequence[str] = (),
        eku: Sequence[x509.ObjectIdentifier] | None = None,
    ) -> x509.Certificate:
        """A leaf for ``public_key`` as ``role``/``name`` (the key may come from a CSR)."""
        _validate_role(role)
        validate_name(name)
        general_names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(spiffe_id(role, name))
        ]
        for value in dict.fromkeys(sans):  # dedupe, keep order
            general_names.append(_san(value))
        subject = [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, TRUST_DOMAIN),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
        ]
        if len(name) <= _CN_MAX:
            subject.insert(0, x509.NameAttribute(NameOID.COMMON_NAME, name))
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(self._aki, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        )
        usages = ROLE_EKUS[role] if eku is None else tuple(eku)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue(
        self,
        role: str,
        name: str,
        sans: Sequence[str] = (),
        days: int = 365,
        *,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        eku: Sequence[x509.ObjectIdentifier] | None = None,
    ) -> tuple[bytes, bytes]:
        """Issue a leaf for ``name`` acting as ``role``; return ``(cert_pem, key_pem)``.

        ``not_before``/``not_after`` override the validity window (for expired or
        not-yet-valid test certs); ``eku`` overrides the role's extended key usages,
        and an empty sequence leaves the extension out.
        """
        _validate_role(role)
        validate_name(name)
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.sign_public_key(
            role,
            name,
            key.public_key(),
            not_before=not_before or now - _CLOCK_SKEW,
            not_after=not_after or now + dt.timedelta(days=days),
            sans=sans,
            eku=eku,
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ca_hash(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the certificate's SubjectPublicKeyInfo (what ``--ca-hash`` pins)."""
    return "sha256:" + hashlib.sha256(_spki(cert.public_key())).hexdigest()


def parse_ca_hash(text: str) -> str:
    """Normalise a ``--ca-hash`` (``sha256:`` + 64 hex digits, any case); ValueError if not."""
    algo, sep, digest = text.strip().partition(":")
    digest = digest.lower()
    if sep != ":" or algo.lower() != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(
            f"invalid CA hash {text!r}: expected sha256: and 64 hex digits, as printed by "
            "`fleetctl tokens create` or `certgen hash`"
        )
    return f"sha256:{digest}"


def load_pem_certs(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (ValueError if there is none)."""
    return x509.load_pem_x509_certificates(data)


def make_csr(name: str) -> tuple[bytes, bytes]:
    """A new EC P-256 key and a CSR for ``name``; return ``(key_pem, csr_pem)``. The CSR's
    subject is informational: the signer decides the identity."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:_CN_MAX] or "node")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


MAX_CSR_BYTES = 16 * 1024
_CSR_CURVES = (ec.SECP256R1, ec.SECP384R1)


def load_csr(pem: bytes | str) -> ec.EllipticCurvePublicKey:
    """The public key of a valid CSR; ``ValueError`` saying what is wrong otherwise."""
    data = pem.encode() if isinstance(pem, str) else pem
    if not data:
        raise ValueError("csr_pem is empty")
    if len(data) > MAX_CSR_BYTES:
        raise ValueError(f"csr_pem is {len(data)} bytes, more than {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise ValueError(f"csr_pem is not a PEM certificate request: {exc}") from None
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _CSR_CURVES):
        raise ValueError("csr_pem: the key must be EC P-256 or P-384")
    if not csr.is_signature_valid:
        raise ValueError("csr_pem: its signature does not match its key")
    return key


def normalize_serial(text: str | int) -> str:
    """A serial as lower-case hex without leading zeros (``"1A:2b"`` → ``"1a2b"``)."""
    if isinstance(text, int):
        value = text
    else:
        cleaned = text.strip().replace(":", "").lower()
        cleaned = cleaned.removeprefix("0x")
        if not re.fullmatch(r"[0-9a-f]{1,64}", cleaned):
            raise ValueError(f"invalid serial {text!r}: expected hex digits (colons allowed)")
        value = int(cleaned, 16)
    return format(value, "x")


class IssuingCA:
    """The CA a Manager signs node certificates with, and the chain it hands out.

    ``ca`` is the root itself or an intermediate the root signed; ``roots`` are the fleet
    root certificate(s) (the Manager's ``ca_file``) that peers trust.
    """

    def __init__(self, ca: CertificateAuthority, *, roots: Sequence[x509.Certificate]) -> None:
        self.ca = ca
        self.roots = list(roots)
        if not any(issued_by(ca.cert, root) for root in self.roots):
            raise CertgenError(
                "the issuing CA was not signed by the fleet root CA in the Manager's ca_file"
            )
        # What a peer needs besides its root: the intermediate (nothing for the root).
        self.chain_pem = b"" if ca.is_root else ca.cert_pem
        self.roots_pem = b"".join(r.public_bytes(serialization.Encoding.PEM) for r in self.roots)
        self.not_after = ca.cert.not_valid_after_utc

    @classmethod
    def load(
        cls, cert_path: Path, key_path: Path, *, roots: Sequence[x509.Certificate]
    ) -> IssuingCA:
        return cls(CertificateAuthority.load_files(cert_path, key_path), roots=roots)

    def sign_node(
        self,
        name: str,
        public_key: ec.EllipticCurvePublicKey,
        *,
        lifetime: dt.timedelta,
        not_before_after: dt.datetime | None = None,
        now: dt.datetime | None = None,
    ) -> tuple[x509.Certificate, bytes]:
        """A node certificate for ``name``; return it and the PEM chain to hand out.

        ``not_before_after``: the certificate's notBefore is later than this (an identity
        revocation covers certificates with notBefore at or before its time, so a node
        that re-joins after removal gets one it does not cover). It never outlives the CA.
        """
        now = now or dt.datetime.now(dt.UTC)
        not_before = now - _CLOCK_SKEW
        if not_before_after is not None and not_before <= not_before_after:
            not_before = not_before_after + dt.timedelta(seconds=1)
        not_after = min(now + lifetime, self.not_after)
        cert = self.ca.sign_public_key(
            "node", name, public_key, not_before=not_before, not_after=not_after
        )
        return cert, cert.public_bytes(serialization.Encoding.PEM) + self.chain_pem


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` directly (signature and issuer name)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def cert_identity(cert: x509.Certificate) -> Identity | None:
    """The ``spiffe://fleet/<role>/<name>`` identity in a certificate's URI SAN (as
    :func:`common.tls.identity_from_cert` reads it from a handshake's peer dict)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(SPIFFE_PREFIX):
            role, sep, name = uri[len(SPIFFE_PREFIX) :].partition("/")
            if sep and name and "/" not in name:
                return Identity(role, name)
    return None
