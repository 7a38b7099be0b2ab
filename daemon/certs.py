"""The Daemon's node certificate: its files, live TLS reload, and renewal.

The certificate, key and CA files (``[manager.tls]``) are loaded into two ``SSLContext``
objects that live as long as the Daemon: the server context of the DaemonService listener
and the client context that dials the Manager. :class:`LiveTLS` reloads new files into
those same objects (``load_cert_chain``), so every new handshake presents the new
certificate while open connections, agents and the Daemon itself carry on. A file that
does not load (a key that does not match, a truncated PEM) is tried in a scratch context
first and never reaches the live ones.

:class:`CertRenewer` renews the certificate over the authenticated Manager channel
(``ManagerService.RenewCertificate``) once ``renew_at`` of its lifetime has passed. The
new key is made here and never leaves the host. The swap on disk is a small journal:
``node.key.new`` and ``node.crt.new`` are written and synced, then the certificate is
renamed into place, then the key. :func:`recover_swap` at start finishes a swap a crash
interrupted after the first rename, or drops one interrupted before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from common.backoff import Backoff
from common.files import sync_dir
from common.pki import cert_identity, issued_by, load_pem_certs, make_csr, normalize_serial
from common.tls import TLSFiles, client_context, server_context

log = logging.getLogger(__name__)

NEW_SUFFIX = ".new"


class CertificateError(Exception):
    """A certificate, key or CA file (or a certificate the Manager sent) is unusable."""


# ---- files ----


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # an older file of that name may have other bits
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _spki(key_or_cert: object) -> bytes:
    public = key_or_cert.public_key()  # type: ignore[attr-defined]
    return bytes(
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def key_matches(key_pem: bytes, cert_pem: bytes) -> bool:
    """Whether the private key in ``key_pem`` belongs to the first certificate of
    ``cert_pem`` (False when either does not parse)."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, TypeError):
        return False
    return _spki(key) == _spki(cert)


def new_paths(files: TLSFiles) -> tuple[Path, Path]:
    """``(node.crt.new, node.key.new)``: the journal of a swap in progress."""
    return (
        Path(f"{files.cert_file}{NEW_SUFFIX}"),
        Path(f"{files.key_file}{NEW_SUFFIX}"),
    )


def recover_swap(files: TLSFiles) -> str:
    """Finish or drop a certificate swap a crash interrupted; say what was done.

    ``node.key.new`` matching ``node.crt`` means the certificate was renamed into place
    but not yet its key: rename the key too. Anything else left over is a swap that had
    not begun (the old pair is intact): drop it. Returns ``""`` when there was nothing.
    """
    cert_new, key_new = new_paths(files)
    if not key_new.exists():
        if cert_new.exists():
            cert_new.unlink()
            return f"dropped {cert_new} (an unfinished renewal)"
        return ""
    try:
        matches = key_matches(key_new.read_bytes(), Path(files.cert_file).read_bytes())
    except OSError:
        matches = False
    if matches:
        os.replace(key_new, files.key_file)
        cert_new.unlink(missing_ok=True)
        sync_dir(Path(files.key_file).parent)
        return f"finished an interrupted renewal: {key_new} is now {files.key_file}"
    key_new.unlink()
    cert_new.unlink(missing_ok=True)
    return f"dropped {key_new} (an unfinished renewal; the previous certificate stays)"


def store_pair(files: TLSFiles, cert_pem: bytes, key_pem: bytes) -> None:
    """Replace the certificate and key on disk, crash-safely (see the module docstring).

    The pair is checked in a scratch context first: a certificate that does not load
    with its key never replaces the working one."""
    cert_new, key_new = new_paths(files)
    _write_synced(key_new, key_pem, 0o600)
    _write_synced(cert_new, cert_pem, 0o644)
    try:
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        scratch.load_cert_chain(certfile=str(cert_new), keyfile=str(key_new))
    except (ssl.SSLError, OSError) as exc:
        key_new.unlink(missing_ok=True)
        cert_new.unlink(missing_ok=True)
        raise CertificateError(f"the new certificate does not load with its key: {exc}") from None
    directory = Path(files.cert_file).parent
    sync_dir(directory)
    os.replace(cert_new, files.cert_file)
    sync_dir(directory)
    os.replace(key_new, files.key_file)
    sync_dir(Path(files.key_file).parent)


def check_chain(chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]) -> None:
    """The leaf (``chain[0]``) chains through ``chain[1:]`` to one of ``roots``;
    :class:`CertificateError` otherwise. A quick structural check, before OpenSSL's own
    verification on every handshake."""
    if not chain:
        raise CertificateError("no certificate")
    for child, parent in itertools.pairwise(chain):
        if not issued_by(child, parent):
            raise CertificateError(f"{child.subject.rfc4514_string()} is not signed by the next")
    if not any(issued_by(chain[-1], root) or chain[-1] == root for root in roots):
        raise CertificateError("the certificate does not chain to the fleet CA")


def describe(cert: x509.Certificate) -> str:
    """``serial 1a2b, expires 2025-01-31 12:00:00 UTC`` (for log lines)."""
    serial = normalize_serial(cert.serial_number)
    return f"serial {serial}, expires {_utc(cert.not_valid_after_utc)}"


def _utc(moment: dt.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


# ---- live contexts ----


class LiveTLS:
    """The Daemon's two TLS contexts, reloadable in place from the certificate files."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        try:
            self.server = server_context(files)
            self.client = client_context(files, expect_role="manager")
            self.cert = _load_leaf(Path(files.cert_file))
        except (ssl.SSLError, ValueError) as exc:
            reason = _ssl_reason(exc)
            raise CertificateError(f"cannot load the node certificate: {reason}") from None

    @property
    def contexts(self) -> tuple[ssl.SSLContext, ...]:
        return (self.server, self.client)

    def reload(self) -> x509.Certificate:
        """Load the certificate, key and CA files again into the live contexts; return the
        certificate now served. :class:`CertificateError` (and the old certificate kept)
        when the files do not make a working context."""
        f = self.files
        try:
            TLSFiles(f.cert_file, f.key_file, f.ca_file).check_readable()
            server_context(f)  # a scratch context: fails before anything live changes
            cert = _load_leaf(Path(f.cert_file))
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise CertificateError(_ssl_reason(exc)) from None
        for ctx in self.contexts:
            # New CAs are added to the trust store (OpenSSL cannot remove one in place:
            # a CA taken out needs a restart).
            ctx.load_verify_locations(cafile=str(f.ca_file))
            ctx.load_cert_chain(certfile=str(f.cert_file), keyfile=str(f.key_file))
        self.cert = cert
        return cert

    def install(self, cert_pem: bytes, key_pem: bytes) -> x509.Certificate:
        """Store a new certificate and key (crash-safely) and make them live."""
        store_pair(self.files, cert_pem, key_pem)
        return self.reload()


def _load_leaf(path: Path) -> x509.Certificate:
    try:
        return load_pem_certs(path.read_bytes())[0]
    except ValueError:
        raise ValueError(f"{path} holds no PEM certificate") from None


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        # OpenSSL's reason in words ("KEY_VALUES_MISMATCH" -> "key values mismatch").
        reason = exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
        return f"{reason} (key and certificate do not match, or a file is not PEM)"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


# ---- renewal ----


@dataclass(frozen=True)
class RenewPolicy:
    """When to renew: once ``renew_at`` of the lifetime has passed, looking every
    ``check_interval`` seconds (and at start)."""

    renew_at: float = 0.66
    check_interval: float = 600.0

    def due_at(self, cert: x509.Certificate) -> float:
        """Unix time at which ``cert`` is due for renewal."""
        start = cert.not_valid_before_utc.timestamp()
        end = cert.not_valid_after_utc.timestamp()
        return start + (end - start) * self.renew_at


@dataclass(frozen=True)
class Renewed:
    """What a RenewCertificate answer carried (the fields the Daemon uses)."""

    cert_pem: str
    ca_pem: str


RenewCall = Callable[[str], Awaitable[Renewed]]
# Statuses that mean "this Manager cannot renew" rather than "try again soon".
_CANNOT_RENEW = frozenset({Status.FAILED_PRECONDITION, Status.UNIMPLEMENTED})
_WARN_EVERY = 86400.0


class CertRenewer:
    """Renews the node certificate before it expires; lifecycle start/close/wait_closed.

    ``renew`` sends a CSR to the Manager over the authenticated channel and returns its
    answer; ``after_renewal`` runs once the new certificate is live (the Manager client
    opens a fresh channel with it).
    """

    def __init__(
        self,
        *,
        node_id: str,
        tls: LiveTLS,
        policy: RenewPolicy,
        renew: RenewCall,
        after_renewal: Callable[[], None],
        roots: Sequence[x509.Certificate],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node_id = node_id
        self._tls = tls
        self._policy = policy
        self._renew = renew
        self._after = after_renewal
        self._roots = list(roots)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._warned_at = 0.0
        self.renewals = 0
        self.last_error = ""

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("CertRenewer already started")
        log.info(
            "node certificate: %s; renewal due at %s",
            describe(self._tls.cert),
            _utc(dt.datetime.fromtimestamp(self._policy.due_at(self._tls.cert), dt.UTC)),
        )
        self._task = asyncio.create_task(self._loop(), name="cert-renewal")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def __aenter__(self) -> CertRenewer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    def seconds_until_due(self) -> float:
        return self._policy.due_at(self._tls.cert) - self._clock()

    async def _loop(self) -> None:
        interval = self._policy.check_interval
        backoff = Backoff(initial=min(5.0, interval), maximum=interval)
        # A little jitter at start too: a fleet restarted at once does not renew at once.
        delay = random.uniform(0, min(5.0, interval / 10))
        while True:
            await asyncio.sleep(delay)
            delay = interval * random.uniform(0.9, 1.1)
            try:
                until = self.seconds_until_due()
                if until > 0:
                    delay = min(delay, until + random.uniform(0, min(5.0, interval / 10)))
                    continue
                await self.renew_once()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except GRPCError as exc:
                self.last_error = f"{exc.status.name}: {exc.message}"
                if exc.status in _CANNOT_RENEW:
                    self._warn_cannot_renew(exc)
                else:
                    delay = min(delay, backoff.next_delay())
                    log.warning(
                        "renewing the node certificate failed (%s); retrying in %.0fs",
                        self.last_error,
                        delay,
                    )
            except CertificateError as exc:
                self.last_error = str(exc)
                delay = min(delay, backoff.next_delay())
                log.error(
                    "the Manager's renewed certificate is unusable (%s); keeping the current "
                    "one, retrying in %.0fs",
                    exc,
                    delay,
                )
            except Exception as exc:  # the link is down, a timeout, a full disk...
                self.last_error = str(exc) or type(exc).__name__
                delay = min(delay, backoff.next_delay())
                log.warning(
                    "renewing the node certificate failed (%s); retrying in %.0fs",
                    self.last_error,
                    delay,
                )

    def _warn_cannot_renew(self, exc: GRPCError) -> None:
        now = time.monotonic()
        if self._warned_at and now - self._warned_at < _WARN_EVERY:
            log.debug("the Manager cannot renew the node certificate: %s", exc.message)
            return
        self._warned_at = now
        log.warning(
            "the Manager cannot renew the node certificate (%s); it %s — give the Manager "
            "an issuing CA, or replace the certificate by hand (asking again every %.0fs)",
            exc.message or exc.status.name,
            f"expires {_utc(self._tls.cert.not_valid_after_utc)}",
            self._policy.check_interval,
        )

    async def renew_once(self) -> x509.Certificate:
        """Renew now: new key and CSR, RenewCertificate, store, make it live."""
        key_pem, csr_pem = await asyncio.to_thread(make_csr, self._node_id)
        reply = await self._renew(csr_pem.decode())
        cert_pem = reply.cert_pem.encode()
        try:
            chain = load_pem_certs(cert_pem)
        except ValueError:
            raise CertificateError("the answer holds no PEM certificate") from None
        leaf = chain[0]
        if _spki(leaf) != _spki(serialization.load_pem_private_key(key_pem, password=None)):
            raise CertificateError("the certificate is not for the key this host sent")
        identity = cert_identity(leaf)
        if identity is None or (identity.role, identity.name) != ("node", self._node_id):
            raise CertificateError(f"the certificate names {identity}, not node/{self._node_id}")
        check_chain(chain, self._roots)
        await asyncio.to_thread(store_pair, self._tls.files, cert_pem, key_pem)
        # On the loop's thread: the live contexts are in use by its handshakes.
        cert = self._tls.reload()
        self.renewals += 1
        self.last_error = ""
        log.info("renewed node certificate: %s", describe(cert))
        self._after()
        return cert
