"""``certgen`` (``fleet-certgen`` once installed, ``tools/certgen.py`` in a checkout): make
the fleet's CA and the certificates for mutual TLS between all Fleet tiers.

Usage::

    certgen init DIR                       the root CA (DIR/ca.crt, DIR/ca.key); prints its hash
    certgen issue {manager,node,admin} NAME --dir DIR [--san HOST_OR_IP ...] [--days N]
    certgen intermediate NAME --dir DIR [--days N]   an issuing CA for a Manager (joins)
    certgen hash DIR_OR_CA_FILE            the root's sha256 hash for `fleet-daemon join`
    certgen dev DIR --node NODE_ID [--node ...] [--force]

The identities and the CA live in :mod:`common.pki` (docs there); this module writes
files and parses the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from .files import write_file_atomic
from .pki import (
    CA_CERT,
    CA_KEY,
    DEV_SANS,
    ROLE_EKUS,
    CertgenError,
    CertificateAuthority,
    UsageError,
    _san,
    _validate_role,
    ca_hash,
    spiffe_id,
    validate_name,
)

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "DEV_SANS",
    "ROLE_EKUS",
    "CertgenError",
    "CertificateAuthority",
    "UsageError",
    "ca_hash",
    "dev",
    "init_ca",
    "intermediate",
    "issue",
    "main",
    "root_hash",
    "spiffe_id",
    "validate_name",
]


def _refuse_overwrite(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise CertgenError(f"{path} already exists: use --force to replace it")


def _write_pair(dir: Path, stem: str, cert_pem: bytes, key_pem: bytes) -> tuple[Path, Path]:
    cert_path, key_path = dir / f"{stem}.crt", dir / f"{stem}.key"
    # Key first: an existing cert then always has its key beside it.
    write_file_atomic(key_path, key_pem, 0o600)
    write_file_atomic(cert_path, cert_pem, 0o644)
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


def intermediate(
    dir: Path, name: str, *, days: int = 365, force: bool = False
) -> tuple[Path, Path]:
    """Issue ``dir/NAME.crt``/``dir/NAME.key``: an issuing CA signed by the root in ``dir``,
    for a Manager to sign joining nodes' certificates with (``enroll.ca_cert``/``ca_key``)."""
    validate_name(name)
    if not force:
        _refuse_overwrite(dir / f"{name}.crt", dir / f"{name}.key")
    cert_pem, key_pem = CertificateAuthority.load(dir).intermediate(name, days=days)
    return _write_pair(dir, name, cert_pem, key_pem)


def root_hash(path: Path) -> str:
    """The ``--ca-hash`` of the root CA in ``path`` (a directory holding ca.crt, or the file)."""
    file = path / CA_CERT if path.is_dir() else path
    try:
        cert = x509.load_pem_x509_certificate(file.read_bytes())
    except ValueError as exc:
        raise CertgenError(f"{file} is not a PEM certificate: {exc}") from exc
    return ca_hash(cert)


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
    parser = _Parser(prog="certgen", description="Fleet mutual-TLS certificates.")
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
    p_int = sub.add_parser(
        "intermediate", help="an issuing CA, signed by the root in DIR, for a Manager"
    )
    p_int.add_argument("name", metavar="NAME")
    p_int.add_argument("--dir", type=Path, required=True, metavar="DIR")
    p_int.add_argument("--days", type=_days, default=365)
    p_hash = sub.add_parser("hash", help="print the root CA's hash for `fleet-daemon join`")
    p_hash.add_argument("path", type=Path, metavar="DIR_OR_CA_FILE")
    p_dev = sub.add_parser("dev", help="CA, manager, admin and node certs for a local run")
    p_dev.add_argument("dir", type=Path, metavar="DIR")
    p_dev.add_argument("--node", action="append", required=True, metavar="NODE_ID")
    for p, what in (
        (p_init, "the CA"),
        (p_issue, "the cert and key"),
        (p_int, "the issuing CA"),
        (p_dev, "leaf certs"),
    ):
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
            print(f"CA hash (for fleet-daemon join --ca-hash): {root_hash(args.dir)}")
        elif args.command == "issue":
            paths = issue(
                args.dir, args.role, args.name, sans=args.san, days=args.days, force=args.force
            )
            print(f"wrote {paths[0]} and {paths[1]}")
        elif args.command == "intermediate":
            paths = intermediate(args.dir, args.name, days=args.days, force=args.force)
            print(f"wrote {paths[0]} and {paths[1]} (an issuing CA: give both to the Manager)")
        elif args.command == "hash":
            print(root_hash(args.path))
        else:
            dev(args.dir, args.node, force=args.force)
    except (CertgenError, OSError) as exc:
        print(f"certgen: error: {exc}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, CertgenError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
