"""Onboarding on a real Manager: join tokens, the enrollment port, node certificates signed
by an issuing CA (an intermediate made by certgen), renewal, and what is refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import Proc, free_port, wait_until
from harness.manager import (
    ManagerProc,
    manager_argv,
    manager_rpc,
    manager_rpc_error,
    start_manager,
    write_manager_config,
)

from common import certgen
from common.pki import CertificateAuthority, make_csr, spiffe_id
from schema import admin_pb, manager_pb
from schema.gen.fleet.enroll import v1 as enroll_pb

LIFETIME = 2 * 3600  # enroll.node_cert_lifetime in these tests


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dev certificates (root CA, manager, admin, node-a), an issuing CA ``issuing`` under
    the root, and ``mallory``: an admin certificate the issuing CA signed (chain in the
    file), which must never count as an admin."""
    directory = tmp_path_factory.mktemp("pki")
    certgen.dev(directory, ["node-a"], echo=lambda _line: None)
    certgen.intermediate(directory, "issuing")
    issuing = CertificateAuthority.load_files(directory / "issuing.crt", directory / "issuing.key")
    cert_pem, key_pem = issuing.issue("admin", "mallory")
    (directory / "mallory.crt").write_bytes(cert_pem + issuing.cert_pem)
    (directory / "mallory.key").write_bytes(key_pem)
    return directory


def enroll_args(pki: Path) -> list[str]:
    return [
        "--enroll-ca-cert",
        str(pki / "issuing.crt"),
        "--enroll-ca-key",
        str(pki / "issuing.key"),
    ]


def config_file(tmp_path: Path, **enroll: Any) -> list[str]:
    values = {"node_cert_lifetime": f"{LIFETIME}s", "join_rate_per_minute": 10_000, **enroll}
    return ["--config", str(write_manager_config(tmp_path / "m.toml", {"enroll": values}))]


@pytest.fixture
def manager(tmp_path: Path, pki: Path, db_url: str) -> Iterator[ManagerProc]:
    proc = start_manager(
        tmp_path, pki, db_url=db_url, extra_args=[*config_file(tmp_path), *enroll_args(pki)]
    )
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


# ---- helpers ----


def enroll_context(pki: Path) -> ssl.SSLContext:
    """What a joining host uses once it trusts the root: verify the Manager, no cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki / "ca.crt"))
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    return ctx


async def _enroll_call(pki: Path, port: int, method: str, request: Any) -> Any:
    channel = Channel("127.0.0.1", port, ssl=enroll_context(pki))
    try:
        stub = enroll_pb.EnrollServiceStub(channel, timeout=30)
        return await getattr(stub, method)(request)
    finally:
        channel.close()


def join(
    pki: Path, port: int, token: str, node_id: str, csr_pem: bytes | None = None
) -> tuple[enroll_pb.JoinResponse, bytes]:
    """Join as ``node_id``; returns the reply and the private key (PEM)."""
    key_pem, csr = make_csr(node_id)
    request = enroll_pb.JoinRequest(
        token=token, node_id=node_id, csr_pem=(csr_pem or csr).decode(), hostname=node_id
    )
    return asyncio.run(_enroll_call(pki, port, "join", request)), key_pem


def join_error(pki: Path, port: int, token: str, node_id: str, **kw: Any) -> tuple[Status, str]:
    try:
        join(pki, port, token, node_id, **kw)
    except GRPCError as exc:
        return exc.status, exc.message or ""
    raise AssertionError(f"join as {node_id} unexpectedly succeeded")


def admin(pki: Path, port: int, method: str, request: Any, cert: str = "admin") -> Any:
    return manager_rpc(pki, port, cert, method, request)


def create_token(pki: Path, port: int, **kw: Any) -> admin_pb.CreateJoinTokenResponse:
    return admin(pki, port, "create_join_token", admin_pb.CreateJoinTokenRequest(**kw))


def certificates(pki: Path, port: int, **kw: Any) -> list[admin_pb.Certificate]:
    reply = admin(pki, port, "list_certificates", admin_pb.ListCertificatesRequest(**kw))
    return list(reply.certificates)


def token_info(pki: Path, port: int, token_id: str) -> admin_pb.JoinToken:
    reply = admin(pki, port, "list_join_tokens", admin_pb.ListJoinTokensRequest(all=True))
    return next(t for t in reply.tokens if t.id == token_id)


def node_dir(pki: Path, directory: Path, node_id: str, cert_pem: str, key_pem: bytes) -> Path:
    """A certificate directory for the harness' channels: ca.crt, NODE.crt, NODE.key."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(pki / "ca.crt", directory / "ca.crt")
    (directory / f"{node_id}.crt").write_text(cert_pem)
    (directory / f"{node_id}.key").write_bytes(key_pem)
    return directory


def register(certs: Path, port: int, node_id: str, labels: dict[str, str], instance: str) -> None:
    manager_rpc(
        certs,
        port,
        node_id,
        "register_node",
        manager_pb.RegisterNodeRequest(
            node_id=node_id,
            hostname=node_id,
            labels=labels,
            daemon_address=f"127.0.0.1:{free_port()}",
            heartbeat_interval_seconds=10,
            instance_id=instance,
        ),
    )


def node_labels(pki: Path, port: int, node_id: str) -> dict[str, str]:
    reply = admin(pki, port, "get_node", admin_pb.GetNodeRequest(node_id=node_id))
    return dict(reply.node.labels)


# ---- tests ----


def test_join_gives_a_working_node_certificate(
    manager: ManagerProc, pki: Path, tmp_path: Path
) -> None:
    port = manager.grpc_port
    assert manager.enroll_port, manager.output()[-2000:]
    created = create_token(
        pki, port, max_uses=2, labels={"role": "web", "tier": "1"}, description="rack 4"
    )
    token_id, _, secret = created.token.partition(".")
    assert len(token_id) == 6 and len(secret) == 16 and created.token.islower()
    assert created.ca_hash == certgen.root_hash(pki)
    assert created.enroll_address == f"127.0.0.1:{manager.enroll_port}"
    assert created.info.created_by == "admin/admin"
    assert created.info.status == "active" and created.info.max_uses == 2
    assert 3500 <= created.info.expires_at - created.info.created_at <= 3600

    got_ca = asyncio.run(_enroll_call(pki, manager.enroll_port, "get_ca", enroll_pb.GetCaRequest()))
    assert got_ca.ca_pem == (pki / "ca.crt").read_text()

    reply, key_pem = join(pki, manager.enroll_port, created.token, "web-7")
    assert reply.node_id == "web-7"
    assert reply.labels == {"role": "web", "tier": "1"}
    assert reply.manager_addresses == [manager.address]
    assert reply.ca_pem == (pki / "ca.crt").read_text()
    # The certificate chains to the root through the issuing CA, and says who it is.
    leaf, intermediate = x509.load_pem_x509_certificates(reply.cert_pem.encode())
    root = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    assert intermediate == x509.load_pem_x509_certificate((pki / "issuing.crt").read_bytes())
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id("node", "web-7")]
    assert format(leaf.serial_number, "x") == reply.serial
    assert int(leaf.not_valid_after_utc.timestamp()) == reply.not_after
    now = dt.datetime.now(dt.UTC)
    assert abs((leaf.not_valid_after_utc - now).total_seconds() - LIFETIME) < 120
    assert leaf.not_valid_before_utc <= now

    # That certificate works on the main port; the token's labels win over the Daemon's.
    certs = node_dir(pki, tmp_path / "web-7", "web-7", reply.cert_pem, key_pem)
    register(certs, port, "web-7", {"role": "db", "zone": "a"}, "inst-1")
    beat = manager_rpc(
        certs, port, "web-7", "heartbeat", manager_pb.HeartbeatRequest(node_id="web-7")
    )
    assert beat.success
    assert node_labels(pki, port, "web-7") == {"role": "web", "tier": "1", "zone": "a"}
    # Registering again (same Daemon instance, cached) keeps them.
    register(certs, port, "web-7", {"role": "db"}, "inst-1")
    assert node_labels(pki, port, "web-7") == {"role": "web", "tier": "1"}

    info = token_info(pki, port, token_id)
    assert (info.uses, info.nodes, info.status) == (1, ["web-7"], "active")
    issued = certificates(pki, port, node_id="web-7")
    assert [(c.serial, c.identity, c.issued_by, c.token_id) for c in issued] == [
        (reply.serial, "node/web-7", "join", token_id)
    ]

    # Renewal: a new certificate for the caller's own identity, whatever the CSR says.
    new_key, csr = make_csr("admin")
    renewed = manager_rpc(
        certs,
        port,
        "web-7",
        "renew_certificate",
        manager_pb.RenewCertificateRequest(csr_pem=csr.decode()),
    )
    new_leaf = x509.load_pem_x509_certificates(renewed.cert_pem.encode())[0]
    new_leaf.verify_directly_issued_by(intermediate)
    assert renewed.serial != reply.serial and renewed.serial == format(new_leaf.serial_number, "x")
    uris = new_leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe_id("node", "web-7")]
    assert renewed.ca_pem == (pki / "ca.crt").read_text()
    # ...and it works too.
    renewed_certs = node_dir(pki, tmp_path / "web-7-renewed", "web-7", renewed.cert_pem, new_key)
    register(renewed_certs, port, "web-7", {}, "inst-1")
    issued = certificates(pki, port, node_id="web-7")
    assert [(c.serial, c.issued_by) for c in issued] == [
        (renewed.serial, "renew"),
        (reply.serial, "join"),
    ]
    status, message = manager_rpc_error(
        certs,
        port,
        "web-7",
        "renew_certificate",
        manager_pb.RenewCertificateRequest(csr_pem="not a csr"),
    )
    assert status == Status.INVALID_ARGUMENT and "csr_pem" in message
    assert "node web-7 joined with token " + token_id in manager.output()


def test_refused_joins_issue_nothing(manager: ManagerProc, pki: Path) -> None:
    port, enroll = manager.grpc_port, manager.enroll_port
    assert enroll
    good = create_token(pki, port, max_uses=1).token
    token_id, _, secret = good.partition(".")
    for bad in (f"{token_id}.{'a' * 16}", "abcdef.0123456789abcdef", "nonsense", ""):
        status, message = join_error(pki, enroll, bad, "web-1")
        assert (status, message) == (Status.UNAUTHENTICATED, "invalid join token"), bad

    status, message = join_error(pki, enroll, good, "bad/name")
    assert status == Status.INVALID_ARGUMENT and "node_id" in message
    status, message = join_error(pki, enroll, good, "web-1", csr_pem=b"-----BEGIN nothing")
    assert status == Status.INVALID_ARGUMENT and "csr_pem" in message

    # A registered node id: remove it first.
    register(pki, port, "node-a", {}, "a-1")
    status, message = join_error(pki, enroll, good, "node-a")
    assert status == Status.ALREADY_EXISTS
    assert "fleetctl nodes remove node-a" in message and "--node-id" in message

    # Used up.
    join(pki, enroll, good, "web-1")
    status, message = join_error(pki, enroll, good, "web-2")
    assert status == Status.PERMISSION_DENIED and f"{token_id} has no uses left" in message

    # Revoked.
    revocable = create_token(pki, port).token
    revoked = admin(
        pki, port, "revoke_join_token", admin_pb.RevokeJoinTokenRequest(id=revocable[:6])
    )
    assert revoked.token.status == "revoked" and revoked.token.revoked_at
    status, message = join_error(pki, enroll, revocable, "web-3")
    assert status == Status.PERMISSION_DENIED and "was revoked" in message

    # Expired.
    short = create_token(pki, port, ttl_seconds=1)
    wait_until(lambda: time.time() > short.info.expires_at + 1.5, timeout=10, what="expiry")
    status, message = join_error(pki, enroll, short.token, "web-4")
    assert status == Status.PERMISSION_DENIED and "has expired" in message

    # Only the one successful join issued anything; nothing was counted for the others.
    assert [c.identity for c in certificates(pki, port)] == ["node/web-1"]
    assert token_info(pki, port, token_id).uses == 1
    assert token_info(pki, port, revocable[:6]).uses == 0
    log = manager.output()
    assert secret not in log and revocable.split(".")[1] not in log
    assert "join refused: PERMISSION_DENIED" in log and f"token {token_id}" in log


def test_token_admin_rpcs_validate_input(manager: ManagerProc, pki: Path) -> None:
    port = manager.grpc_port
    for kw, needle in (
        ({"ttl_seconds": 31 * 86400}, "token_max_ttl"),
        ({"ttl_seconds": -5}, "negative"),
        ({"max_uses": -1}, "max_uses"),
        ({"labels": {"bad key!": "x"}}, "labels"),
        ({"description": "a\x1b[31mred"}, "description"),
    ):
        status, message = manager_rpc_error(
            pki, port, "admin", "create_join_token", admin_pb.CreateJoinTokenRequest(**kw)
        )
        assert status == Status.INVALID_ARGUMENT and needle in message, (kw, message)
    status, message = manager_rpc_error(
        pki, port, "admin", "revoke_join_token", admin_pb.RevokeJoinTokenRequest(id="zzzzzz")
    )
    assert status == Status.NOT_FOUND and "zzzzzz" in message
    status, _ = manager_rpc_error(
        pki, port, "admin", "revoke_join_token", admin_pb.RevokeJoinTokenRequest(id="../x")
    )
    assert status == Status.INVALID_ARGUMENT
    status, _ = manager_rpc_error(
        pki, port, "admin", "list_certificates", admin_pb.ListCertificatesRequest(limit=-1)
    )
    assert status == Status.INVALID_ARGUMENT
    # A node may not create tokens.
    status, _ = manager_rpc_error(
        pki, port, "node-a", "list_join_tokens", admin_pb.ListJoinTokensRequest()
    )
    assert status == Status.PERMISSION_DENIED

    active = create_token(pki, port).token[:6]
    stopped = create_token(pki, port).token[:6]
    admin(pki, port, "revoke_join_token", admin_pb.RevokeJoinTokenRequest(id=stopped))
    listed = admin(pki, port, "list_join_tokens", admin_pb.ListJoinTokensRequest())
    assert [t.id for t in listed.tokens] == [active]
    everything = admin(pki, port, "list_join_tokens", admin_pb.ListJoinTokensRequest(all=True))
    assert {t.id: t.status for t in everything.tokens} == {active: "active", stopped: "revoked"}


def test_concurrent_joins_spend_exactly_the_uses(tmp_path: Path, pki: Path, db_url: str) -> None:
    """Ten joins at once on a three-use token: three certificates, seven refusals. On
    PostgreSQL through two Managers on the one database; SQLite serves one Manager."""
    extra = [*config_file(tmp_path), *enroll_args(pki)]
    managers = [start_manager(tmp_path / "m1", pki, db_url=db_url, extra_args=extra)]
    try:
        if not db_url.startswith("sqlite"):
            managers.append(start_manager(tmp_path / "m2", pki, db_url=db_url, extra_args=extra))
        token = create_token(pki, managers[0].grpc_port, max_uses=3).token
        ports = [m.enroll_port for m in managers]

        async def attempt(i: int) -> str:
            _, csr = make_csr(f"n{i}")
            request = enroll_pb.JoinRequest(
                token=token, node_id=f"n{i}", csr_pem=csr.decode(), hostname=f"n{i}"
            )
            try:
                await _enroll_call(pki, ports[i % len(ports)] or 0, "join", request)
            except GRPCError as exc:
                return exc.status.name
            return "OK"

        async def all_at_once() -> list[str]:
            return await asyncio.gather(*(attempt(i) for i in range(10)))

        outcomes = asyncio.run(all_at_once())
        assert sorted(outcomes) == ["OK"] * 3 + ["PERMISSION_DENIED"] * 7, outcomes
        info = token_info(pki, managers[-1].grpc_port, token[:6])
        assert (info.uses, info.status, len(info.nodes)) == (3, "used", 3)
        assert len(certificates(pki, managers[0].grpc_port)) == 3
    finally:
        for m in reversed(managers):
            assert m.stop() == 0, m.output()[-3000:]


def test_rejoin_after_removal_gets_new_labels(
    manager: ManagerProc, pki: Path, tmp_path: Path
) -> None:
    """A node removed and joined again with another token: a certificate its removal does
    not cover, and the new token's labels (read afresh, not from a cache)."""
    port, enroll = manager.grpc_port, manager.enroll_port
    assert enroll
    first = create_token(pki, port, labels={"role": "web"}).token
    reply, key = join(pki, enroll, first, "host-1")
    certs = node_dir(pki, tmp_path / "one", "host-1", reply.cert_pem, key)
    register(certs, port, "host-1", {}, "i-1")
    assert node_labels(pki, port, "host-1") == {"role": "web"}
    admin(pki, port, "remove_node", admin_pb.RemoveNodeRequest(node_id="host-1", force=True))

    second = create_token(pki, port, labels={"role": "db"}).token
    reply2, key2 = join(pki, enroll, second, "host-1")
    certs2 = node_dir(pki, tmp_path / "two", "host-1", reply2.cert_pem, key2)
    # Its notBefore is after the removal's revocation time: up to a second from now.
    leaf = x509.load_pem_x509_certificates(reply2.cert_pem.encode())[0]
    assert (
        leaf.not_valid_before_utc
        > x509.load_pem_x509_certificates(reply.cert_pem.encode())[0].not_valid_before_utc
    )

    def registered() -> bool:
        register(certs2, port, "host-1", {}, "i-2")
        return True

    wait_until(registered, timeout=15, what="the new certificate to be accepted")
    assert node_labels(pki, port, "host-1") == {"role": "db"}


def test_without_issuing_ca_joins_are_refused(tmp_path: Path, pki: Path) -> None:
    proc = start_manager(tmp_path, pki, extra_args=config_file(tmp_path))
    try:
        assert "no issuing CA (enroll.ca_cert is not set)" in proc.output()
        assert proc.enroll_port
        status, message = manager_rpc_error(
            pki, proc.grpc_port, "admin", "create_join_token", admin_pb.CreateJoinTokenRequest()
        )
        assert status == Status.FAILED_PRECONDITION
        assert message == (
            "this Manager has no issuing CA: set enroll.ca_cert and enroll.ca_key "
            "(docs/security.md)"
        )
        status, message = join_error(pki, proc.enroll_port, "abcdef.0123456789abcdef", "web-1")
        assert status == Status.FAILED_PRECONDITION and "enroll.ca_cert" in message
        _, csr = make_csr("node-a")
        status, message = manager_rpc_error(
            pki,
            proc.grpc_port,
            "node-a",
            "renew_certificate",
            manager_pb.RenewCertificateRequest(csr_pem=csr.decode()),
        )
        assert status == Status.FAILED_PRECONDITION and "enroll.ca_cert" in message
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]


def test_join_rate_limit_per_address(tmp_path: Path, pki: Path) -> None:
    extra = [*config_file(tmp_path, join_rate_per_minute=3), *enroll_args(pki)]
    proc = start_manager(tmp_path, pki, extra_args=extra)
    try:
        assert proc.enroll_port
        token = create_token(pki, proc.grpc_port).token
        join(pki, proc.enroll_port, token, "r-1")
        # A refusal counts double: 1 + 2 = 3 attempts' worth spent.
        assert join_error(pki, proc.enroll_port, "wrong", "r-2")[0] == Status.UNAUTHENTICATED
        status, message = join_error(pki, proc.enroll_port, token, "r-3")
        assert status == Status.RESOURCE_EXHAUSTED and "retry in" in message
        assert "too many attempts from 127.0.0.1" in proc.output()
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]


def test_enrollment_port_serves_nothing_else(manager: ManagerProc, pki: Path) -> None:
    """The port without client certificates answers EnrollService only."""
    assert manager.enroll_port

    async def call() -> None:
        channel = Channel("127.0.0.1", manager.enroll_port or 0, ssl=enroll_context(pki))
        try:
            await admin_pb.AdminServiceStub(channel, timeout=10).list_nodes(
                admin_pb.ListNodesRequest()
            )
        finally:
            channel.close()

    with pytest.raises(GRPCError) as info:
        asyncio.run(call())
    # grpclib answers an unknown method with a trailers-only UNIMPLEMENTED that lacks
    # content-type, which its client reports as UNKNOWN.
    assert info.value.status in (Status.UNIMPLEMENTED, Status.UNKNOWN), info.value


@pytest.mark.parametrize(
    "case", ["key-mismatch", "other-root", "missing-file"], ids=lambda c: str(c)
)
def test_unusable_issuing_ca_stops_the_start(
    tmp_path: Path, pki: Path, case: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cert, key = pki / "issuing.crt", pki / "issuing.key"
    if case == "key-mismatch":
        key = pki / "admin.key"
    elif case == "other-root":
        other = tmp_path_factory.mktemp("other-root")
        certgen.init_ca(other)
        certgen.intermediate(other, "issuing")
        cert, key = other / "issuing.crt", other / "issuing.key"
    else:
        cert = tmp_path / "nope.crt"
    argv = manager_argv(
        tmp_path, pki, extra_args=["--enroll-ca-cert", str(cert), "--enroll-ca-key", str(key)]
    )
    proc = Proc(argv, log_path=tmp_path / "bad.log")
    wait_until(lambda: not proc.alive(), timeout=60, what="the Manager to exit")
    output = proc.output()
    assert proc.stop() == 1, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "enroll.ca_cert" in lines[0], output


def test_admin_certificate_from_issuing_ca_is_not_an_admin(manager: ManagerProc, pki: Path) -> None:
    """The issuing CA can mint node identities and nothing more."""
    admin(pki, manager.grpc_port, "list_nodes", admin_pb.ListNodesRequest())  # the real one
    try:
        admin(pki, manager.grpc_port, "list_nodes", admin_pb.ListNodesRequest(), cert="mallory")
    except GRPCError as exc:
        assert exc.status == Status.PERMISSION_DENIED, exc
    except (ssl.SSLError, ConnectionError, OSError):
        pass  # refused at the handshake: as good
    else:
        pytest.fail("an admin certificate signed by the issuing CA was accepted as admin")


def test_stopped_tokens_are_deleted_after_seven_days(tmp_path: Path) -> None:
    """Revoked, expired and used-up tokens stay listed 7 days after they stopped, then
    go; active ones stay (a real database, the sweep's clock moved forward)."""
    from manager.enroll.admin import EnrollAdmin
    from manager.enroll.issuer import NodeIssuer
    from manager.enroll.labels import EnrollmentLabels
    from manager.store import Database
    from manager.store.enroll import EnrollStore, IssuedCertificate

    day = 86400.0
    clock = [1_000_000.0]

    async def run() -> list[str]:
        db = Database(url=f"sqlite://{tmp_path / 'purge.sqlite3'}")
        await db.start()
        try:
            store = EnrollStore(database=db)
            labels = EnrollmentLabels(store=store)
            issuer = NodeIssuer(store=store, ca=None, lifetime=LIFETIME, labels=labels)
            admin_rpcs = EnrollAdmin(
                store=store,
                issuer=issuer,
                ca_hash=lambda: "",
                enroll_address=lambda: "",
                default_ttl=3600,
                max_ttl=30 * day,
                clock=lambda: clock[0],
            )

            async def token(name: str, ttl: float, max_uses: int = 0) -> None:
                await store.create_token(
                    make_id=lambda: name,
                    secret_sha256="0" * 64,
                    now=clock[0],
                    expires_at=clock[0] + ttl,
                    max_uses=max_uses,
                    labels={},
                    description="",
                    created_by="admin/test",
                )

            await token("expird", 3600)
            await token("revokd", 20 * day)
            await store.revoke_token("revokd", clock[0])
            await token("usedup", 20 * day, max_uses=1)
            issued = IssuedCertificate(
                "abc", "node/n1", clock[0], clock[0] + 3600, clock[0], "join"
            )
            assert await store.record_join(
                token_id="usedup", node_id="n1", cert=issued, labels={}, max_nodes=100
            )
            await token("active", 29 * day)
            clock[0] += 6 * day
            assert await admin_rpcs.purge_stopped_tokens() == 0
            clock[0] += 1.5 * day
            assert await admin_rpcs.purge_stopped_tokens() == 3
            return [t.id for t in await store.list_tokens()]
        finally:
            await db.close()

    assert asyncio.run(run()) == ["active"]
