"""``fleet-daemon join``: give this host its node identity with a join token.

The protocol (``schema/proto/fleet/enroll/v1/enroll.proto``, docs/security.md):

1. ``GetCA`` over TLS without verifying the server; the returned root's public-key hash
   must equal ``--ca-hash``, else the join stops there: nothing is written and the token
   is never sent.
2. A new TLS connection that verifies the Manager's certificate against that root and
   its ``spiffe://fleet/manager/*`` identity; only then ``Join`` with the token and a CSR
   whose key is made here and never leaves the host.

On success the key (0600, written first), the certificate chain and the root go to
``DIR/tls``, and a minimal ``DIR/daemon.toml`` is written unless one exists; then the
Daemon starts in the foreground with it (or, with ``--no-start``, the command is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from common import paths
from common.agentspec import ConfigError
from common.files import write_file_atomic
from common.pki import (
    CertgenError,
    ca_hash,
    cert_identity,
    load_pem_certs,
    make_csr,
    normalize_serial,
    parse_ca_hash,
    validate_name,
)
from common.tls import PeerIdentityError, identity_from_cert
from schema.gen.fleet.enroll import v1 as enroll_pb

from .certs import CertificateError, check_chain, key_matches
from .config import from_mapping, manager_addresses, split_hostport

PROG = "fleet-daemon join"
TIMEOUT = 30.0
SYSTEMD_UNIT = "deploy/systemd/fleet-daemon.service"


class JoinError(Exception):
    """The join cannot go on; the message is the one line the operator sees."""

    exit_code = 1


class UsageError(JoinError):
    exit_code = 2


# ---- arguments ----


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Join this host to a fleet with a join token (from `fleetctl tokens "
        "create`): get a node certificate signed by the Manager, write it and a minimal "
        "daemon.toml, and start the Daemon.",
    )
    p.add_argument("--manager", required=True, help="the Manager's enrollment address HOST:PORT")
    p.add_argument("--token", required=True, help="the join token (ID.SECRET)")
    p.add_argument(
        "--ca-hash",
        required=True,
        help="sha256:... of the fleet root CA, as printed by `fleetctl tokens create`",
    )
    p.add_argument("--node-id", help="node id to ask for (default: the hostname)")
    p.add_argument(
        "--dir",
        type=Path,
        help="where to write tls/ and daemon.toml (default: /etc/fleet as root, else "
        "$XDG_CONFIG_HOME/fleet)",
    )
    p.add_argument("--no-start", action="store_true", help="do not start the Daemon; print how to")
    p.add_argument(
        "--force", action="store_true", help="replace an existing node key and certificate"
    )
    return p


@dataclass(frozen=True)
class JoinArgs:
    """Validated arguments of ``fleet-daemon join``."""

    manager: str
    token: str
    ca_hash: str
    node_id: str
    dir: Path
    state_dir: Path
    start: bool
    force: bool


_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{1,256}")


def default_node_id(hostname: str) -> str:
    """The hostname, made a valid node id: other characters become ``-``, no leading
    ``.``/``-``, at most 128 characters."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", hostname).lstrip(".-")[:128]
    return name if name and name != "ca" else "node"


def default_dirs(env: Mapping[str, str], euid: int, node_id: str) -> tuple[Path, Path]:
    """``(config dir, state dir)`` of a joined host (:mod:`common.paths`): /etc/fleet and
    /var/lib/fleet/daemon as root, else the user's XDG directories."""
    return paths.config_dir(env, euid), paths.daemon_state_dir(node_id, env, euid)


def parse_args(
    argv: Sequence[str], *, env: Mapping[str, str], euid: int, hostname: str
) -> JoinArgs:
    """The validated arguments (:class:`UsageError` naming the one that is wrong)."""
    args = parser().parse_args(list(argv))
    try:
        split_hostport(args.manager)
        manager_addresses(args.manager)
    except ConfigError as exc:
        raise UsageError(f"--manager: {args.manager!r} is not HOST:PORT ({exc})") from None
    if "," in args.manager:
        raise UsageError("--manager: give one enrollment address HOST:PORT")
    token = args.token.strip()
    if not _TOKEN.fullmatch(token):
        raise UsageError("--token: expected ID.SECRET, as printed by `fleetctl tokens create`")
    try:
        pinned = parse_ca_hash(args.ca_hash)
    except ValueError as exc:
        raise UsageError(f"--ca-hash: {exc}") from None
    node_id = args.node_id if args.node_id is not None else default_node_id(hostname)
    try:
        validate_name(node_id)
    except CertgenError as exc:
        raise UsageError(f"--node-id: {exc}") from None
    config_dir, state_dir = default_dirs(env, euid, node_id)
    directory = (args.dir or config_dir).expanduser().absolute()
    return JoinArgs(
        manager=args.manager,
        token=token,
        ca_hash=pinned,
        node_id=node_id,
        dir=directory,
        state_dir=state_dir,
        start=not args.no_start,
        force=args.force,
    )


# ---- the two connections ----


def _alpn(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["h2"])
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def discovery_context() -> ssl.SSLContext:
    """TLS that does not verify the server: only for GetCA, whose answer is checked
    against the pinned hash before anything is trusted."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return _alpn(ctx)


def pinned_context(roots_pem: str) -> ssl.SSLContext:
    """TLS that verifies the server against ``roots_pem`` and requires a Manager
    identity (no client certificate: the host has none yet)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # identity, not host names (common/tls.py)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=roots_pem)

    class _ManagerOnly(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            peer = identity_from_cert(self.getpeercert())
            if peer is None or peer.role != "manager":
                raise PeerIdentityError(f"server identity is {peer or 'none'}, expected manager/*")

    ctx.sslobject_class = _ManagerOnly
    return _alpn(ctx)


def _pem(certs: Sequence[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


async def _call(host: str, port: int, ctx: ssl.SSLContext, what: str, request: Any) -> Any:
    channel = Channel(host, port, ssl=ctx)
    stub = enroll_pb.EnrollServiceStub(channel)
    try:
        if what == "GetCA":
            return await stub.get_ca(request, timeout=TIMEOUT)
        return await stub.join(request, timeout=TIMEOUT)
    except GRPCError:
        raise
    except PeerIdentityError as exc:
        raise JoinError(f"the server at {host}:{port} is not a Fleet Manager: {exc}") from None
    except ssl.SSLCertVerificationError as exc:
        raise JoinError(
            f"the server at {host}:{port} does not hold a certificate of the pinned CA: "
            f"{exc.verify_message or exc}"
        ) from None
    except (TimeoutError, OSError, ssl.SSLError) as exc:
        raise JoinError(
            f"cannot reach the Manager's enrollment port at {host}:{port} ({what}): {_reason(exc)}"
        ) from None
    except Exception as exc:  # grpclib: a peer that is not gRPC, a dropped stream
        raise JoinError(
            f"the enrollment port at {host}:{port} failed ({what}): {_reason(exc)}"
        ) from None
    finally:
        channel.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class Joined:
    """What the Manager gave: the node's files and what daemon.toml needs."""

    node_id: str
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    labels: dict[str, str]
    manager_addresses: tuple[str, ...]
    serial: str
    cert: x509.Certificate


async def enroll(args: JoinArgs, *, hostname: str) -> Joined:
    """Steps 1 and 2 of the protocol (nothing is written here)."""
    host, port = split_hostport(args.manager)
    # 1. Discovery: which root does this server claim? Trusted only if it is the pinned one.
    got = await _call(host, port, discovery_context(), "GetCA", enroll_pb.GetCaRequest())
    try:
        offered = load_pem_certs(got.ca_pem.encode())
    except ValueError:
        raise JoinError(f"the server at {args.manager} sent no CA certificate") from None
    pinned = [c for c in offered if ca_hash(c) == args.ca_hash]
    if not pinned:
        hashes = ", ".join(ca_hash(c) for c in offered)
        raise JoinError(
            f"CA hash mismatch: --ca-hash is {args.ca_hash} but the server at {args.manager} "
            f"presents {hashes}; nothing was sent or written (wrong hash, wrong server, or "
            "someone in between)"
        )
    # 2. Join over a connection verified against the pinned root.
    key_pem, csr_pem = make_csr(args.node_id)
    reply = await _call(
        host,
        port,
        pinned_context(_pem(pinned)),
        "Join",
        enroll_pb.JoinRequest(
            token=args.token, node_id=args.node_id, csr_pem=csr_pem.decode(), hostname=hostname
        ),
    )
    return _check_reply(args, reply, key_pem, pinned)


def _check_reply(
    args: JoinArgs,
    reply: enroll_pb.JoinResponse,
    key_pem: bytes,
    pinned: Sequence[x509.Certificate],
) -> Joined:
    """The answer must be a certificate for our key and node id, chaining to the pinned
    root; anything else is refused before a file is written."""
    cert_pem = reply.cert_pem.encode()
    try:
        chain = load_pem_certs(cert_pem)
        roots = load_pem_certs(reply.ca_pem.encode()) if reply.ca_pem else list(pinned)
    except ValueError:
        raise JoinError("the Manager's answer holds no PEM certificate") from None
    node_id = reply.node_id or args.node_id
    if not key_matches(key_pem, cert_pem):
        raise JoinError("the Manager returned a certificate for another key")
    identity = cert_identity(chain[0])
    if identity is None or (identity.role, identity.name) != ("node", node_id):
        raise JoinError(f"the Manager returned a certificate for {identity}, not node/{node_id}")
    if not any(ca_hash(r) == args.ca_hash for r in roots):
        raise JoinError("the Manager's CA certificates do not include the pinned root")
    try:
        check_chain(chain, [r for r in roots if ca_hash(r) == args.ca_hash])
    except CertificateError as exc:
        raise JoinError(f"the Manager's certificate does not verify: {exc}") from None
    addresses = tuple(a for a in reply.manager_addresses if a)
    return Joined(
        node_id=node_id,
        key_pem=key_pem,
        cert_pem=cert_pem,
        ca_pem=_pem(roots).encode(),
        labels=dict(reply.labels),
        manager_addresses=addresses,
        serial=reply.serial or normalize_serial(chain[0].serial_number),
        cert=chain[0],
    )


# ---- files ----


@dataclass(frozen=True)
class Paths:
    dir: Path
    tls: Path
    key: Path
    cert: Path
    ca: Path
    config: Path

    @classmethod
    def under(cls, directory: Path) -> Paths:
        tls = directory / "tls"
        return cls(
            directory,
            tls,
            tls / "node.key",
            tls / "node.crt",
            tls / "ca.crt",
            directory / "daemon.toml",
        )


def check_writable(paths: Paths, *, force: bool) -> None:
    """Refuse, before the token is spent, what the join could not finish."""
    existing = [p for p in (paths.key, paths.cert) if p.exists()]
    if existing and not force:
        raise JoinError(
            f"{existing[0]} already exists (this host has joined before): use --force to "
            "replace the node key and certificate"
        )
    for directory in (paths.dir, paths.tls):
        if directory.exists() and not directory.is_dir():
            raise JoinError(f"{directory} exists and is not a directory")
    probe = paths.dir
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise JoinError(f"cannot write under {probe}: permission denied (run as root, or --dir)")


def daemon_config(joined: Joined, args: JoinArgs, paths: Paths) -> dict[str, Any]:
    """The minimal daemon.toml for a joined host."""
    addresses = list(joined.manager_addresses) or [args.manager]
    data: dict[str, Any] = {
        "node_id": joined.node_id,
        "state_dir": str(args.state_dir),
    }
    if joined.labels:
        data["labels"] = dict(sorted(joined.labels.items()))
    data["manager"] = {
        "address": addresses[0] if len(addresses) == 1 else addresses,
        "tls": {
            "cert_file": str(paths.cert),
            "key_file": str(paths.key),
            "ca_file": str(paths.ca),
        },
    }
    return data


def write_files(joined: Joined, args: JoinArgs, paths: Paths) -> bool:
    """Write key, certificate, CA and (if absent) daemon.toml; True if daemon.toml was
    written."""
    data = daemon_config(joined, args, paths)
    try:
        from_mapping(data)  # what the Daemon will read must be valid
    except ConfigError as exc:
        raise JoinError(f"the Manager's answer does not make a valid daemon.toml: {exc}") from None
    paths.dir.mkdir(parents=True, exist_ok=True)
    paths.tls.mkdir(mode=0o700, exist_ok=True)
    os.chmod(paths.tls, 0o700)
    # The key first: a certificate on disk always has its key beside it.
    write_file_atomic(paths.key, joined.key_pem, 0o600)
    write_file_atomic(paths.cert, joined.cert_pem, 0o644)
    write_file_atomic(paths.ca, joined.ca_pem, 0o644)
    if paths.config.exists():
        return False
    text = "# Written by `fleet-daemon join`; docs/daemon.md lists every key.\n" + tomli_w.dumps(
        data
    )
    write_file_atomic(paths.config, text.encode(), 0o640)
    return True


# ---- the command ----


def run(argv: Sequence[str], *, out: Any = sys.stdout) -> tuple[JoinArgs, Paths]:
    """Join; return what the Daemon needs to start (:class:`JoinError` on any refusal)."""
    hostname = socket.gethostname()
    args = parse_args(argv, env=os.environ, euid=os.geteuid(), hostname=hostname)
    paths = Paths.under(args.dir)
    print(f"joining as node {args.node_id}; files go to {args.dir}", file=out)
    check_writable(paths, force=args.force)
    try:
        joined = asyncio.run(enroll(args, hostname=hostname))
    except GRPCError as exc:
        raise JoinError(
            f"the Manager refused the join ({exc.status.name}): "
            f"{' '.join((exc.message or 'no reason given').split())}"
        ) from None
    try:
        wrote_config = write_files(joined, args, paths)
    except OSError as exc:
        raise JoinError(f"cannot write the node's files: {_reason(exc)} ({exc.filename})") from None
    print(
        f"joined: node {joined.node_id}, certificate serial {joined.serial}, expires "
        f"{joined.cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
        file=out,
    )
    print(f"wrote {paths.key} (0600), {paths.cert}, {paths.ca}", file=out)
    if wrote_config:
        print(f"wrote {paths.config}", file=out)
    else:
        print(
            f"kept the existing {paths.config}: check node_id = {joined.node_id!r}, "
            f"manager.address = {', '.join(joined.manager_addresses) or args.manager!r}, "
            f"[manager.tls] cert_file/key_file/ca_file = {paths.cert} / {paths.key} / "
            f"{paths.ca}" + (f", labels = {joined.labels}" if joined.labels else ""),
            file=out,
        )
    if not joined.manager_addresses:
        print(
            f"note: the Manager did not say its gRPC address; manager.address is "
            f"{args.manager} (its enrollment port) — set the gRPC address in {paths.config}",
            file=out,
        )
    return args, paths


def main(argv: Sequence[str]) -> None:
    """``fleet-daemon join ...``: join, then exec the Daemon (unless ``--no-start``)."""
    try:
        args, paths = run(argv)
    except JoinError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        sys.exit(130)
    command = [sys.executable, "-m", "daemon", "--config", str(paths.config)]
    if not args.start:
        print(f"start the Daemon with:\n  fleet-daemon --config {paths.config}")
        print(
            f"or as a service: install {SYSTEMD_UNIT} (it runs "
            "`fleet-daemon --config /etc/fleet/daemon.toml`), then "
            "`systemctl enable --now fleet-daemon`"
        )
        return
    print(f"starting the Daemon: fleet-daemon --config {paths.config}", flush=True)
    sys.stderr.flush()
    os.execv(sys.executable, command)
