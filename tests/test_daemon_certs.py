"""The Daemon's node certificate files, live TLS swap, renewal and revocation list.

Real certificates (common.pki), real TLS servers on 127.0.0.1 using the Daemon's own live
contexts: a connection opened before a swap keeps working, every new handshake presents
the new certificate, and a crash anywhere in the file swap leaves a working pair.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import async_wait_until

from common.pki import CertificateAuthority, load_csr, load_pem_certs, make_csr
from common.revocation import Revocation
from common.tls import TLSFiles
from daemon.certs import (
    CertificateError,
    CertRenewer,
    LiveTLS,
    Renewed,
    RenewPolicy,
    key_matches,
    new_paths,
    recover_swap,
    store_pair,
)
from daemon.revocations import DaemonRevocations
from schema import manager_pb


class PKI:
    """A root CA, a Manager certificate and a node's files on disk."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = CertificateAuthority.generate()
        (directory / "ca.crt").write_bytes(self.ca.cert_pem)
        cert, key = self.ca.issue("manager", "m1")
        (directory / "m1.crt").write_bytes(cert)
        (directory / "m1.key").write_bytes(key)
        cert, key = self.ca.issue("node", "web-1")
        self.files = TLSFiles(directory / "node.crt", directory / "node.key", directory / "ca.crt")
        self.files.cert_file.write_bytes(cert)
        self.files.key_file.write_bytes(key)

    def sign(self, csr_pem: str, *, name: str = "web-1", hours: float = 24) -> str:
        now = dt.datetime.now(dt.UTC)
        cert = self.ca.sign_public_key(
            "node",
            name,
            load_csr(csr_pem),
            not_before=now - dt.timedelta(minutes=5),
            not_after=now + dt.timedelta(hours=hours),
        )
        return cert.public_bytes(Encoding.PEM).decode()

    def age(self, tls: LiveTLS) -> None:
        """Give the node a certificate 300 days into its 365: past 2/3 of its life."""
        now = dt.datetime.now(dt.UTC)
        cert, key = self.ca.issue(
            "node",
            "web-1",
            not_before=now - dt.timedelta(days=300),
            not_after=now + dt.timedelta(days=65),
        )
        store_pair(self.files, cert, key)
        tls.reload()

    def new_pair(self) -> tuple[bytes, bytes]:
        return self.ca.issue("node", "web-1")

    def manager_client(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.dir / "ca.crt"))
        ctx.check_hostname = False
        ctx.load_cert_chain(self.dir / "m1.crt", self.dir / "m1.key")
        return ctx


def serial_of(pem: bytes) -> int:
    return load_pem_certs(pem)[0].serial_number


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


# ---- the file journal ----


def test_a_swap_interrupted_after_the_certificate_rename_is_finished(pki: PKI) -> None:
    cert, key = pki.new_pair()
    cert_new, key_new = new_paths(pki.files)
    key_new.write_bytes(key)
    pki.files.cert_file.write_bytes(cert)  # renamed into place; the key was not yet
    assert not key_matches(pki.files.key_file.read_bytes(), cert)
    assert "finished" in recover_swap(pki.files)
    assert pki.files.key_file.read_bytes() == key
    assert not key_new.exists() and not cert_new.exists()
    LiveTLS(pki.files)  # loads: a working pair


def test_a_swap_interrupted_before_the_certificate_rename_is_dropped(pki: PKI) -> None:
    old_cert, old_key = pki.files.cert_file.read_bytes(), pki.files.key_file.read_bytes()
    cert, key = pki.new_pair()
    cert_new, key_new = new_paths(pki.files)
    key_new.write_bytes(key)
    cert_new.write_bytes(cert[: len(cert) // 2])  # the crash came mid-write
    assert "dropped" in recover_swap(pki.files)
    assert pki.files.cert_file.read_bytes() == old_cert
    assert pki.files.key_file.read_bytes() == old_key
    assert not key_new.exists() and not cert_new.exists()
    cert_new.write_bytes(cert)  # only the certificate: dropped too
    assert "dropped" in recover_swap(pki.files)
    assert recover_swap(pki.files) == ""


def test_a_pair_that_does_not_match_never_replaces_the_working_one(pki: PKI) -> None:
    old_cert = pki.files.cert_file.read_bytes()
    cert, _ = pki.new_pair()
    _, other_key = pki.new_pair()
    with pytest.raises(CertificateError, match="does not load"):
        store_pair(pki.files, cert, other_key)
    assert pki.files.cert_file.read_bytes() == old_cert
    assert not any(p.exists() for p in new_paths(pki.files))
    cert, key = pki.new_pair()
    store_pair(pki.files, cert, key)
    assert pki.files.cert_file.read_bytes() == cert
    assert pki.files.key_file.stat().st_mode & 0o777 == 0o600


# ---- the live contexts ----


@pytest_asyncio.fixture
async def served(pki: PKI) -> AsyncIterator[tuple[LiveTLS, int]]:
    """An echo server on the node's live server context."""
    tls = LiveTLS(pki.files)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.readline():
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=tls.server)
    yield tls, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def _connect(pki: PKI, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=pki.manager_client())
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return reader, writer, x509.load_der_x509_certificate(der).serial_number


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, text: str) -> str:
    writer.write(f"{text}\n".encode())
    await writer.drain()
    return (await asyncio.wait_for(reader.readline(), 10)).decode().strip()


@pytest.mark.asyncio
async def test_a_new_certificate_is_served_to_new_handshakes_while_old_ones_go_on(
    pki: PKI, served: tuple[LiveTLS, int]
) -> None:
    tls, port = served
    old_serial = serial_of(pki.files.cert_file.read_bytes())
    reader, writer, serial = await _connect(pki, port)
    assert serial == old_serial

    cert, key = pki.new_pair()
    tls.install(cert, key)

    assert await _echo(reader, writer, "still here") == "still here"  # not dropped
    r2, w2, serial = await _connect(pki, port)
    assert serial == serial_of(cert) != old_serial
    assert tls.cert.serial_number == serial
    for w in (writer, w2):
        w.close()
    del r2


@pytest.mark.asyncio
async def test_a_bad_file_on_reload_keeps_the_old_certificate(
    pki: PKI, served: tuple[LiveTLS, int]
) -> None:
    tls, port = served
    old_serial = serial_of(pki.files.cert_file.read_bytes())
    _, other_key = pki.new_pair()
    pki.files.key_file.write_bytes(other_key)  # a key that is not the certificate's
    with pytest.raises(CertificateError):
        tls.reload()
    pki.files.cert_file.write_text("not a certificate")
    with pytest.raises(CertificateError):
        tls.reload()
    _, writer, serial = await _connect(pki, port)
    assert serial == old_serial
    writer.close()


# ---- renewal ----


class FakeManager:
    """RenewCertificate as the Manager answers it, signing with the fleet CA."""

    def __init__(self, pki: PKI, *, name: str = "web-1") -> None:
        self.pki = pki
        self.name = name
        self.calls = 0
        self.refuse: GRPCError | None = None

    async def renew(self, csr_pem: str) -> Renewed:
        self.calls += 1
        if self.refuse is not None:
            raise self.refuse
        return Renewed(cert_pem=self.pki.sign(csr_pem, name=self.name), ca_pem="")


def _renewer(
    pki: PKI, tls: LiveTLS, manager: FakeManager, after: Callable[[], None], **policy: float
) -> CertRenewer:
    return CertRenewer(
        node_id="web-1",
        tls=tls,
        policy=RenewPolicy(**policy),
        renew=manager.renew,
        after_renewal=after,
        roots=[pki.ca.cert],
    )


@pytest.mark.asyncio
async def test_a_certificate_past_its_threshold_is_renewed_and_served(
    pki: PKI, served: tuple[LiveTLS, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.certs")
    tls, port = served
    pki.age(tls)
    old_serial = tls.cert.serial_number
    manager = FakeManager(pki)
    reconnects: list[int] = []
    renewer = _renewer(
        pki,
        tls,
        manager,
        lambda: reconnects.append(1),
        check_interval=3600,  # renew_at: the default 0.66; the first look is at start
    )
    async with renewer:
        await async_wait_until(_true(lambda: renewer.renewals >= 1), timeout=30)
    assert reconnects == [1]
    on_disk = load_pem_certs(pki.files.cert_file.read_bytes())[0]
    assert on_disk.serial_number != old_serial
    assert key_matches(pki.files.key_file.read_bytes(), pki.files.cert_file.read_bytes())
    _, writer, serial = await _connect(pki, port)
    assert serial == on_disk.serial_number
    writer.close()
    assert f"renewed node certificate: serial {on_disk.serial_number:x}" in caplog.text


@pytest.mark.asyncio
async def test_a_manager_that_cannot_renew_is_not_hammered(
    pki: PKI, served: tuple[LiveTLS, int], caplog: pytest.LogCaptureFixture
) -> None:
    tls, _ = served
    pki.age(tls)
    manager = FakeManager(pki)
    manager.refuse = GRPCError(Status.FAILED_PRECONDITION, "this Manager holds no issuing CA")
    renewer = _renewer(pki, tls, manager, lambda: None, check_interval=0.2)
    async with renewer:
        await async_wait_until(_true(lambda: manager.calls >= 4), timeout=30)
    warnings = [r for r in caplog.records if "cannot renew" in r.getMessage()]
    assert len(warnings) == 1 and r"no issuing CA" in warnings[0].getMessage()
    assert renewer.renewals == 0


@pytest.mark.asyncio
async def test_a_certificate_for_another_node_is_refused(
    pki: PKI, served: tuple[LiveTLS, int]
) -> None:
    tls, _ = served
    old = pki.files.cert_file.read_bytes()
    renewer = _renewer(pki, tls, FakeManager(pki, name="web-2"), lambda: None)
    with pytest.raises(CertificateError, match="node/web-2"):
        await renewer.renew_once()
    assert pki.files.cert_file.read_bytes() == old
    key_pem, _ = make_csr("x")
    assert not key_matches(key_pem, old)


def _true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """A plain condition for ``async_wait_until``."""

    async def go() -> bool:
        return check()

    return go


# ---- revocations ----


@pytest.mark.asyncio
async def test_revocations_are_fetched_on_a_new_version_kept_and_reloaded(tmp_path: Path) -> None:
    calls: list[int] = []
    reply = manager_pb.GetRevocationsResponse(
        version=3,
        revocations=[
            manager_pb.Revocation(serial="1a2b", reason="lost laptop"),
            manager_pb.Revocation(identity="node/web-9", not_before_max=1_700_000_000),
        ],
    )

    async def fetch(known: int) -> manager_pb.GetRevocationsResponse:
        calls.append(known)
        return reply

    path = tmp_path / "revocations.json"
    held = DaemonRevocations(path=path, fetch=fetch)
    await held.start()
    try:
        held.seen_version(0)  # a Manager without revocations: nothing to fetch
        held.seen_version(3)
        await async_wait_until(_true(lambda: held.version == 3 and path.exists()), timeout=15)
        held.seen_version(3)  # the same version: no call
    finally:
        held.close()
        await held.wait_closed()
    assert calls == [0]
    assert json.loads(path.read_text())["version"] == 3

    again = DaemonRevocations(path=path, fetch=fetch)
    again.load()
    assert again.version == 3 and len(again.list) == 2
    assert Revocation(serial="1a2b", reason="lost laptop") in again.list.entries()

    path.write_text("{not json")
    broken = DaemonRevocations(path=path, fetch=fetch)
    broken.load()  # logged and ignored: the Manager sends it again
    assert broken.version == 0 and len(broken.list) == 0
