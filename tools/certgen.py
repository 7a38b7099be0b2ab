"""Make the CA and certificates for mutual TLS between all Fleet tiers.

Identity scheme
---------------
Every Fleet peer (Manager, Daemon, fleetctl) authenticates with a certificate
issued by one private CA, and its identity is carried *in the certificate* as a
single URI SAN::

    spiffe://fleet/<role>/<name>        role ∈ {manager, node, admin}

Peers authorise on that URI, never on the subject, which is informational only
(CN=<name>, O=fleet, OU=<role>; CN is left out for names over 64 characters,
the X.509 limit). DNS and IP SANs exist only so TLS hostname checks pass when a
Manager or Daemon is dialled; they say nothing about who the peer is.

Extended key usages follow who dials whom: the Manager serves fleetctl and
Daemons but also dials Daemons, and a Daemon serves DaemonService but also
dials the Manager, so both get serverAuth + clientAuth; admins only dial, so
they get clientAuth alone.

Usage::

    certgen.py init DIR
    certgen.py issue {manager,node,admin} NAME --dir DIR [--san HOST_OR_IP ...] [--days N]
    certgen.py dev DIR --node NODE_ID [--node ...] [--force]

The module is importable from its file path; ``CertificateAuthority`` issues
certificates in memory for callers that need thousands of them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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
    """The Fleet CA held in memory: load or generate it once, then issue many leaves."""

    def __init__(self, *, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        """Wrap an already-parsed CA certificate and its private key."""
        self.cert = cert
        self.key = key
        # Computed once: the fast path for issuing thousands of certs reuses it.
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())

    @classmethod
    def generate(cls, *, days: int = 3650) -> CertificateAuthority:
        """Create a new self-signed EC P-256 CA valid for ``days`` days."""
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
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
            raise CertgenError(f"no CA in {dir}: run `certgen.py init {dir}` first")
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise CertgenError(f"cannot read the CA in {dir}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CertgenError(f"{key_path} is not an EC private key")
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
            raise CertgenError(f"{key_path} does not match {cert_path}")
        return cls(cert=cert, key=key)

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate as PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The CA private key as unencrypted PKCS8 PEM."""
        return _key_pem(self.key)

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
        not_before = not_before or now - _CLOCK_SKEW
        not_after = not_after or now + dt.timedelta(days=days)
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
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(subject))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(self._aki, critical=False)
            .add_extension(_ski(key), critical=False)
            .add_extension(x509.SubjectAlternativeName(general_names), critical=False)
        )
        usages = ROLE_EKUS[role] if eku is None else tuple(eku)
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # before any secret bytes land on disk
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _refuse_overwrite(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise CertgenError(f"{path} already exists: use --force to replace it")


def _write_pair(dir: Path, stem: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    cert_path, key_path = dir / f"{stem}.crt", dir / f"{stem}.key"
    # Key first: an existing cert then always has its key beside it.
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert_pem, 0o644)
    return cert_path, key_path


def init_ca(dir: Path, *, force: bool = False, days: int = 3650) -> None:
    """Create ``dir`` (mode 0700) and a new CA in it as ``ca.crt``/``ca.key``."""
    if not force:
        _refuse_overwrite(dir / CA_CERT, dir / CA_KEY)
    if not dir.exists():
        dir.mkdir(mode=0o700, parents=True)
        dir.chmod(0o700)  # mkdir's mode is filtered by the umask
    ca = CertificateAuthority.generate(days=days)
    _write_pair(dir, "ca", ca.cert_pem, ca.key_pem)


def issue(
    dir: Path,
    role: str,
    name: str,
    *,
    sans: Sequence[str] = (),
    days: int = 365,
    force: bool = False,
    ca: CertificateAuthority | None = None,
) -> tuple[Path, Path]:
    """Issue ``dir/NAME.crt``/``dir/NAME.key``; return their paths.

    Signs with ``ca`` if given, else with the CA loaded from ``dir``.
    """
    # Check the arguments before the CA so a typo is reported as such even without one.
    _validate_role(role)
    validate_name(name)
    for value in sans:
        _san(value)
    if not force:
        _refuse_overwrite(dir / f"{name}.crt", dir / f"{name}.key")
    ca = ca or CertificateAuthority.load(dir)
    cert_pem, key_pem = ca.issue(role, name, sans, days)
    return _write_pair(dir, name, cert_pem, key_pem)


def _is_current(ca: CertificateAuthority, cert_path: Path, role: str, name: str) -> bool:
    """Whether an existing leaf was issued by ``ca`` to ``name`` as ``role``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cert.verify_directly_issued_by(ca.cert)
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return spiffe_id(role, name) in uris.get_values_for_type(x509.UniformResourceIdentifier)


def dev(
    dir: Path, nodes: Sequence[str], *, force: bool = False, echo: Callable[[str], None] = print
) -> None:
    """Make everything for a local run: CA, ``manager``, ``admin`` and one cert per node.

    An existing CA is reused; existing leaves are kept unless ``force``, provided
    they were issued by that CA for the same identity.
    """
    node_ids = list(dict.fromkeys(validate_name(n) for n in nodes))
    for node in node_ids:
        if node in ("manager", "admin"):
            raise UsageError(f"invalid node id {node!r}: clashes with the {node} cert's files")
    if (dir / CA_CERT).exists() and (dir / CA_KEY).exists():
        echo(f"{dir / CA_CERT} exists, kept")
    else:
        init_ca(dir)
        echo(f"wrote {dir / CA_CERT}")
    ca = CertificateAuthority.load(dir)
    wanted: list[tuple[str, str, Sequence[str]]] = [("manager", "manager", DEV_SANS)]
    wanted += [("node", node, DEV_SANS) for node in node_ids]
    wanted.append(("admin", "admin", ()))
    for role, name, sans in wanted:
        cert_path, key_path = dir / f"{name}.crt", dir / f"{name}.key"
        if not force and (cert_path.exists() or key_path.exists()):
            if cert_path.exists() and key_path.exists() and _is_current(ca, cert_path, role, name):
                echo(f"{cert_path} exists, kept")
                continue
            raise CertgenError(
                f"{cert_path} is incomplete, stale or not a {role} cert for {name!r}: "
                "use --force to replace it"
            )
        issue(dir, role, name, sans=sans, force=True, ca=ca)
        echo(f"wrote {cert_path}")


def _days(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of days, got {text!r}")
    return int(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, like every other certgen error, instead of argparse's usage dump.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="certgen.py", description="Fleet mutual-TLS certificates.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="create a CA in DIR")
    p_init.add_argument("dir", type=Path, metavar="DIR")
    p_init.add_argument("--days", type=_days, default=3650)
    p_issue = sub.add_parser("issue", help="issue a cert from the CA in DIR")
    p_issue.add_argument("role", choices=list(ROLE_EKUS))
    p_issue.add_argument("name", metavar="NAME")
    p_issue.add_argument("--dir", type=Path, required=True, metavar="DIR")
    p_issue.add_argument("--san", action="append", default=[], metavar="HOST_OR_IP")
    p_issue.add_argument("--days", type=_days, default=365)
    p_dev = sub.add_parser("dev", help="CA, manager, admin and node certs for a local run")
    p_dev.add_argument("dir", type=Path, metavar="DIR")
    p_dev.add_argument("--node", action="append", required=True, metavar="NODE_ID")
    for p, what in ((p_init, "the CA"), (p_issue, "the cert and key"), (p_dev, "leaf certs")):
        p.add_argument("--force", action="store_true", help=f"replace existing {what}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "init":
            init_ca(args.dir, force=args.force, days=args.days)
            print(f"wrote {args.dir / CA_CERT} and {args.dir / CA_KEY}")
        elif args.command == "issue":
            paths = issue(
                args.dir, args.role, args.name, sans=args.san, days=args.days, force=args.force
            )
            print(f"wrote {paths[0]} and {paths[1]}")
        else:
            dev(args.dir, args.node, force=args.force)
    except (CertgenError, OSError) as exc:
        print(f"certgen.py: error: {exc}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, CertgenError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
