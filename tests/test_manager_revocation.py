"""Revocation and certificate reload on real ``fleet-manager`` processes.

Each test gets its own certificate directory (``fleet_certs``: CA with its key, manager,
admin, nodes), so revoking a certificate here never touches another module's. Clients
are plain grpclib channels presenting node or admin certificates, held open across the
revocation to see their connections closed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from functools import partial
from pathlib import Path

import grpclib.client
import pytest
from conftest import postgres_url
from cryptography import x509
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError
from harness import async_wait_until, wait_until
from harness.manager import (
    fleet_certs,
    manager_rpc,
    manager_rpc_error,
    start_manager,
    write_manager_config,
)

from common.pki import CertificateAuthority, normalize_serial
from common.tls import TLSFiles, client_context
from schema import admin_pb, manager_pb


def _serial(path: Path) -> str:
    return normalize_serial(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)


def _colon_upper(serial: str) -> str:
    """As ``openssl x509 -serial`` or a browser shows it: ``0A:1B:…``."""
    digits = serial.upper().rjust(len(serial) + len(serial) % 2, "0")
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def _issue(certs: Path, name: str, role: str) -> None:
    ca = CertificateAuthority.load(certs)
    cert_pem, key_pem = ca.issue(role, name)
    (certs / f"{name}.crt").write_bytes(cert_pem)
    (certs / f"{name}.key").write_bytes(key_pem)


def _channel(certs: Path, name: str, port: int) -> grpclib.client.Channel:
    files = TLSFiles(certs / f"{name}.crt", certs / f"{name}.key", certs / "ca.crt")
    return grpclib.client.Channel(
        "127.0.0.1", port, ssl=client_context(files, expect_role="manager")
    )


def _lost(channel: grpclib.client.Channel) -> bool:
    protocol = channel._protocol
    return protocol is None or bool(getattr(protocol.handler, "connection_lost", True))


async def _wait_lost(channel: grpclib.client.Channel, what: str) -> None:
    async def lost() -> bool:
        return _lost(channel)

    await async_wait_until(lost, timeout=20, what=what)


def _config(tmp_path: Path, refresh: str = "0.5s") -> list[str]:
    path = write_manager_config(
        tmp_path / "manager.toml", {"grpc.tls": {"revocation_refresh": refresh}}
    )
    return ["--config", str(path)]


def test_remove_node_closes_its_connection_and_refuses_its_certificate(tmp_path: Path) -> None:
    certs = fleet_certs(tmp_path / "certs", ["node-a", "node-c"])
    mgr = start_manager(tmp_path, certs)
    try:

        async def scenario() -> None:
            node = _channel(certs, "node-c", mgr.grpc_port)
            other = _channel(certs, "node-a", mgr.grpc_port)
            try:
                stub = manager_pb.ManagerServiceStub(node, timeout=15)
                other_stub = manager_pb.ManagerServiceStub(other, timeout=15)
                for s, node_id in ((stub, "node-c"), (other_stub, "node-a")):
                    await s.register_node(
                        manager_pb.RegisterNodeRequest(
                            node_id=node_id, daemon_address="127.0.0.1:1"
                        )
                    )
                beat = await stub.heartbeat(manager_pb.HeartbeatRequest(node_id="node-c"))
                assert beat.success and beat.revocations_version == 0
                admin = _channel(certs, "admin", mgr.grpc_port)
                try:
                    reply = await admin_pb.AdminServiceStub(admin, timeout=15).remove_node(
                        admin_pb.RemoveNodeRequest(node_id="node-c", force=True)
                    )
                finally:
                    admin.close()
                assert reply.removed and reply.certificates_revoked
                # Its open connection is closed by the Manager, at once.
                await _wait_lost(node, "node-c's open connection closed")
                with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError)) as err:
                    await stub.heartbeat(manager_pb.HeartbeatRequest(node_id="node-c"))
                if isinstance(err.value, GRPCError):
                    assert err.value.status is Status.UNAUTHENTICATED
                # A new connection with the same certificate: refused, saying why.
                node.close()
                node = _channel(certs, "node-c", mgr.grpc_port)
                stub = manager_pb.ManagerServiceStub(node, timeout=15)
                with pytest.raises(GRPCError) as refused:
                    await stub.register_node(
                        manager_pb.RegisterNodeRequest(node_id="node-c", daemon_address="h:1")
                    )
                assert refused.value.status is Status.UNAUTHENTICATED
                assert "of node/node-c is revoked: node removed" in (refused.value.message or "")
                # node-a is untouched and learns the new version at its next heartbeat.
                assert not _lost(other)
                beat = await other_stub.heartbeat(manager_pb.HeartbeatRequest(node_id="node-a"))
                assert beat.revocations_version >= 1
                full = await other_stub.get_revocations(manager_pb.GetRevocationsRequest())
                assert full.version == beat.revocations_version and not full.unchanged
                [entry] = full.revocations
                assert (entry.identity, entry.serial, entry.reason) == (
                    "node/node-c",
                    "",
                    "node removed",
                )
                assert entry.not_before_max > 0 and entry.revoked_at > 0
                same = await other_stub.get_revocations(
                    manager_pb.GetRevocationsRequest(known_version=full.version)
                )
                assert same.unchanged and same.version == full.version and not same.revocations
                with pytest.raises(GRPCError) as bad:
                    await other_stub.get_revocations(
                        manager_pb.GetRevocationsRequest(known_version=-1)
                    )
                assert bad.value.status is Status.INVALID_ARGUMENT
            finally:
                node.close()
                other.close()

        asyncio.run(scenario())
        nodes = manager_rpc(
            certs, mgr.grpc_port, "admin", "list_nodes", admin_pb.ListNodesRequest()
        )
        assert [n.node_id for n in nodes.nodes] == ["node-a"]  # node-c did not come back
        assert "its certificates revoked, 1 open connection(s) closed" in mgr.output()
    finally:
        mgr.stop()


def test_revoked_admin_certificate_is_refused_and_stays_refused_after_restart(
    tmp_path: Path,
) -> None:
    certs = fleet_certs(tmp_path / "certs", [])
    _issue(certs, "admin-2", "admin")
    serial = _serial(certs / "admin-2.crt")
    mgr = start_manager(tmp_path, certs)
    try:

        async def scenario() -> admin_pb.RevokeCertificateResponse:
            held = _channel(certs, "admin-2", mgr.grpc_port)
            admin = _channel(certs, "admin", mgr.grpc_port)
            try:
                held_stub = admin_pb.AdminServiceStub(held, timeout=15)
                await held_stub.list_nodes(admin_pb.ListNodesRequest())
                reply = await admin_pb.AdminServiceStub(admin, timeout=15).revoke_certificate(
                    admin_pb.RevokeCertificateRequest(
                        serial=_colon_upper(serial), reason="laptop stolen"
                    )
                )
                await _wait_lost(held, "admin-2's open connection closed")
                return reply
            finally:
                held.close()
                admin.close()

        reply = asyncio.run(scenario())
        cert = reply.certificate
        assert (cert.serial, cert.identity, cert.issued_at, cert.issued_by) == (serial, "", 0, "")
        assert (cert.revoked_reason, cert.revoked_by) == ("laptop stolen", "admin/admin")
        assert cert.revoked_at > 0 and reply.connections_closed == 1

        status, message = manager_rpc_error(
            certs, mgr.grpc_port, "admin-2", "list_nodes", admin_pb.ListNodesRequest()
        )
        assert status is Status.UNAUTHENTICATED
        assert message == f"certificate {serial} of admin/admin-2 is revoked: laptop stolen"
        manager_rpc(certs, mgr.grpc_port, "admin", "list_nodes", admin_pb.ListNodesRequest())

        # Idempotent: the first revocation stays as it was.
        again = manager_rpc(
            certs,
            mgr.grpc_port,
            "admin",
            "revoke_certificate",
            admin_pb.RevokeCertificateRequest(serial=serial, reason="other reason"),
        )
        assert again.certificate.revoked_at == cert.revoked_at
        assert again.certificate.revoked_reason == "laptop stolen"
        assert again.connections_closed == 0
        for bad, why in (("", "serial is required"), ("xyz", "invalid serial"), ("1" * 300, "max")):
            status, message = manager_rpc_error(
                certs,
                mgr.grpc_port,
                "admin",
                "revoke_certificate",
                admin_pb.RevokeCertificateRequest(serial=bad),
            )
            assert status is Status.INVALID_ARGUMENT and why in message, (bad, message)
        status, message = manager_rpc_error(
            certs,
            mgr.grpc_port,
            "admin",
            "revoke_certificate",
            admin_pb.RevokeCertificateRequest(serial="ab", reason="bad\x1b[2J"),
        )
        assert status is Status.INVALID_ARGUMENT and "reason" in message
        # Only admins revoke (the Manager's own certificate may not).
        status, _ = manager_rpc_error(
            certs,
            mgr.grpc_port,
            "manager",
            "revoke_certificate",
            admin_pb.RevokeCertificateRequest(serial="ab"),
        )
        assert status is Status.PERMISSION_DENIED

        mgr.stop()
        mgr = start_manager(tmp_path, certs, log_name="manager-restarted.log")  # same SQLite
        status, message = manager_rpc_error(
            certs, mgr.grpc_port, "admin-2", "list_nodes", admin_pb.ListNodesRequest()
        )
        assert status is Status.UNAUTHENTICATED and "laptop stolen" in message
        manager_rpc(certs, mgr.grpc_port, "admin", "list_nodes", admin_pb.ListNodesRequest())
    finally:
        mgr.stop()


def test_an_admin_revoking_its_own_certificate_gets_the_answer_then_loses_the_connection(
    tmp_path: Path,
) -> None:
    certs = fleet_certs(tmp_path / "certs", [])
    _issue(certs, "admin-3", "admin")
    serial = _serial(certs / "admin-3.crt")
    mgr = start_manager(tmp_path, certs)
    try:

        async def scenario() -> admin_pb.RevokeCertificateResponse:
            channel = _channel(certs, "admin-3", mgr.grpc_port)
            try:
                stub = admin_pb.AdminServiceStub(channel, timeout=15)
                reply = await stub.revoke_certificate(
                    admin_pb.RevokeCertificateRequest(serial=serial, reason="leaving")
                )
                await _wait_lost(channel, "the revoking admin's own connection closed")
                return reply
            finally:
                channel.close()

        reply = asyncio.run(scenario())
        assert reply.certificate.serial == serial
        assert reply.certificate.revoked_by == "admin/admin-3"
        assert reply.connections_closed == 1
        status, message = manager_rpc_error(
            certs, mgr.grpc_port, "admin-3", "list_nodes", admin_pb.ListNodesRequest()
        )
        assert status is Status.UNAUTHENTICATED and "leaving" in message
    finally:
        mgr.stop()


@pytest.mark.postgres
def test_two_managers_on_one_postgres_both_enforce_a_revocation(tmp_path: Path) -> None:
    base = postgres_url()
    if not base:
        pytest.skip("PostgreSQL not configured: set FLEET_TEST_POSTGRES=postgres://user@host/db")
    from harness.pg import throwaway_database

    certs = fleet_certs(tmp_path / "certs", ["node-a", "node-b"])
    with throwaway_database(base) as db_url:
        first = start_manager(
            tmp_path / "one", certs, db_url=db_url, extra_args=_config(tmp_path, "0.5s")
        )
        second = start_manager(
            tmp_path / "two", certs, db_url=db_url, extra_args=_config(tmp_path, "0.5s")
        )
        try:

            async def scenario() -> None:
                held = _channel(certs, "node-a", second.grpc_port)
                try:
                    stub = manager_pb.ManagerServiceStub(held, timeout=15)
                    await stub.get_revocations(manager_pb.GetRevocationsRequest())
                    admin = _channel(certs, "admin", first.grpc_port)
                    try:
                        reply = await admin_pb.AdminServiceStub(
                            admin, timeout=15
                        ).revoke_certificate(
                            admin_pb.RevokeCertificateRequest(
                                serial=_serial(certs / "node-a.crt"), reason="compromised"
                            )
                        )
                    finally:
                        admin.close()
                    # Not connected to the first Manager: nothing closed there.
                    assert reply.connections_closed == 0
                    # The second Manager reads the new version and closes node-a's channel.
                    await _wait_lost(held, "node-a's connection to the other Manager closed")
                finally:
                    held.close()

            asyncio.run(scenario())
            for mgr in (first, second):
                status, message = manager_rpc_error(
                    certs, mgr.grpc_port, "node-a", "get_revocations", _revocations_request()
                )
                assert status is Status.UNAUTHENTICATED and "compromised" in message
                versions = manager_rpc(
                    certs, mgr.grpc_port, "node-b", "get_revocations", _revocations_request()
                )
                assert versions.version == 1
                assert [r.serial for r in versions.revocations] == [_serial(certs / "node-a.crt")]

            # Concurrent revocations on both Managers: every one gets its own version.
            async def revoke_many() -> None:
                async def revoke(port: int, serial: str) -> None:
                    admin = _channel(certs, "admin", port)
                    try:
                        await admin_pb.AdminServiceStub(admin, timeout=30).revoke_certificate(
                            admin_pb.RevokeCertificateRequest(serial=serial)
                        )
                    finally:
                        admin.close()

                await asyncio.gather(
                    *(
                        revoke((first, second)[i % 2].grpc_port, format(0xF1EE7000 + i, "x"))
                        for i in range(20)
                    )
                )

            asyncio.run(revoke_many())

            def caught_up(port: int) -> bool:
                got = manager_rpc(certs, port, "node-b", "get_revocations", _revocations_request())
                return got.version == 21 and len(got.revocations) == 21

            for port in (first.grpc_port, second.grpc_port):
                wait_until(partial(caught_up, port), timeout=20, what="version 21")
        finally:
            first.stop()
            second.stop()


def _revocations_request() -> manager_pb.GetRevocationsRequest:
    return manager_pb.GetRevocationsRequest(known_version=0)


async def _server_serial(port: int, context: ssl.SSLContext) -> str:
    """The serial of the certificate a new TLS connection to ``port`` is shown."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return normalize_serial(x509.load_der_x509_certificate(der).serial_number)
    finally:
        writer.close()


def test_sighup_reloads_the_certificate_without_dropping_connections(tmp_path: Path) -> None:
    certs = fleet_certs(tmp_path / "certs", ["node-a"])
    old_serial = _serial(certs / "manager.crt")
    mgr = start_manager(tmp_path, certs)
    files = TLSFiles(certs / "node-a.crt", certs / "node-a.key", certs / "ca.crt")
    try:

        async def scenario() -> None:
            context = client_context(files, expect_role="manager")
            held = _channel(certs, "node-a", mgr.grpc_port)
            try:
                stub = manager_pb.ManagerServiceStub(held, timeout=15)
                await stub.get_revocations(manager_pb.GetRevocationsRequest())
                protocol = held._protocol
                assert await _server_serial(mgr.grpc_port, context) == old_serial

                # A new certificate for the Manager, written over the old files.
                ca = CertificateAuthority.load(certs)
                cert_pem, key_pem = ca.issue("manager", "manager", sans=["127.0.0.1"])
                staging = tmp_path / "staging"
                staging.mkdir()
                (staging / "manager.crt").write_bytes(cert_pem)
                (staging / "manager.key").write_bytes(key_pem)
                new_serial = _serial(staging / "manager.crt")
                os.replace(staging / "manager.key", certs / "manager.key")
                os.replace(staging / "manager.crt", certs / "manager.crt")
                offset = len(mgr.output())
                mgr.signal(signal.SIGHUP)
                wait_until(
                    lambda: (
                        f"reloaded TLS certificate: serial {new_serial}" in mgr.output()[offset:]
                    ),
                    timeout=20,
                    what="the reload log line",
                )
                assert await _server_serial(mgr.grpc_port, context) == new_serial
                # The connection opened before the reload goes on, on the same transport.
                await stub.get_revocations(manager_pb.GetRevocationsRequest())
                assert held._protocol is protocol and not _lost(held)

                # A broken file: logged naming it, the certificate in use stays.
                (certs / "manager.key").write_text("not a key\n")
                offset = len(mgr.output())
                mgr.signal(signal.SIGHUP)
                wait_until(
                    lambda: "TLS reload refused" in mgr.output()[offset:],
                    timeout=20,
                    what="the refused reload",
                )
                line = next(
                    ln for ln in mgr.output()[offset:].splitlines() if "TLS reload refused" in ln
                )
                assert f"keeping certificate {new_serial}" in line and "manager.key" in line
                assert await _server_serial(mgr.grpc_port, context) == new_serial
                await stub.get_revocations(manager_pb.GetRevocationsRequest())
            finally:
                held.close()

        asyncio.run(scenario())
        assert mgr.alive()
        assert "Traceback" not in mgr.output()
    finally:
        mgr.stop()


def test_sighup_without_tls_is_harmless(tmp_path: Path) -> None:
    mgr = start_manager(tmp_path, None, insecure=True)
    try:
        offset = len(mgr.output())
        mgr.signal(signal.SIGHUP)
        wait_until(
            lambda: "TLS reload asked for, but TLS is off" in mgr.output()[offset:],
            what="the warning",
        )
        assert mgr.alive()
    finally:
        mgr.stop()
