"""Reloading the Manager's own certificate, key and CA file without dropping work.

``ssl.SSLContext.load_cert_chain`` on a context in use replaces the certificate for the
handshakes that follow; connections already open keep theirs and go on undisturbed.
``load_verify_locations`` adds the CA file's certificates (new roots are trusted from
then on; a root removed from the file stays trusted until a restart — OpenSSL cannot
forget one).

:class:`TLSReloader` holds every context made from the Manager's files — the gRPC
server's, the Daemon pool's client context, and any other listener's (the enrollment
port) given to :meth:`TLSReloader.track` — and :meth:`TLSReloader.reload` loads the
files into a scratch context first: a missing, unreadable or mismatched file, or a
certificate that is not a valid ``manager`` certificate now, is logged naming the file
and the certificate in use stays. ``fleet-manager`` calls it on SIGHUP; with
``poll_interval`` it also runs when the files' modification times change.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509

from common.pki import cert_identity, normalize_serial
from common.tls import TLSFiles

from .periodic import Periodic

log = logging.getLogger(__name__)


class TLSReloadError(Exception):
    """The files cannot replace the certificate in use (the message names the file)."""


class TLSReloader:
    """Re-reads ``files`` into every tracked context (see module doc)."""

    def __init__(self, *, files: TLSFiles, poll_interval: float = 0.0) -> None:
        self.files = files
        self._contexts: list[ssl.SSLContext] = []
        self._stamps = self._file_stamps()
        self._poll = (
            Periodic(name="tls-file-poll", interval=poll_interval, step=self._check_files)
            if poll_interval > 0
            else None
        )
        # The certificate in use: its serial and expiry (for logs and tests).
        self.serial = ""
        self.not_after: dt.datetime | None = None
        with contextlib.suppress(TLSReloadError):
            self.serial, self.not_after = self._describe(_leaf(self.files.cert_file))

    def track(self, context: ssl.SSLContext) -> None:
        """Reload ``context`` too (a server or client context made from the same files)."""
        self._contexts.append(context)

    def reload(self) -> bool:
        """Load the files into every tracked context; False (logged) when they are not
        usable, and then nothing changed."""
        self._stamps = self._file_stamps()
        try:
            leaf = self._validate()
        except TLSReloadError as exc:
            log.error("TLS reload refused, keeping certificate %s: %s", self.serial or "?", exc)
            return False
        files = self.files
        cert, key, ca = (str(p) for p in (files.cert_file, files.key_file, files.ca_file))
        for context in self._contexts:
            context.load_cert_chain(certfile=cert, keyfile=key)
            context.load_verify_locations(cafile=ca)
        self.serial, self.not_after = self._describe(leaf)
        log.info(
            "reloaded TLS certificate: serial %s, expires %s",
            self.serial,
            self.not_after.strftime("%Y-%m-%d %H:%M:%SZ") if self.not_after else "?",
        )
        return True

    def _validate(self) -> x509.Certificate:
        files = self.files
        scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            scratch.load_cert_chain(certfile=str(files.cert_file), keyfile=str(files.key_file))
        except FileNotFoundError as exc:
            raise TLSReloadError(f"{exc.filename or files.cert_file}: file not found") from None
        except (OSError, ssl.SSLError) as exc:
            raise TLSReloadError(
                f"{files.cert_file} with key {files.key_file}: {_reason(exc)}"
            ) from None
        try:
            scratch.load_verify_locations(cafile=str(files.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise TLSReloadError(f"{files.ca_file}: {_reason(exc)}") from None
        leaf = _leaf(files.cert_file)
        identity = cert_identity(leaf)
        if identity is None or identity.role != "manager":
            raise TLSReloadError(
                f"{files.cert_file}: certificate identity is {identity or 'none'}, "
                "expected manager/<name>"
            )
        now = dt.datetime.now(dt.UTC)
        if leaf.not_valid_after_utc <= now:
            expired = leaf.not_valid_after_utc
            raise TLSReloadError(f"{files.cert_file}: certificate expired at {expired:%F %TZ}")
        return leaf

    @staticmethod
    def _describe(leaf: x509.Certificate) -> tuple[str, dt.datetime]:
        return normalize_serial(leaf.serial_number), leaf.not_valid_after_utc

    # ---- file-change poll ----

    def _file_stamps(self) -> tuple[tuple[int, int], ...]:
        stamps = []
        for path in (self.files.cert_file, self.files.key_file, self.files.ca_file):
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append((0, 0))
        return tuple(stamps)

    async def _check_files(self) -> None:
        stamps = self._file_stamps()
        if stamps != self._stamps:
            log.info("TLS files changed on disk: reloading")
            self.reload()

    async def start(self) -> None:
        if self._poll is not None:
            await self._poll.start()

    def close(self) -> None:
        if self._poll is not None:
            self._poll.close()

    async def wait_closed(self) -> None:
        if self._poll is not None:
            await self._poll.wait_closed()


def _leaf(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificates(Path(path).read_bytes())[0]
    except (OSError, ValueError, IndexError) as exc:
        raise TLSReloadError(f"{path}: not a PEM certificate ({exc})") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
