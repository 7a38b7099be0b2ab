"""``fleet-daemon join`` against a real EnrollService on 127.0.0.1 (a grpclib server with a
Manager certificate, in the test's event loop), the command run as a real process.

What an operator would notice: a wrong ``--ca-hash`` stops before the token leaves the
host and writes nothing; every refusal prints the Manager's reason and writes nothing; a
join writes the key (0600), the chain, the root and a daemon.toml the Daemon starts with.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import ssl
import stat
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Server
from harness import console_script, free_port, run_cli, wait_until
from harness.daemon import (
    DaemonProc,
    agent,
    call_daemon,
    list_agents,
    short_socket_dir,
    to_toml,
)
from harness.manager import manager_rpc, start_manager, write_manager_config

from common import certgen
from common.pki import (
    CertificateAuthority,
    IssuingCA,
    ca_hash,
    cert_identity,
    load_csr,
    load_pem_certs,
)
from common.specdoc import KIND, load_signing_key, sign
from daemon.config import load_config_file
from daemon.join import default_dirs, default_node_id
from schema import admin_pb, daemon_pb
from schema.gen.fleet.enroll import v1 as enroll_pb

TOKEN = "abc123.s3cr3tS3cr3tS3cr3t"


@dataclass
class Fleet:
    """A root, an issuing intermediate, and the Manager's certificate."""

    root: CertificateAuthority
    issuing: IssuingCA
    dir: Path

    @property
    def hash(self) -> str:
        return ca_hash(self.root.cert)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    directory = tmp_path_factory.mktemp("join-ca")
    root = CertificateAuthority.generate()
    cert_pem, key_pem = root.intermediate("m1")
    inter = CertificateAuthority(
        cert=x509.load_pem_x509_certificate(cert_pem),
        key=serialization.load_pem_private_key(key_pem, password=None),  # type: ignore[arg-type]
    )
    for role, name in (("manager", "m1"), ("node", "impostor")):
        leaf, key = root.issue(role, name, sans=["127.0.0.1"])
        (directory / f"{name}.crt").write_bytes(leaf)
        (directory / f"{name}.key").write_bytes(key)
    return Fleet(root=root, issuing=IssuingCA(inter, roots=[root.cert]), dir=directory)


@dataclass
class FakeEnroll(enroll_pb.EnrollServiceBase):
    """The Manager's EnrollService as the contract describes it, recording Join calls."""

    fleet: Fleet
    refuse: GRPCError | None = None
    labels: dict[str, str] = field(default_factory=dict)
    addresses: list[str] = field(default_factory=list)
    joins: list[enroll_pb.JoinRequest] = field(default_factory=list)

    async def get_ca(self, get_ca_request: enroll_pb.GetCaRequest) -> enroll_pb.GetCaResponse:
        return enroll_pb.GetCaResponse(ca_pem=self.fleet.root.cert_pem.decode())

    async def join(self, join_request: enroll_pb.JoinRequest) -> enroll_pb.JoinResponse:
        self.joins.append(join_request)
        if self.refuse is not None:
            raise self.refuse
        if join_request.token != TOKEN:
            raise GRPCError(Status.UNAUTHENTICATED, "unknown join token")
        cert, chain = self.fleet.issuing.sign_node(
            join_request.node_id, load_csr(join_request.csr_pem), lifetime=dt.timedelta(days=7)
        )
        return enroll_pb.JoinResponse(
            node_id=join_request.node_id,
            cert_pem=chain.decode(),
            ca_pem=self.fleet.root.cert_pem.decode(),
            labels=self.labels,
            manager_addresses=self.addresses,
            serial=format(cert.serial_number, "x"),
            not_after=int(cert.not_valid_after_utc.timestamp()),
        )


@dataclass
class Running:
    service: FakeEnroll
    address: str


async def _serve(fleet: Fleet, service: FakeEnroll, cert_name: str) -> tuple[Server, str]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(fleet.dir / f"{cert_name}.crt", fleet.dir / f"{cert_name}.key")
    ctx.set_alpn_protocols(["h2"])
    server = Server([service])
    await server.start("127.0.0.1", 0, ssl=ctx)
    assert isinstance(server._server, asyncio.Server)
    port = server._server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


@pytest_asyncio.fixture
async def enroll(fleet: Fleet) -> AsyncIterator[Running]:
    service = FakeEnroll(fleet)
    server, address = await _serve(fleet, service, "m1")
    yield Running(service, address)
    server.close()
    await server.wait_closed()


@dataclass
class Result:
    code: int
    out: str
    err: str


async def join(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> Result:
    proc = await asyncio.create_subprocess_exec(
        console_script("fleet-daemon"),
        "join",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*")) if directory.exists() else []


def _one_line_error(result: Result) -> str:
    lines = [line for line in result.err.splitlines() if line.startswith("fleet-daemon join:")]
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    return lines[0]


@pytest.mark.asyncio
async def test_wrong_ca_hash_aborts_before_the_token_is_sent(
    enroll: Running, fleet: Fleet, tmp_path: Path
) -> None:
    wrong = "sha256:" + "ab" * 32
    result = await join(
        *("--manager", enroll.address, "--token", TOKEN, "--ca-hash", wrong),
        *("--node-id", "web-1", "--dir", str(tmp_path / "etc"), "--no-start"),
    )
    assert result.code == 1
    line = _one_line_error(result)
    assert wrong in line and fleet.hash in line, line
    assert enroll.service.joins == []  # the token never left the host
    assert _files(tmp_path / "etc") == []


@pytest.mark.asyncio
async def test_a_server_of_the_fleet_that_is_not_a_manager_gets_no_token(
    fleet: Fleet, tmp_path: Path
) -> None:
    # A node's certificate of the right CA (say, a compromised host) is not a Manager.
    service = FakeEnroll(fleet)
    server, address = await _serve(fleet, service, "impostor")
    try:
        result = await join(
            *("--manager", address, "--token", TOKEN, "--ca-hash", fleet.hash),
            *("--node-id", "web-1", "--dir", str(tmp_path / "etc"), "--no-start"),
        )
    finally:
        server.close()
        await server.wait_closed()
    assert result.code == 1
    assert "not a Fleet Manager" in _one_line_error(result)
    assert service.joins == []
    assert _files(tmp_path / "etc") == []


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "message"),
    [
        (Status.UNAUTHENTICATED, "unknown join token"),
        (Status.PERMISSION_DENIED, "join token abc123 expired at 2026-01-01 00:00:00 UTC"),
        (Status.PERMISSION_DENIED, "join token abc123 is used up (1 of 1 uses)"),
        (Status.ALREADY_EXISTS, "node web-1 is registered: remove it first"),
        (Status.FAILED_PRECONDITION, "this Manager holds no issuing CA:\nset enroll.ca_cert"),
        (Status.RESOURCE_EXHAUSTED, "too many joins from 127.0.0.1: retry in 30 s"),
    ],
)
async def test_a_refused_join_prints_the_reason_and_writes_nothing(
    enroll: Running, fleet: Fleet, tmp_path: Path, status: Status, message: str
) -> None:
    enroll.service.refuse = GRPCError(status, message)
    result = await join(
        *("--manager", enroll.address, "--token", TOKEN, "--ca-hash", fleet.hash),
        *("--node-id", "web-1", "--dir", str(tmp_path / "etc"), "--no-start"),
    )
    assert result.code == 1
    line = _one_line_error(result)
    assert status.name in line and " ".join(message.split()) in line, line
    assert len(enroll.service.joins) == 1
    assert _files(tmp_path / "etc") == []


@pytest.mark.asyncio
async def test_join_writes_key_chain_ca_and_a_config_the_daemon_accepts(
    enroll: Running, fleet: Fleet, tmp_path: Path
) -> None:
    enroll.service.labels = {"env": "prod", "rack": "r7"}
    enroll.service.addresses = ["10.0.0.1:50051", "10.0.0.2:50051"]
    directory = tmp_path / "etc" / "fleet"
    result = await join(
        *("--manager", enroll.address, "--token", TOKEN, "--ca-hash", fleet.hash.upper()[7:]),
        *("--node-id", "web-1", "--dir", str(directory), "--no-start"),
    )
    # "sha256:" is required: the bare digest is a usage error, and nothing was sent.
    assert result.code == 2 and enroll.service.joins == []
    result = await join(
        *("--manager", enroll.address, "--token", TOKEN, "--ca-hash", fleet.hash),
        *("--node-id", "web-1", "--dir", str(directory), "--no-start"),
        env={"XDG_STATE_HOME": str(tmp_path / "state")},
    )
    assert result.code == 0, result.err
    assert str(directory) in result.out
    assert f"fleet-daemon --config {directory / 'daemon.toml'}" in result.out
    assert "systemctl enable --now fleet-daemon" in result.out

    (request,) = enroll.service.joins
    key = directory / "tls" / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "tls").stat().st_mode) == 0o700
    assert b"PRIVATE KEY" not in request.csr_pem.encode()  # only the CSR left the host
    chain = load_pem_certs((directory / "tls" / "node.crt").read_bytes())
    assert len(chain) == 2  # the leaf and the issuing intermediate
    assert cert_identity(chain[0]) is not None and str(cert_identity(chain[0])) == "node/web-1"
    assert load_pem_certs((directory / "tls" / "ca.crt").read_bytes()) == [fleet.root.cert]
    assert not list((directory / "tls").glob(".*"))  # no temporary files left

    data = tomllib.loads((directory / "daemon.toml").read_text())
    assert data["manager"]["address"] == ["10.0.0.1:50051", "10.0.0.2:50051"]
    assert data["labels"] == {"env": "prod", "rack": "r7"}
    config = load_config_file(directory / "daemon.toml", {}, {})
    assert config.node_id == "web-1"
    assert config.manager.addresses == ("10.0.0.1:50051", "10.0.0.2:50051")
    assert config.manager.tls.key_file == str(key)
    state_home = {"XDG_STATE_HOME": str(tmp_path / "state"), "HOME": os.environ.get("HOME", "/")}
    assert config.state_dir == default_dirs(state_home, os.geteuid(), "web-1")[1]

    # Joining again does not spend the token unless --force says so.
    result = await join(
        *("--manager", enroll.address, "--token", TOKEN, "--ca-hash", fleet.hash),
        *("--node-id", "web-1", "--dir", str(directory), "--no-start"),
    )
    assert result.code == 1
    assert "--force" in _one_line_error(result)
    assert len(enroll.service.joins) == 1
    before = key.read_bytes()
    result = await join(
        *("--manager", enroll.address, "--token", TOKEN, "--ca-hash", fleet.hash),
        *("--node-id", "web-1", "--dir", str(directory), "--no-start", "--force"),
    )
    assert result.code == 0, result.err
    assert key.read_bytes() != before
    assert "kept the existing" in result.out and "node_id = 'web-1'" in result.out


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--manager", "nohost", "--token", TOKEN), "--manager"),
        (("--manager", "h:1", "--token", "no-dot"), "--token"),
        (("--manager", "h:1", "--token", TOKEN, "--node-id", "-bad"), "--node-id"),
    ],
)
async def test_argument_mistakes_are_one_line_and_exit_2(
    fleet: Fleet, tmp_path: Path, args: tuple[str, ...], fragment: str
) -> None:
    result = await join(*args, "--ca-hash", fleet.hash, "--dir", str(tmp_path / "etc"))
    assert result.code == 2
    assert fragment in _one_line_error(result)
    result = await join(*args[:4], "--ca-hash", "md5:1234", "--dir", str(tmp_path / "etc"))
    assert result.code == 2 and "Traceback" not in result.err


@pytest.mark.asyncio
async def test_nothing_listening_is_one_line(fleet: Fleet, tmp_path: Path) -> None:
    result = await join(
        *("--manager", f"127.0.0.1:{free_port()}", "--token", TOKEN, "--ca-hash", fleet.hash),
        *("--dir", str(tmp_path / "etc"), "--no-start"),
    )
    assert result.code == 1
    assert "cannot reach" in _one_line_error(result)


@pytest.mark.asyncio
async def test_join_then_the_daemon_starts_with_the_new_certificate(
    enroll: Running, fleet: Fleet, tmp_path: Path
) -> None:
    """An existing daemon.toml is kept, and the Daemon started by join uses the files."""
    directory = tmp_path / "etc"
    directory.mkdir()
    grpc_port = free_port()
    (directory / "daemon.toml").write_text(
        to_toml(
            {
                "node_id": "web-2",
                "state_dir": str(tmp_path / "state"),
                "manager": {
                    "address": f"127.0.0.1:{free_port()}",  # no Manager: the Daemon waits
                    "tls": {
                        "cert_file": "tls/node.crt",
                        "key_file": "tls/node.key",
                        "ca_file": "tls/ca.crt",
                    },
                },
                "grpc": {"listen": f"127.0.0.1:{grpc_port}"},
                "agent_api": {"socket": str(short_socket_dir() / "agent.sock")},
                "agents": [agent("sleeper", "sleeper")],
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        console_script("fleet-daemon"),
        *("join", "--manager", enroll.address, "--token", TOKEN, "--ca-hash", fleet.hash),
        *("--node-id", "web-2", "--dir", str(directory)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        cwd=directory,  # relative paths in daemon.toml are relative to the cwd
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    seen = ""
    try:
        async with asyncio.timeout(60):
            while "daemon ready" not in seen:
                line = await proc.stdout.readline()
                if not line:
                    break
                seen += line.decode()
        assert "daemon ready" in seen, seen
        assert "kept the existing" in seen
        # The DaemonService now presents the joined certificate.
        ctx = ssl.create_default_context(cafile=str(directory / "tls" / "ca.crt"))
        ctx.check_hostname = False
        ctx.load_cert_chain(fleet.dir / "m1.crt", fleet.dir / "m1.key")
        _reader, writer = await asyncio.open_connection("127.0.0.1", grpc_port, ssl=ctx)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        served = x509.load_der_x509_certificate(der)
        joined = load_pem_certs((directory / "tls" / "node.crt").read_bytes())[0]
        assert served == joined
    finally:
        if proc.returncode is None:
            proc.terminate()
        await asyncio.wait_for(proc.communicate(), 30)


def test_default_node_id_and_directories() -> None:
    assert default_node_id("web-1.example.com") == "web-1.example.com"
    assert default_node_id("-my host!") == "my-host-"
    assert default_node_id("...") == "node"
    assert default_dirs({}, 0, "web-1") == (Path("/etc/fleet"), Path("/var/lib/fleet/daemon"))
    env = {"HOME": "/home/u", "XDG_CONFIG_HOME": "/cfg"}
    assert default_dirs(env, 1000, "web-1") == (
        Path("/cfg/fleet"),
        Path("/home/u/.local/state/fleet/daemon-web-1"),
    )
    assert sys.executable  # the Daemon is started with this interpreter


# ---- end to end, with a real Manager that holds an issuing CA ----


@pytest.fixture(scope="module")
def issuing_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dev certificates, an issuing CA ``issuing`` for the Manager, and a second admin
    ``bob`` (to revoke without locking the test's own admin out)."""
    directory = tmp_path_factory.mktemp("e2e-pki")
    certgen.dev(directory, ["node-a"], echo=lambda _line: None)
    certgen.intermediate(directory, "issuing")
    cert, key = CertificateAuthority.load(directory).issue("admin", "bob")
    (directory / "bob.crt").write_bytes(cert)
    (directory / "bob.key").write_bytes(key)
    return directory


def test_a_fresh_host_joins_renews_while_agents_run_and_honours_revocations(
    tmp_path: Path, issuing_pki: Path
) -> None:
    pki = issuing_pki
    manager_config = write_manager_config(
        tmp_path / "manager.toml", {"enroll": {"node_cert_lifetime": "1h"}}
    )
    m = start_manager(
        tmp_path,
        pki,
        extra_args=[
            *("--config", str(manager_config)),
            *("--enroll-ca-cert", str(pki / "issuing.crt")),
            *("--enroll-ca-key", str(pki / "issuing.key")),
        ],
    )
    daemon: DaemonProc | None = None
    try:
        assert m.enroll_port
        token = manager_rpc(
            pki,
            m.grpc_port,
            "admin",
            "create_join_token",
            admin_pb.CreateJoinTokenRequest(ttl_seconds=600, max_uses=1, labels={"env": "e2e"}),
        )
        directory = tmp_path / "host" / "fleet"
        joined = run_cli(
            [
                console_script("fleet-daemon"),
                *("join", "--manager", f"127.0.0.1:{m.enroll_port}", "--token", token.token),
                *("--ca-hash", token.ca_hash, "--node-id", "web-1", "--dir", str(directory)),
                "--no-start",
            ]
        )
        assert joined.returncode == 0, joined.stderr
        config_path = directory / "daemon.toml"
        data = tomllib.loads(config_path.read_text())
        assert data["labels"] == {"env": "e2e"}
        # Test-only changes: private port, state and socket; an agent; renewal at once
        # (1 % of a 1 h certificate has passed at issue: notBefore is 5 min back) and
        # looked at every second. manager.address stays as the join wrote it.
        grpc_port = free_port()
        socket_path = short_socket_dir() / "agent.sock"
        data.update(
            state_dir=str(tmp_path / "state"),
            grpc={"listen": f"127.0.0.1:{grpc_port}"},
            agent_api={"socket": str(socket_path)},
            agents=[agent("sleeper", "sleeper")],
        )
        data["manager"].update(heartbeat_interval=1.0, reconnect_interval=1.0)
        data["manager"]["tls"].update(renew_at=0.01, renew_check_interval=1.0)
        config_path.write_text(to_toml(data))
        daemon = DaemonProc(
            [console_script("fleet-daemon"), "--config", str(config_path)],
            log_path=tmp_path / "daemon.log",
            node_id="web-1",
            grpc_port=grpc_port,
            state_dir=tmp_path / "state",
            config_path=config_path,
            agent_socket=socket_path,
            env={"PYTHONUNBUFFERED": "1"},
        )
        daemon.wait_ready()

        def node() -> admin_pb.Node:
            reply = manager_rpc(
                pki, m.grpc_port, "admin", "get_node", admin_pb.GetNodeRequest(node_id="web-1")
            )
            return reply.node

        wait_until(lambda: node().status == "online", timeout=60, what="web-1 online")
        assert node().labels.get("env") == "e2e"
        pid = wait_until(
            lambda: list_agents(pki, daemon)["sleeper"].pid, timeout=60, what="agent running"
        )

        # Renewed twice: the second RenewCertificate went over a channel that presented
        # the first renewed certificate.
        wait_until(
            lambda: daemon.output().count("renewed node certificate") >= 2,
            timeout=90,
            what="two renewals",
        )
        assert list_agents(pki, daemon)["sleeper"].pid == pid  # agents untouched
        wait_until(lambda: node().status == "online", timeout=30, what="still online")
        assert daemon.alive()
        assert "Traceback" not in daemon.output()

        # A revoked admin certificate is refused by the Daemon too, once the heartbeat
        # says the list changed.
        assert list_agents(pki, daemon)  # as manager
        call_daemon(pki, daemon, "list_agents", daemon_pb.ListAgentsRequest(), cert_name="bob")
        bob = x509.load_pem_x509_certificate((pki / "bob.crt").read_bytes())
        manager_rpc(
            pki,
            m.grpc_port,
            "admin",
            "revoke_certificate",
            admin_pb.RevokeCertificateRequest(serial=format(bob.serial_number, "x")),
        )

        def bob_refused() -> bool:
            try:
                call_daemon(
                    pki, daemon, "list_agents", daemon_pb.ListAgentsRequest(), cert_name="bob"
                )
            except GRPCError as exc:
                return exc.status == Status.UNAUTHENTICATED
            return False

        wait_until(bob_refused, timeout=60, what="bob refused by the Daemon")
        stored = json.loads((tmp_path / "state" / "revocations.json").read_text())
        assert format(bob.serial_number, "x") in {r["serial"] for r in stored["revocations"]}

        # ...and a spec bob signed is refused, naming the certificate.
        document = {
            "kind": KIND,
            "name": "by-bob",
            "revision": 1,
            "target": {"labels": {}, "nodes": ["web-1"]},
            "agents": [agent("bob-agent", "sleeper")],
            "signed_at": int(time.time()),
            "expires_at": 0,
            "rollback_of": 0,
        }
        payload, signature = sign(document, load_signing_key(pki / "bob.key"))
        reply = call_daemon(
            pki,
            daemon,
            "apply_specs",
            daemon_pb.ApplySpecsRequest(
                specs=[
                    daemon_pb.SignedSpec(
                        payload=payload,
                        signature=signature,
                        signer_cert=(pki / "bob.crt").read_bytes(),
                    )
                ]
            ),
        )
        (state,) = reply.specs
        assert state.status == "REFUSED"
        assert f"signer certificate {bob.serial_number:x} is revoked" in state.reason
    finally:
        if daemon is not None:
            daemon.stop()
        m.stop()


def test_against_a_real_manager_bad_tokens_and_a_wrong_hash_write_nothing_and_spend_nothing(
    tmp_path: Path, issuing_pki: Path
) -> None:
    """Issue 12's refusals end to end: the real ``fleet-daemon join`` against a real
    Manager. Each refused join exits non-zero with the Manager's reason and writes
    nothing; a wrong ``--ca-hash`` stops before the token is sent, so the token is
    still unspent and joins right after."""
    pki = issuing_pki
    m = start_manager(
        tmp_path,
        pki,
        extra_args=[
            *("--enroll-ca-cert", str(pki / "issuing.crt")),
            *("--enroll-ca-key", str(pki / "issuing.key")),
        ],
    )
    try:
        assert m.enroll_port

        def create(**kw: Any) -> admin_pb.CreateJoinTokenResponse:
            reply: admin_pb.CreateJoinTokenResponse = manager_rpc(
                pki,
                m.grpc_port,
                "admin",
                "create_join_token",
                admin_pb.CreateJoinTokenRequest(**kw),
            )
            return reply

        def uses(token_id: str) -> int:
            reply = manager_rpc(
                pki,
                m.grpc_port,
                "admin",
                "list_join_tokens",
                admin_pb.ListJoinTokensRequest(all=True),
            )
            return next(t.uses for t in reply.tokens if t.id == token_id)

        def join(token: str, node_id: str, ca_hash: str, host: str = "") -> tuple[Any, Path]:
            directory = tmp_path / f"host-{host or node_id}" / "fleet"
            result = run_cli(
                [
                    console_script("fleet-daemon"),
                    *("join", "--manager", f"127.0.0.1:{m.enroll_port}", "--token", token),
                    *("--ca-hash", ca_hash, "--node-id", node_id, "--dir", str(directory)),
                    "--no-start",
                ]
            )
            return result, directory

        def refused(token: str, node_id: str, ca_hash: str, words: str, host: str = "") -> None:
            result, directory = join(token, node_id, ca_hash, host)
            assert result.returncode != 0, result.stdout
            assert words in result.stderr, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert "Traceback" not in result.stderr
            assert not directory.exists() or not any(directory.rglob("*")), list(
                directory.rglob("*")
            )

        good = create(ttl_seconds=600, max_uses=1, labels={"env": "e2e"})
        token_id = good.info.id
        # A wrong --ca-hash: nothing sent, so the one use is still there afterwards.
        refused(good.token, "host-hash", "sha256:" + "0" * 64, "CA hash mismatch")
        assert uses(token_id) == 0
        # A wrong secret for a real id: the same answer as an unknown token.
        refused(f"{token_id}.{'x' * 16}", "host-secret", good.ca_hash, "invalid join token")
        refused(f"zzzzzz.{'y' * 16}", "host-unknown", good.ca_hash, "invalid join token")
        # The good join spends the one use; the next is refused as used up.
        result, directory = join(good.token, "host-ok", good.ca_hash)
        assert result.returncode == 0, result.stderr
        assert (directory / "tls" / "node.key").stat().st_mode & 0o777 == 0o600
        assert uses(token_id) == 1
        refused(good.token, "host-used", good.ca_hash, "used")
        # Revoked and expired tokens.
        revoked = create(ttl_seconds=600)
        manager_rpc(
            pki,
            m.grpc_port,
            "admin",
            "revoke_join_token",
            admin_pb.RevokeJoinTokenRequest(id=revoked.info.id),
        )
        refused(revoked.token, "host-revoked", good.ca_hash, "revoked")
        expired = create(ttl_seconds=1)
        # expires_at is whole seconds, the Manager's clock is not: past it by more than one.
        wait_until(
            lambda: time.time() > expired.info.expires_at + 1.5, timeout=10, what="token expiry"
        )
        refused(expired.token, "host-expired", good.ca_hash, "expired")
        # A host that already joined cannot be taken over with another token.
        other = create(ttl_seconds=600)
        refused(other.token, "host-ok", good.ca_hash, "already joined", host="intruder")
        # Removing it (joined, never registered) revokes its certificate and frees the id.
        removed = manager_rpc(
            pki, m.grpc_port, "admin", "remove_node", admin_pb.RemoveNodeRequest(node_id="host-ok")
        )
        assert removed.removed and removed.certificates_revoked
        result, _ = join(other.token, "host-ok", good.ca_hash, host="reinstalled")
        assert result.returncode == 0, result.stderr
    finally:
        m.stop()
