"""fleetctl's onboarding commands: ``tokens create|list|revoke``, ``certs list|revoke``, and
what ``nodes remove`` says about the node's certificates.

Three layers:

* Without any server: flag and argument errors (exit 2, one line) and the table cells.
* Against a stand-in Manager (``stand_in`` of test_fleetctl_specs: a real grpclib server
  with the real certificates, answering scripted replies and recording every request): what
  fleetctl sends — never a token's secret — and prints, and how the Manager's errors reach
  the user.
* Against a real Manager holding an issuing CA made with certgen: create → list → revoke,
  a join (EnrollService.Join with a CSR) listed by ``certs list``, and a revoked admin
  certificate that can no longer run fleetctl while another admin still can.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from harness import clean_fleetctl_env, console_script, one_line, run_cli, table, wait_until
from harness.manager import (
    ManagerProc,
    fleet_certs,
    manager_rpc,
    start_manager,
    write_manager_config,
)
from test_fleetctl_specs import StandIn, stand_in
from typer.testing import CliRunner

from fleetctl.app import app
from fleetctl.commands import certs as certs_cmd
from fleetctl.commands import tokens as tokens_cmd
from fleetctl.errors import ExitCode
from schema import admin_pb2

runner = CliRunner()
SECRET = "s3cr3tS3cr3tS3cr3t"
CA_HASH = "sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_fleetctl_env(monkeypatch, tmp_path)


def admin_env(certs: Path, manager: str, admin: str = "admin") -> dict[str, str]:
    return {
        "FLEET_MANAGER": manager,
        "FLEET_CA": str(certs / "ca.crt"),
        "FLEET_CERT": str(certs / f"{admin}.crt"),
        "FLEET_KEY": str(certs / f"{admin}.key"),
        "FLEET_TIMEOUT": "10s",
    }


def now() -> int:
    return int(time.time())


def token(**fields: Any) -> Any:
    """A JoinToken created 1m30s ago, expiring in 1h (and a few seconds: ``in 1h``)."""
    values: dict[str, Any] = {
        "id": "ab12cd",
        "created_at": now() - 90,
        "expires_at": now() + 3630,
        "max_uses": 3,
        "uses": 1,
        "labels": {"role": "web"},
        "created_by": "admin/alice",
        "status": "active",
        "nodes": ["web-1"],
    }
    values.update(fields)
    return admin_pb2.JoinToken(**values)


def certificate(**fields: Any) -> Any:
    """A node certificate issued 1m30s ago at a join, valid for 7 days."""
    values: dict[str, Any] = {
        "serial": "4f3a9c01",
        "identity": "node/web-1",
        "not_before": now() - 90,
        "not_after": now() + 7 * 86400 + 30,
        "issued_at": now() - 90,
        "issued_by": "join",
        "token_id": "ab12cd",
    }
    values.update(fields)
    return admin_pb2.Certificate(**values)


# ---- flags and arguments, no server -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tokens", "create", "--ttl", "soon"], "--ttl: invalid duration 'soon'"),
        (["tokens", "create", "--ttl", "0s"], "--ttl: '0s' is shorter than one second"),
        (["tokens", "create", "--uses", "-1"], "--uses"),
        (["tokens", "create", "--uses", "3000000000"], "--uses 3000000000: at most 2147483647"),
        (["tokens", "create", "--label", "role"], "--label 'role': expected KEY=VALUE"),
        (["tokens", "create", "-l", "bad key=x"], "--label key 'bad key' is not a valid label"),
        (["tokens", "create", "-o", "yaml"], "'yaml' is not one of 'table', 'wide', 'json'"),
        (["tokens", "revoke"], "missing ID: fleetctl tokens revoke ID [OPTIONS]"),
        (["tokens", "revoke", f".{SECRET}"], "ID: expected a token id"),
        (["certs", "revoke"], "missing SERIAL: fleetctl certs revoke SERIAL [OPTIONS]"),
        (["certs", "revoke", "web-1"], "SERIAL 'web-1': expected the certificate's serial"),
        (["certs", "list", "--limit", "-5"], "--limit"),
    ],
)
def test_usage_errors_exit_2(certs: Path, argv: list[str], message: str) -> None:
    result = runner.invoke(app, argv, env=admin_env(certs, "127.0.0.1:1"))
    assert result.exit_code == ExitCode.USAGE, result.output
    line = one_line(result.stderr)
    assert line.startswith("fleetctl: ") and message in line, line
    assert SECRET not in result.output


def test_groups_without_a_command_list_theirs() -> None:
    for group, commands in (
        ("tokens", ("create", "list", "revoke")),
        ("certs", ("list", "revoke")),
    ):
        result = runner.invoke(app, [group])
        assert result.exit_code == ExitCode.USAGE
        assert all(c in result.output for c in commands), result.output


def test_token_id_keeps_only_the_part_before_the_dot() -> None:
    assert tokens_cmd.token_id("ab12cd") == "ab12cd"
    assert tokens_cmd.token_id(f" ab12cd.{SECRET} ") == "ab12cd"


def test_token_cells() -> None:
    row = tokens_cmd.token_row(token(), unicode=False)
    assert row[0] == "ab12cd" and row[1][0] == "active"
    assert row[2:] == ["1/3", "in 1h", "role=web", "admin/alice", "1 (last web-1)"]
    unlimited = token(max_uses=0, uses=2, nodes=[], labels={})
    assert tokens_cmd.uses_text(unlimited, unicode=True) == "2/∞"
    assert tokens_cmd.uses_text(unlimited, unicode=False) == "2/inf"
    assert tokens_cmd.token_row(unlimited, unicode=False)[4:] == ["-", "admin/alice", "-"]
    wide = tokens_cmd.token_row(token(description="rack 4"), unicode=False, wide=True)
    assert wide[-2:] == ["1m ago", "rack 4"]


def test_join_command_is_quoted_for_a_shell() -> None:
    assert tokens_cmd.join_command("mgr.example:50053", f"ab12cd.{SECRET}", CA_HASH) == (
        f"fleet-daemon join --manager mgr.example:50053 --token ab12cd.{SECRET} --ca-hash {CA_HASH}"
    )
    assert "'a b:1'" in tokens_cmd.join_command("a b:1", "t.s", CA_HASH)


def test_certificate_cells_and_status() -> None:
    assert certs_cmd.cert_row(certificate()) == [
        "4f3a9c01",
        "node/web-1",
        "in 7d",
        "join (token ab12cd), 1m ago",
        ("valid", "green"),
    ]
    renewed = certificate(issued_by="renew", token_id="", not_after=now() - 600)
    assert certs_cmd.cert_row(renewed)[2:] == ["10m ago", "renew, 1m ago", ("expired", "dim")]
    revoked = certificate(revoked_at=now() - 5, revoked_reason="host retired", revoked_by="admin/a")
    assert certs_cmd.cert_row(revoked)[4] == ("revoked: host retired", "red")
    # A node's identity revocation (nodes remove): no serial, no validity.
    removed = admin_pb2.Certificate(identity="node/web-2", revoked_at=now(), revoked_reason="x")
    assert certs_cmd.cert_row(removed)[:4] == ["*", "node/web-2", "-", "-"]
    assert certs_cmd.cert_json(removed)["serial"] is None


# ---- against a stand-in Manager -----------------------------------------------------------------


@pytest.fixture
def manager(certs: Path) -> Iterator[StandIn]:
    with stand_in(certs, "manager", "AdminService") as server:
        yield server


def cli(server: StandIn, certs: Path, *argv: str) -> Any:
    return runner.invoke(app, list(argv), env=admin_env(certs, server.address))


def failing(status_name: str, message: str) -> Any:
    def handler(_request: Any) -> Any:
        from grpclib.const import Status
        from grpclib.exceptions import GRPCError

        raise GRPCError(Status[status_name], message)

    return handler


def created(request: Any) -> Any:
    return admin_pb2.CreateJoinTokenResponse(
        token=f"ab12cd.{SECRET}",
        info=token(
            uses=0,
            nodes=[],
            max_uses=request.max_uses,
            labels=dict(request.labels),
            description=request.description,
            created_at=now(),
            expires_at=now() + (request.ttl_seconds or 3600),
        ),
        ca_hash=CA_HASH,
        enroll_address="mgr.example:50053",
    )


def test_create_prints_the_token_and_the_join_command(manager: StandIn, certs: Path) -> None:
    manager.handlers["CreateJoinToken"] = created
    result = cli(
        manager,
        certs,
        "tokens",
        "create",
        "--ttl",
        "2h",
        "--uses",
        "3",
        "-l",
        "role=web,zone=eu",
        "--label",
        "tier=1",
        "--description",
        "rack 4",
    )
    assert result.exit_code == 0, result.output
    (request,) = manager.asked("CreateJoinToken")
    assert request.ttl_seconds == 7200 and request.max_uses == 3
    assert dict(request.labels) == {"role": "web", "zone": "eu", "tier": "1"}
    assert request.description == "rack 4"
    lines = result.stdout.splitlines()
    assert f"Token:       ab12cd.{SECRET}" in lines
    assert any(re.fullmatch(r"Expires: +in 2h \(\d{4}-.*Z\)", line) for line in lines), lines
    assert "Uses:        up to 3 host(s)" in lines
    assert "Labels:      role=web,tier=1,zone=eu" in lines
    # The command alone on the last line, ready to copy.
    assert lines[-1] == (
        f"  fleet-daemon join --manager mgr.example:50053 --token ab12cd.{SECRET} "
        f"--ca-hash {CA_HASH}"
    )


def test_create_defaults_and_json(manager: StandIn, certs: Path) -> None:
    manager.handlers["CreateJoinToken"] = created
    result = cli(manager, certs, "tokens", "create", "-o", "json")
    assert result.exit_code == 0, result.output
    (request,) = manager.asked("CreateJoinToken")
    # The Manager's defaults: its TTL, any number of uses.
    assert request.ttl_seconds == 0 and request.max_uses == 0 and not request.labels
    data = json.loads(result.stdout)
    assert list(data) == ["token", "info", "ca_hash", "enroll_address", "join_command"]
    assert data["token"] == f"ab12cd.{SECRET}" and data["ca_hash"] == CA_HASH
    assert data["enroll_address"] == "mgr.example:50053"
    assert data["join_command"].startswith("fleet-daemon join --manager mgr.example:50053")
    assert list(data["info"]) == [
        "id",
        "status",
        "uses",
        "max_uses",
        "expires_at",
        "labels",
        "description",
        "created_by",
        "created_at",
        "revoked_at",
        "nodes",
    ]
    assert data["info"]["max_uses"] is None and data["info"]["revoked_at"] is None


def test_create_without_an_issuing_ca_says_so_in_one_line(manager: StandIn, certs: Path) -> None:
    message = (
        "this Manager holds no issuing CA: set enroll.ca_cert and enroll.ca_key (docs/security.md)"
    )
    manager.handlers["CreateJoinToken"] = failing("FAILED_PRECONDITION", message)
    result = cli(manager, certs, "tokens", "create")
    assert result.exit_code == ExitCode.FAILED
    assert one_line(result.stderr) == f"fleetctl: create a join token: {message}"


def test_list_shows_uses_expiry_labels_and_nodes(manager: StandIn, certs: Path) -> None:
    manager.handlers["ListJoinTokens"] = lambda _r: admin_pb2.ListJoinTokensResponse(
        tokens=[
            token(id="zz99", created_at=now() - 30, max_uses=0, uses=2, nodes=["db-1", "db-2"]),
            token(),
            token(id="old1", created_at=now() - 9000, expires_at=now() - 5430, status="expired"),
        ]
    )
    result = cli(manager, certs, "tokens", "list", "--all")
    assert result.exit_code == 0, result.output
    assert manager.asked("ListJoinTokens")[0].all is True
    assert table(result.stdout) == [
        ["ID", "STATUS", "USES", "EXPIRES", "LABELS", "CREATED BY", "NODES"],
        ["old1", "expired", "1/3", "1h30m ago", "role=web", "admin/alice", "1 (last web-1)"],
        ["ab12cd", "active", "1/3", "in 1h", "role=web", "admin/alice", "1 (last web-1)"],
        ["zz99", "active", "2/inf", "in 1h", "role=web", "admin/alice", "2 (last db-2)"],
    ]
    data = json.loads(cli(manager, certs, "tokens", "list", "-o", "json").stdout)
    assert [t["id"] for t in data] == ["old1", "ab12cd", "zz99"]
    assert data[2]["max_uses"] is None and data[2]["nodes"] == ["db-1", "db-2"]
    assert manager.asked("ListJoinTokens")[1].all is False


def test_revoke_sends_only_the_id_of_a_whole_token(manager: StandIn, certs: Path) -> None:
    manager.handlers["RevokeJoinToken"] = lambda r: admin_pb2.RevokeJoinTokenResponse(
        token=token(id=r.id, status="revoked", revoked_at=now())
    )
    result = cli(manager, certs, "tokens", "revoke", f"ab12cd.{SECRET}")
    assert result.exit_code == 0, result.output
    assert [r.id for r in manager.asked("RevokeJoinToken")] == ["ab12cd"]
    assert result.stdout == (
        "join token ab12cd revoked after 1 use(s): no host can join with it any more\n"
    )
    assert SECRET not in result.output
    data = json.loads(cli(manager, certs, "tokens", "revoke", "ab12cd", "-o", "json").stdout)
    assert data["status"] == "revoked" and data["revoked_at"]


def test_revoke_of_an_unknown_token_suggests_a_close_one(manager: StandIn, certs: Path) -> None:
    manager.handlers["RevokeJoinToken"] = lambda r: failing(
        "NOT_FOUND", f"join token {r.id} not found"
    )(r)
    manager.handlers["ListJoinTokens"] = lambda _r: admin_pb2.ListJoinTokensResponse(
        tokens=[token(id="ab12cd"), token(id="ff0011")]
    )
    result = cli(manager, certs, "tokens", "revoke", f"ab12ce.{SECRET}")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert one_line(result.stderr) == (
        "fleetctl: join token ab12ce not found — did you mean ab12cd?"
    )
    assert SECRET not in result.output
    assert manager.asked("ListJoinTokens")[0].all is True
    far = cli(manager, certs, "tokens", "revoke", "000000")
    assert one_line(far.stderr) == "fleetctl: join token 000000 not found"


def test_certs_list_table_and_json(manager: StandIn, certs: Path) -> None:
    manager.handlers["ListCertificates"] = lambda _r: admin_pb2.ListCertificatesResponse(
        certificates=[
            certificate(),
            certificate(
                serial="77aa",
                identity="admin/bob",
                issued_by="",
                token_id="",
                issued_at=0,
                revoked_at=now() - 3,
                revoked_reason="laptop lost",
                revoked_by="admin/alice",
            ),
            admin_pb2.Certificate(
                identity="node/web-2", revoked_at=now() - 60, revoked_by="admin/a"
            ),
        ]
    )
    result = cli(manager, certs, "certs", "list", "--node", "web-1", "--revoked", "--all")
    assert result.exit_code == 0, result.output
    (request,) = manager.asked("ListCertificates")
    assert (request.node_id, request.revoked, request.all, request.limit) == (
        "web-1",
        True,
        True,
        0,
    )
    assert table(result.stdout) == [
        ["SERIAL", "IDENTITY", "NOT AFTER", "ISSUED", "STATUS"],
        ["4f3a9c01", "node/web-1", "in 7d", "join (token ab12cd), 1m ago", "valid"],
        ["77aa", "admin/bob", "in 7d", "-", "revoked: laptop lost"],
        ["*", "node/web-2", "-", "-", "revoked"],
    ]
    data = json.loads(cli(manager, certs, "certs", "list", "-o", "json").stdout)
    assert list(data[1]) == [
        "serial",
        "identity",
        "status",
        "not_before",
        "not_after",
        "issued_at",
        "issued_by",
        "token_id",
        "revoked_at",
        "revoked_reason",
        "revoked_by",
    ]
    assert data[1]["status"] == "revoked" and data[1]["issued_by"] is None
    assert data[2]["serial"] is None


def test_certs_revoke_says_what_was_revoked_and_what_was_closed(
    manager: StandIn, certs: Path
) -> None:
    manager.handlers["RevokeCertificate"] = lambda r: admin_pb2.RevokeCertificateResponse(
        certificate=certificate(
            serial="77aa", identity="admin/bob", revoked_at=now(), revoked_reason=r.reason
        ),
        connections_closed=2,
    )
    result = cli(manager, certs, "certs", "revoke", "77:AA", "--reason", "laptop lost")
    assert result.exit_code == 0, result.output
    (request,) = manager.asked("RevokeCertificate")
    assert (request.serial, request.reason) == ("77:AA", "laptop lost")
    assert result.stdout.splitlines() == [
        "certificate 77aa of admin/bob revoked (laptop lost)",
        "the Manager closed 2 open connections of it; Daemons refuse it from their next heartbeat",
    ]
    data = json.loads(cli(manager, certs, "certs", "revoke", "77aa", "-o", "json").stdout)
    assert data["connections_closed"] == 2 and data["certificate"]["status"] == "revoked"


def test_certs_revoke_of_an_unknown_serial_exits_3(manager: StandIn, certs: Path) -> None:
    manager.handlers["RevokeCertificate"] = failing("NOT_FOUND", "no certificate 77aa is known")
    result = cli(manager, certs, "certs", "revoke", "77aa")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert one_line(result.stderr) == (
        "fleetctl: revoke certificate 77aa: no certificate 77aa is known"
    )


@pytest.mark.parametrize("revoked", [True, False])
def test_nodes_remove_says_whether_the_certificates_are_revoked(
    manager: StandIn, certs: Path, revoked: bool
) -> None:
    manager.handlers["RemoveNode"] = lambda r: admin_pb2.RemoveNodeResponse(
        removed=True, message=f"node {r.node_id} removed", certificates_revoked=revoked
    )
    result = cli(manager, certs, "nodes", "remove", "web-1")
    assert result.exit_code == 0, result.output
    expected = ["node web-1 removed"]
    if revoked:
        expected.append(
            "its certificates are revoked: web-1 cannot reconnect; join it again with a new "
            "token ('fleetctl tokens create')"
        )
    assert result.stdout.splitlines() == expected
    data = json.loads(cli(manager, certs, "nodes", "remove", "web-1", "-o", "json").stdout)
    assert data == {
        "node_id": "web-1",
        "removed": True,
        "message": "node web-1 removed",
        "certificates_revoked": revoked,
    }


def test_a_revoked_certificate_is_one_clear_line(manager: StandIn, certs: Path) -> None:
    manager.handlers["ListNodes"] = failing(
        "UNAUTHENTICATED", "certificate 77aa of admin/admin is revoked: laptop lost"
    )
    result = cli(manager, certs, "nodes", "list")
    assert result.exit_code == ExitCode.PERMISSION_DENIED
    assert one_line(result.stderr) == (
        f"fleetctl: manager at {manager.address} refused our certificate "
        f"{certs / 'admin.crt'}: certificate 77aa of admin/admin is revoked: laptop lost — "
        "fleetctl needs an admin certificate that is not revoked; check --cert/--key"
    )


def test_help_of_the_new_commands_loads_nothing_heavy() -> None:
    for argv in (["tokens", "--help"], ["tokens", "create", "--help"], ["certs", "--help"]):
        proc = run_cli([console_script("fleetctl"), *argv])
        assert proc.returncode == 0, proc.stderr
    listed = run_cli([console_script("fleetctl"), "--help"]).stdout
    assert "tokens" in listed and "certs" in listed


# ---- against a real Manager ---------------------------------------------------------------------


@dataclass
class Enrolling:
    """A real Manager with an issuing CA made by certgen, and its certificates."""

    manager: ManagerProc
    certs: Path

    def env(self, admin: str = "admin") -> dict[str, str]:
        return admin_env(self.certs, self.manager.address, admin)


def fleetctl(enrolling: Enrolling, *argv: str, admin: str = "admin") -> Any:
    """The installed console script, as an operator runs it."""
    return run_cli([console_script("fleetctl"), *argv], env=enrolling.env(admin))


def ok_json(enrolling: Enrolling, *argv: str) -> Any:
    proc = fleetctl(enrolling, *argv, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def enrolling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enrolling]:
    from common import certgen

    tmp = tmp_path_factory.mktemp("fleetctl-tokens")
    certs = fleet_certs(tmp / "certs", ["node-c"])
    certgen.intermediate(certs, "issuing")
    certgen.issue(certs, "admin", "bob")
    certgen.issue(certs, "admin", "carol")
    certgen.issue(certs, "admin", "dave")
    config = write_manager_config(
        tmp / "manager.toml",
        {
            "enroll": {
                "ca_cert": str(certs / "issuing.crt"),
                "ca_key": str(certs / "issuing.key"),
            },
            "grpc.tls": {"revocation_refresh": "1s"},
        },
    )
    manager = start_manager(tmp, certs, extra_args=["--config", str(config)])
    try:
        yield Enrolling(manager, certs)
    finally:
        manager.stop()


def join(enrolling: Enrolling, address: str, token_text: str, node_id: str) -> Any:
    """What ``fleet-daemon join --manager ADDRESS`` does on the wire: EnrollService.Join
    with a fresh CSR, over TLS that verifies the Manager against the fleet CA (no client
    certificate)."""
    from grpclib.client import Channel

    from common.pki import make_csr
    from schema.gen.fleet.enroll.v1 import EnrollServiceStub, JoinRequest

    _key, csr = make_csr(node_id)
    ctx = ssl.create_default_context(cafile=str(enrolling.certs / "ca.crt"))
    host, port = address.rsplit(":", 1)

    async def call() -> Any:
        channel = Channel(host, int(port), ssl=ctx)
        try:
            return await EnrollServiceStub(channel, timeout=15).join(
                JoinRequest(token=token_text, node_id=node_id, csr_pem=csr.decode())
            )
        finally:
            channel.close()

    return asyncio.run(call())


def serial_of(cert_file: Path) -> str:
    from cryptography import x509

    return format(x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number, "x")


def test_create_list_revoke_against_the_manager(enrolling: Enrolling) -> None:
    from common import certgen

    created = fleetctl(
        enrolling, "tokens", "create", "--ttl", "30m", "--uses", "2", "-l", "role=web"
    )
    assert created.returncode == 0, created.stderr
    command = created.stdout.splitlines()[-1].strip()
    match = re.fullmatch(
        r"fleet-daemon join --manager (\S+:\d+) --token (\S+) --ca-hash (sha256:[0-9a-f]{64})",
        command,
    )
    assert match, created.stdout
    assert match.group(3) == certgen.root_hash(enrolling.certs)
    whole = match.group(2)
    ident, _, secret = whole.partition(".")
    assert ident and secret

    listed = {t["id"]: t for t in ok_json(enrolling, "tokens", "list")}
    assert listed[ident]["status"] == "active"
    assert listed[ident]["uses"] == 0 and listed[ident]["max_uses"] == 2
    assert listed[ident]["labels"] == {"role": "web"}
    assert listed[ident]["created_by"] == "admin/admin"
    table_out = fleetctl(enrolling, "tokens", "list")
    assert secret not in table_out.stdout
    (row,) = [r for r in table(table_out.stdout) if r[0] == ident]
    assert row[1:3] == ["active", "0/2"] and row[3] in ("in 30m", "in 29m")
    assert row[4] == "role=web"

    revoked = fleetctl(enrolling, "tokens", "revoke", whole)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"join token {ident} revoked")
    assert secret not in revoked.stdout + revoked.stderr

    assert ident not in {t["id"] for t in ok_json(enrolling, "tokens", "list")}
    everything = {t["id"]: t for t in ok_json(enrolling, "tokens", "list", "--all")}
    assert everything[ident]["status"] == "revoked" and everything[ident]["revoked_at"]

    unknown = fleetctl(
        enrolling, "tokens", "revoke", ident[:-1] + ("0" if ident[-1] != "0" else "1")
    )
    assert unknown.returncode == ExitCode.NOT_FOUND, unknown
    assert f"did you mean {ident}?" in one_line(unknown.stderr)


def test_certs_list_shows_a_joined_node(enrolling: Enrolling) -> None:
    created = ok_json(enrolling, "tokens", "create", "--uses", "1", "-l", "role=db")
    whole, ident = created["token"], created["info"]["id"]
    # Where the printed join command points (the Manager's enrollment listener).
    joined = join(enrolling, created["enroll_address"], whole, "db-1")
    assert dict(joined.labels) == {"role": "db"}
    assert joined.node_id == "db-1" and joined.serial

    certs = ok_json(enrolling, "certs", "list", "--node", "db-1")
    assert [c["serial"] for c in certs] == [joined.serial]
    (cert,) = certs
    assert cert["identity"] == "node/db-1" and cert["status"] == "valid"
    assert cert["issued_by"] == "join" and cert["token_id"] == ident
    listed = fleetctl(enrolling, "certs", "list")
    (row,) = [r for r in table(listed.stdout) if r[0] == joined.serial]
    assert row[1] == "node/db-1" and row[2] in ("in 7d", "in 6d23h")
    assert row[3].startswith(f"join (token {ident}), ") and row[4] == "valid"
    used = {t["id"]: t for t in ok_json(enrolling, "tokens", "list", "--all")}[ident]
    assert used["status"] == "used" and used["uses"] == 1 and used["nodes"] == ["db-1"]


def test_a_revoked_admin_certificate_can_no_longer_run_fleetctl(enrolling: Enrolling) -> None:
    assert fleetctl(enrolling, "nodes", "list", admin="bob").returncode == 0
    serial = serial_of(enrolling.certs / "bob.crt")

    revoked = fleetctl(enrolling, "certs", "revoke", serial, "--reason", "laptop lost")
    assert revoked.returncode == 0, revoked.stderr
    lines = revoked.stdout.splitlines()
    # A certificate certgen made: the Manager knows its serial only, not its identity.
    assert lines[0] == f"certificate {serial} revoked (laptop lost)"
    assert re.fullmatch(
        r"the Manager closed \d+ open connections? of it; Daemons refuse it from their next "
        r"heartbeat",
        lines[1],
    ), lines

    def refused() -> Any:
        proc = fleetctl(enrolling, "nodes", "list", admin="bob")
        return proc if proc.returncode != 0 else None

    proc = wait_until(refused, timeout=10, what="bob's certificate refused")
    assert proc.returncode == ExitCode.PERMISSION_DENIED
    line = one_line(proc.stderr)
    assert "refused our certificate" in line and "revoked" in line and serial in line, line
    assert fleetctl(enrolling, "nodes", "list", admin="carol").returncode == 0

    (listed,) = [
        c for c in ok_json(enrolling, "certs", "list", "--revoked") if c["serial"] == serial
    ]
    assert listed["status"] == "revoked" and listed["issued_by"] is None
    assert listed["revoked_reason"] == "laptop lost" and listed["revoked_by"] == "admin/admin"


def test_revoking_the_certificate_fleetctl_presents(enrolling: Enrolling) -> None:
    """The Manager closes the connection that carries the revocation of its own
    certificate, reply included: fleetctl says what happened instead of "cannot reach"."""
    serial = serial_of(enrolling.certs / "dave.crt")
    proc = fleetctl(enrolling, "certs", "revoke", serial.upper(), admin="dave")
    assert proc.returncode == 0, proc.stderr
    # The reply may arrive before the connection closes, or not: said either way.
    lines = proc.stdout.splitlines()
    assert lines[0].lower().startswith(f"certificate {serial} revoked"), lines
    assert lines[-1] == (
        f"it is the certificate this fleetctl presents ({enrolling.certs / 'dave.crt'}): "
        "use another admin certificate from now on"
    )
    again = fleetctl(enrolling, "certs", "revoke", serial, admin="dave")
    assert again.returncode == ExitCode.PERMISSION_DENIED
    assert "is revoked" in one_line(again.stderr)


def test_nodes_remove_revokes_the_nodes_certificates(enrolling: Enrolling) -> None:
    from schema import manager_pb

    manager_rpc(
        enrolling.certs,
        enrolling.manager.grpc_port,
        "node-c",
        "register_node",
        manager_pb.RegisterNodeRequest(node_id="node-c", daemon_address="127.0.0.1:1"),
    )
    removed = fleetctl(enrolling, "nodes", "remove", "node-c", "--force")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.splitlines()[-1] == (
        "its certificates are revoked: node-c cannot reconnect; join it again with a new "
        "token ('fleetctl tokens create')"
    )
    revocations = ok_json(enrolling, "certs", "list", "--revoked", "--node", "node-c")
    assert any(c["serial"] is None and c["identity"] == "node/node-c" for c in revocations)


def test_tokens_need_an_issuing_ca(certs: Path, tmp_path: Path) -> None:
    manager = start_manager(tmp_path, certs)
    try:
        proc = run_cli(
            [console_script("fleetctl"), "tokens", "create"],
            env=admin_env(certs, manager.address),
        )
    finally:
        manager.stop()
    assert proc.returncode == ExitCode.FAILED, proc
    line = one_line(proc.stderr)
    assert line.startswith("fleetctl: create a join token: ") and "CA" in line, line
