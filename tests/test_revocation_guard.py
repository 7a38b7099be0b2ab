"""RevocationList enforced by GuardedService on a real grpclib server over real mTLS.

Certificates come from the project's own CA code (common.pki.CertificateAuthority); the
server is common.rpc.make_server with a GuardedService around a small ManagerService, on
127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpclib.client
import pytest
from cryptography import x509
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from harness import async_wait_until

from common.pki import CertificateAuthority, normalize_serial
from common.revocation import PeerCertificate, Revocation, RevocationList
from common.rpc import GuardedService, current_call, make_server, wait_server_closed
from common.tls import TLSFiles, client_context, server_context
from schema import manager_pb


class _WhoAmI(manager_pb.ManagerServiceBase):
    """Answers every RegisterNode with the caller's identity."""

    async def register_node(
        self, req: manager_pb.RegisterNodeRequest
    ) -> manager_pb.RegisterNodeResponse:
        return manager_pb.RegisterNodeResponse(success=True, message=str(current_call().identity))


class _PKI:
    """A root, the files of its certificates in ``directory``, and their serials."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.root = CertificateAuthority.generate()
        (directory / "ca.crt").write_bytes(self.root.cert_pem)
        self.serials: dict[str, str] = {}

    def issue(
        self,
        name: str,
        role: str,
        *,
        ca: CertificateAuthority | None = None,
        not_before: dt.datetime | None = None,
    ) -> TLSFiles:
        """Write ``name``.crt/.key (``role``/``name``, signed by ``ca`` or the root)."""
        signer = ca or self.root
        cert_pem, key_pem = signer.issue(role, name.split("@")[0], not_before=not_before)
        chain = cert_pem + (b"" if signer is self.root else signer.cert_pem)
        (self.dir / f"{name}.crt").write_bytes(chain)
        (self.dir / f"{name}.key").write_bytes(key_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
        self.serials[name] = normalize_serial(cert.serial_number)
        return self.files(name)

    def files(self, name: str) -> TLSFiles:
        return TLSFiles(self.dir / f"{name}.crt", self.dir / f"{name}.key", self.dir / "ca.crt")


@pytest.fixture
def pki(tmp_path: Path) -> _PKI:
    pki = _PKI(tmp_path)
    pki.issue("manager", "manager")
    for node in ("node-a", "node-b"):
        pki.issue(node, "node")
    pki.issue("admin", "admin")
    return pki


@asynccontextmanager
async def _server(pki: _PKI, revocations: RevocationList) -> AsyncIterator[int]:
    guarded = GuardedService(
        _WhoAmI(),
        policy={"RegisterNode": {"node", "admin"}},
        revocations=revocations,
        trust_roots=[pki.root.cert],
    )
    server = make_server([guarded])
    await server.start("127.0.0.1", 0, ssl=server_context(pki.files("manager")))
    try:
        yield server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        server.close()
        await wait_server_closed(server)


def _channel(pki: _PKI, name: str, port: int) -> tuple[grpclib.client.Channel, Any]:
    ssl = client_context(pki.files(name), expect_role="manager")
    channel = grpclib.client.Channel("127.0.0.1", port, ssl=ssl)
    return channel, manager_pb.ManagerServiceStub(channel, timeout=10)


async def _who(stub: Any) -> str:
    reply = await stub.register_node(manager_pb.RegisterNodeRequest(node_id="x"))
    return str(reply.message)


async def _refused(stub: Any) -> GRPCError:
    with pytest.raises(GRPCError) as err:
        await _who(stub)
    return err.value


def test_revoked_serial_refused_on_the_next_call_another_still_works(pki: _PKI) -> None:
    async def scenario() -> None:
        revocations = RevocationList()
        async with _server(pki, revocations) as port:
            a_channel, a = _channel(pki, "node-a", port)
            b_channel, b = _channel(pki, "node-b", port)
            try:
                assert await _who(a) == "node/node-a"
                assert await _who(b) == "node/node-b"
                revocations.replace(
                    1, [Revocation(serial=pki.serials["node-a"], reason="key leaked")]
                )
                # A new connection with the revoked certificate: refused, with the reason.
                a_channel.close()
                a_channel, a = _channel(pki, "node-a", port)
                err = await _refused(a)
                assert err.status is Status.UNAUTHENTICATED
                assert err.message == (
                    f"certificate {pki.serials['node-a']} of node/node-a is revoked: key leaked"
                )
                assert await _who(b) == "node/node-b"
                # Lifting the revocation (a new list without it) lets it back in.
                revocations.replace(2, [])
                a_channel.close()
                a_channel, a = _channel(pki, "node-a", port)
                assert await _who(a) == "node/node-a"
            finally:
                a_channel.close()
                b_channel.close()

    asyncio.run(scenario())


def test_open_connection_closed_when_the_list_revokes_it(pki: _PKI) -> None:
    async def scenario() -> None:
        revocations = RevocationList()
        async with _server(pki, revocations) as port:
            a_channel, a = _channel(pki, "node-a", port)
            b_channel, b = _channel(pki, "node-b", port)
            try:
                assert await _who(a) == "node/node-a"
                assert await _who(b) == "node/node-b"
                changed = revocations.replace(2, [Revocation(serial=pki.serials["node-a"])])
                assert changed
                assert revocations.closed == 1  # node-a's one connection, not node-b's
                # The client sees its connection go (GOAWAY, then the transport closes).

                async def a_lost() -> bool:
                    return _connection_lost(a_channel)

                await async_wait_until(a_lost, timeout=10, what="node-a's connection closed")
                # Its next call reconnects and is refused; node-b's channel never noticed.
                with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError)) as err:
                    await _who(a)
                if isinstance(err.value, GRPCError):
                    assert err.value.status is Status.UNAUTHENTICATED
                assert await _who(b) == "node/node-b"
                assert not _connection_lost(b_channel)
                # Same list again: nothing changes, nothing else is closed.
                assert not revocations.replace(3, [Revocation(serial=pki.serials["node-a"])])
                assert revocations.closed == 1
            finally:
                a_channel.close()
                b_channel.close()

    asyncio.run(scenario())


def _connection_lost(channel: grpclib.client.Channel) -> bool:
    protocol = channel._protocol
    return protocol is None or bool(getattr(protocol.handler, "connection_lost", True))


def test_identity_revocation_covers_older_certificates_not_newer(pki: _PKI) -> None:
    """``nodes remove``: every certificate of node/node-a up to now is refused, one
    issued afterwards (notBefore later: a re-join) works."""
    now = dt.datetime.now(dt.UTC)
    pki.issue("node-a@old", "node", not_before=now - dt.timedelta(days=30))
    pki.issue("node-a@new", "node", not_before=now + dt.timedelta(seconds=2))

    async def scenario() -> None:
        revocations = RevocationList()
        revocations.replace(
            1,
            [
                Revocation(
                    identity="node/node-a",
                    not_before_max=now.timestamp(),
                    revoked_at=now.timestamp(),
                    reason="node removed",
                )
            ],
        )
        async with _server(pki, revocations) as port:
            for name in ("node-a", "node-a@old"):
                channel, stub = _channel(pki, name, port)
                try:
                    err = await _refused(stub)
                    assert err.status is Status.UNAUTHENTICATED, name
                    assert "of node/node-a is revoked: node removed" in (err.message or "")
                finally:
                    channel.close()
            # notBefore 2 s ahead: valid once the clock gets there (the handshake checks it).
            await asyncio.sleep(max(0.0, now.timestamp() + 2.5 - time.time()))
            channel, stub = _channel(pki, "node-a@new", port)
            try:
                assert await _who(stub) == "node/node-a"
            finally:
                channel.close()
            channel, stub = _channel(pki, "node-b", port)  # another identity: untouched
            try:
                assert await _who(stub) == "node/node-b"
            finally:
                channel.close()

    asyncio.run(scenario())


def test_admin_from_an_intermediate_refused_node_from_it_works(pki: _PKI) -> None:
    """A Manager's issuing CA may mint node identities, never admin or manager ones."""
    cert_pem, key_pem = pki.root.intermediate("manager-1")
    (pki.dir / "issuing.crt").write_bytes(cert_pem)
    (pki.dir / "issuing.key").write_bytes(key_pem)
    issuing = CertificateAuthority.load_files(pki.dir / "issuing.crt", pki.dir / "issuing.key")
    pki.issue("admin@issued", "admin", ca=issuing)
    pki.issue("node-c", "node", ca=issuing)

    async def scenario() -> None:
        async with _server(pki, RevocationList()) as port:
            channel, stub = _channel(pki, "admin@issued", port)
            try:
                err = await _refused(stub)
                assert err.status is Status.PERMISSION_DENIED
                assert "without a Fleet identity may not call RegisterNode" in (err.message or "")
            finally:
                channel.close()
            channel, stub = _channel(pki, "node-c", port)
            try:
                assert await _who(stub) == "node/node-c"
            finally:
                channel.close()
            channel, stub = _channel(pki, "admin", port)  # the root's admin: fine
            try:
                assert await _who(stub) == "admin/admin"
            finally:
                channel.close()

    asyncio.run(scenario())


def test_revocation_list_json_round_trip_and_check() -> None:
    """What a Daemon persists between restarts reads back the same, and a malformed
    document is refused without touching the list."""
    held = RevocationList()
    held.replace(
        7,
        [
            Revocation(serial="1a2b", reason="lost"),
            Revocation(identity="node/web-1", not_before_max=1000.0, reason="removed"),
            Revocation(identity="node/web-1", not_before_max=2000.0, reason="removed again"),
        ],
    )
    copy = RevocationList()
    copy.load_json(held.to_json())
    assert copy.version == 7 and sorted(map(str, copy.entries())) == sorted(
        map(str, held.entries())
    )
    web1 = PeerCertificate(
        serial="ff", identity=None, not_before=1500.0, not_after=9e9, by_root=True
    )
    assert copy.check(web1) is None  # no identity: only its serial counts
    with pytest.raises(ValueError, match="malformed revocation list"):
        copy.load_json({"version": "x", "revocations": []})
    assert copy.version == 7
