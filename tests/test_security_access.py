"""Security battery, items 1-3: impersonation, the method allow-list, the certificate matrix.

One real Manager and one real Daemon (node-a, with one agent) serve the whole module.
Every RPC of every service is called with every kind of caller — node, manager, admin and
no certificate — by its method path, so a service that forgot a method in its policy or
a listener that answered a caller it should not would fail here (Salt CVE-2020-11651:
methods reachable without authentication; supervisord: an unauthenticated control
socket). The list is tested in both directions: each allowed call must still work.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError
from grpclib.server import Server
from harness import free_port, wait_until
from harness.daemon import agent, list_agents, start_daemon
from harness.faults import REFUSED, no_cert_context, raw_call, self_signed, write_pair
from harness.manager import (
    ManagerProc,
    manager_rpc,
    manager_rpc_error,
    sign_spec,
    spec_document,
    start_manager,
    stored_nodes,
    write_manager_config,
)

from common.pki import CertificateAuthority, make_csr
from common.rpc import GuardedService
from common.tls import TLSFiles, client_context, server_context
from schema import admin_pb, daemon_pb, manager_pb

MANAGER_SVC = "/fleet.manager.v1.ManagerService/"
ADMIN_SVC = "/fleet.admin.v1.AdminService/"
DAEMON_SVC = "/fleet.daemon.v1.DaemonService/"
CALLERS = ("node", "manager", "admin", "none")


class Fleet:
    def __init__(self, certs: Path, mgr: ManagerProc, daemon: Any, token_id: str) -> None:
        self.certs = certs
        self.mgr = mgr
        self.daemon = daemon
        # A join token the matrix's RevokeJoinToken row revokes.
        self.token_id = token_id


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("security-access")
    # The root signs node certificates (CreateJoinToken and RenewCertificate need an
    # issuing CA to succeed for their allowed role).
    config = write_manager_config(
        tmp / "manager.toml",
        {"enroll": {"ca_cert": str(certs / "ca.crt"), "ca_key": str(certs / "ca.key")}},
    )
    mgr = start_manager(tmp, certs, extra_args=["--config", str(config)])
    daemon = start_daemon(
        tmp,
        certs,
        node_id="node-a",
        manager_port=mgr.grpc_port,
        agents=[agent("sleepy", "sleeper", start_seconds=0.2)],
    )
    try:
        wait_until(
            lambda: any(
                a.id == "sleepy"
                for a in manager_rpc(
                    certs, mgr.grpc_port, "admin", "list_agents", admin_pb.ListAgentsRequest()
                ).agents
            ),
            timeout=20,
            what="node-a registered with its agent",
        )
        # A node for the matrix's RemoveNode row to remove (and revoke).
        gone = tmp / "gone-certs"
        gone.mkdir()
        shutil.copy(certs / "ca.crt", gone / "ca.crt")
        cert_pem, key_pem = CertificateAuthority.load(certs).issue("node", "node-gone")
        write_pair(gone, "node-gone", cert_pem, key_pem)
        manager_rpc(
            gone,
            mgr.grpc_port,
            "node-gone",
            "register_node",
            manager_pb.RegisterNodeRequest(node_id="node-gone", daemon_address="127.0.0.1:1"),
        )
        token = manager_rpc(
            certs,
            mgr.grpc_port,
            "admin",
            "create_join_token",
            admin_pb.CreateJoinTokenRequest(ttl_seconds=3600, description="matrix"),
        ).token
        yield Fleet(certs, mgr, daemon, token_id=token.split(".", 1)[0])
    finally:
        daemon.stop()
        mgr.stop()


def _context(
    certs: Path, caller: str, *, server_role: str, server_name: str | None = None
) -> ssl.SSLContext:
    if caller == "none":
        return no_cert_context(certs / "ca.crt")
    # The node caller is node-c (no Daemon of its own runs here, so it cannot disturb one).
    name = {"node": "node-c", "manager": "manager", "admin": "admin"}[caller]
    files = TLSFiles(certs / f"{name}.crt", certs / f"{name}.key", certs / "ca.crt")
    return client_context(files, expect_role=server_role, expect_name=server_name)


def _manager_calls(
    certs: Path | None = None, token_id: str = ""
) -> list[tuple[str, Any, type, str]]:
    """(path, request, reply type, the one role allowed) for every Manager RPC.

    With ``certs``, ApplySpec carries a spec signed by the admin (for node-c, which the
    rows before register; its address answers nobody, so the rollout stays running and
    can be paused); without, an empty request (enough to list the paths). ``token_id``
    is a join token RevokeJoinToken may revoke.

    EnrollService (GetCA, Join) is not here: it is served on its own listener, TLS
    without client certificates, and is anonymous by design — a joining host has no
    certificate yet; the join token is its credential (tests/test_manager_enroll.py)."""
    now = int(time.time())
    m, a = manager_pb, admin_pb
    spec = (
        sign_spec(
            certs,
            spec_document("matrix", 1, [{"id": "mx", "command": ["/bin/sleep", "60"]}],
                          nodes=["node-c"]),
        )
        if certs is not None
        else daemon_pb.SignedSpec()
    )  # fmt: skip
    return [
        (
            MANAGER_SVC + "RegisterNode",
            m.RegisterNodeRequest(
                node_id="node-c", daemon_address="127.0.0.1:1", heartbeat_interval_seconds=60
            ),
            m.RegisterNodeResponse,
            "node",
        ),
        (
            MANAGER_SVC + "Heartbeat",
            m.HeartbeatRequest(node_id="node-c", timestamp=now),
            m.HeartbeatResponse,
            "node",
        ),
        (
            MANAGER_SVC + "ReportMetrics",
            m.ReportMetricsRequest(
                node_id="node-c",
                metrics=[m.MetricData(type="cpu", timestamp=now, values={"usage": 1.0})],
            ),
            m.ReportMetricsResponse,
            "node",
        ),
        (
            MANAGER_SVC + "SyncAgentStates",
            m.SyncAgentStatesRequest(
                node_id="node-c", states=[m.AgentState(agent_id="x", status="RUNNING")], full=True
            ),
            m.SyncAgentStatesResponse,
            "node",
        ),
        (
            MANAGER_SVC + "RenewCertificate",
            m.RenewCertificateRequest(csr_pem=make_csr("node-c")[1].decode()),
            m.RenewCertificateResponse,
            "node",
        ),
        (
            MANAGER_SVC + "GetRevocations",
            m.GetRevocationsRequest(known_version=0),
            m.GetRevocationsResponse,
            "node",
        ),
        (
            MANAGER_SVC + "Leave",
            # Another Daemon instance's goodbye: allowed for the node, changes nothing.
            m.LeaveRequest(node_id="node-c", instance_id="an-old-instance", reason="test"),
            m.LeaveResponse,
            "node",
        ),
        (ADMIN_SVC + "ListNodes", a.ListNodesRequest(), a.ListNodesResponse, "admin"),
        (ADMIN_SVC + "GetNode", a.GetNodeRequest(node_id="node-a"), a.GetNodeResponse, "admin"),
        (ADMIN_SVC + "ListAgents", a.ListAgentsRequest(), a.ListAgentsResponse, "admin"),
        (
            ADMIN_SVC + "OperateAgent",
            a.OperateAgentRequest(node_id="node-a", agent_id="sleepy", operation="start"),
            a.OperateAgentResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "GetAgentMetrics",
            a.GetAgentMetricsRequest(node_id="node-a", agent_id="sleepy", since_seconds=60),
            a.GetAgentMetricsResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "QueryNodeMetrics",
            a.QueryNodeMetricsRequest(node_id="node-a", since_seconds=60),
            a.QueryNodeMetricsResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "PushUpdate",
            a.PushUpdateRequest(node_id="node-a", agent_id="sleepy", config_json="{}"),
            a.PushUpdateResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "GetAgentConfig",
            a.GetAgentConfigRequest(node_id="node-a", agent_id="sleepy"),
            a.GetAgentConfigResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "GetAgentLog",
            a.GetAgentLogRequest(node_id="node-a", agent_id="sleepy"),
            a.GetAgentLogResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "FollowAgentLog",
            a.FollowAgentLogRequest(node_id="node-a", agent_id="sleepy"),
            a.FollowAgentLogResponse,
            "admin",
        ),
        (ADMIN_SVC + "ApplySpec", a.ApplySpecRequest(spec=spec), a.ApplySpecResponse, "admin"),
        (ADMIN_SVC + "ListSpecs", a.ListSpecsRequest(), a.ListSpecsResponse, "admin"),
        (ADMIN_SVC + "GetSpec", a.GetSpecRequest(name="matrix"), a.GetSpecResponse, "admin"),
        (
            ADMIN_SVC + "GetRollout",
            a.GetRolloutRequest(spec="matrix"),
            a.GetRolloutResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "SetRolloutState",
            a.SetRolloutStateRequest(spec="matrix", action="pause"),
            a.SetRolloutStateResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "DeleteSpec",
            a.DeleteSpecRequest(name="matrix", dry_run=True),
            a.DeleteSpecResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "ReloadDaemon",
            a.ReloadDaemonRequest(node_id="node-a", dry_run=True),
            a.ReloadDaemonResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "CreateJoinToken",
            a.CreateJoinTokenRequest(ttl_seconds=600, max_uses=1),
            a.CreateJoinTokenResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "ListJoinTokens",
            a.ListJoinTokensRequest(),
            a.ListJoinTokensResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "RevokeJoinToken",
            a.RevokeJoinTokenRequest(id=token_id),
            a.RevokeJoinTokenResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "ListCertificates",
            a.ListCertificatesRequest(),
            a.ListCertificatesResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "ListEvents",
            a.ListEventsRequest(limit=5),
            a.ListEventsResponse,
            "admin",
        ),
        (
            ADMIN_SVC + "GetAgent",
            a.GetAgentRequest(node_id="node-a", agent_id="sleepy"),
            a.GetAgentResponse,
            "admin",
        ),
        # after_id 1: the history after the first event answers at once (the stream
        # then stays open for new events).
        (
            ADMIN_SVC + "WatchEvents",
            a.WatchEventsRequest(after_id=1),
            a.Event,
            "admin",
        ),
        # A serial no certificate here has (certgen's are 159 random bits).
        (
            ADMIN_SVC + "RevokeCertificate",
            a.RevokeCertificateRequest(serial="f1ee7c0de", reason="matrix"),
            a.RevokeCertificateResponse,
            "admin",
        ),
        # node-gone, registered by the fixture: RemoveNode revokes the node's
        # certificates, and node-c's must keep working for the tests after this one.
        (
            ADMIN_SVC + "RemoveNode",
            a.RemoveNodeRequest(node_id="node-gone", force=True),
            a.RemoveNodeResponse,
            "admin",
        ),
    ]


def test_the_matrices_cover_every_rpc() -> None:
    """A new RPC cannot slip past the allow-list tests: both lists name every method."""
    served = {
        *manager_pb.ManagerServiceBase().__mapping__(),
        *admin_pb.AdminServiceBase().__mapping__(),
    }
    assert {path for path, *_ in _manager_calls()} == served
    daemon_served = set(daemon_pb.DaemonServiceBase().__mapping__())
    assert {path for path, *_ in _daemon_calls()} == daemon_served


# Server-streaming methods: the matrices take their first reply as the answer.
_STREAMING = {
    path
    for service in (
        manager_pb.ManagerServiceBase(),
        admin_pb.AdminServiceBase(),
        daemon_pb.DaemonServiceBase(),
    )
    for path, handler in service.__mapping__().items()
    if handler.cardinality is Cardinality.UNARY_STREAM
}


async def matrix_call(
    port: int, ctx: ssl.SSLContext | None, path: str, request: Any, reply_type: type
) -> tuple[str, Any]:
    """``raw_call``; for a server-streaming method, ``("OK", first reply)`` once its first
    reply came (the stream is then cancelled), else the status it ended with."""
    if path not in _STREAMING:
        return await raw_call(port, ctx, path, request, reply_type)
    channel = Channel("127.0.0.1", port, ssl=ctx)
    stream: Any
    try:
        async with channel.request(
            path, Cardinality.UNARY_STREAM, type(request), reply_type, timeout=10
        ) as stream:
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
            if reply is None:
                await stream.recv_trailing_metadata()
            await stream.cancel()
            return "OK", reply
    except GRPCError as exc:
        return exc.status.name, exc.message or ""
    except (OSError, ssl.SSLError, StreamTerminatedError, ConnectionError) as exc:
        return REFUSED, exc
    finally:
        channel.close()


def _daemon_calls() -> list[tuple[str, Any, type, frozenset[str]]]:
    """(path, request, reply type, roles allowed on TCP) for every DaemonService RPC."""
    d = daemon_pb
    staff = frozenset({"manager", "admin"})
    nobody: frozenset[str] = frozenset()  # agent-facing: only on the Unix socket
    return [
        (DAEMON_SVC + "ListAgents", d.ListAgentsRequest(), d.ListAgentsResponse, staff),
        (
            DAEMON_SVC + "OperateAgent",
            d.AgentOperationRequest(agent_id="sleepy", operation="start"),
            d.AgentOperationResponse,
            staff,
        ),
        (
            DAEMON_SVC + "GetAgentMetrics",
            d.AgentMetricsRequest(agent_id="sleepy", duration_seconds=60),
            d.AgentMetricsResponse,
            staff,
        ),
        (
            DAEMON_SVC + "SyncAgentStates",
            d.SyncAgentStatesRequest(node_id="node-a"),
            d.SyncAgentStatesResponse,
            staff,
        ),
        (
            DAEMON_SVC + "PushUpdate",
            d.UpdateRequest(agent_id="sleepy", config_json="{}"),
            d.UpdateResponse,
            staff,
        ),
        (
            DAEMON_SVC + "GetAgentConfig",
            d.AgentConfigRequest(agent_id="sleepy"),
            d.ConfigResponse,
            staff,
        ),
        (
            DAEMON_SVC + "GetAgentLog",
            d.AgentLogRequest(agent_id="sleepy"),
            d.AgentLogResponse,
            staff,
        ),
        (
            DAEMON_SVC + "FollowAgentLog",
            d.AgentLogRequest(agent_id="sleepy"),
            d.AgentLogChunk,
            staff,
        ),
        (
            DAEMON_SVC + "ReloadConfig",
            d.ReloadConfigRequest(dry_run=True),
            d.ReloadConfigResponse,
            staff,
        ),
        (DAEMON_SVC + "ApplySpecs", d.ApplySpecsRequest(), d.ApplySpecsResponse, staff),
        (
            DAEMON_SVC + "Register",
            d.RegisterRequest(agent_id="sleepy", token="x"),
            d.RegisterResponse,
            nobody,
        ),
        (
            DAEMON_SVC + "Heartbeat",
            d.HeartbeatRequest(agent_id="sleepy", token="x"),
            d.HeartbeatResponse,
            nobody,
        ),
        (
            DAEMON_SVC + "ReportMetrics",
            d.MetricsRequest(agent_id="sleepy", token="x"),
            d.MetricsResponse,
            nobody,
        ),
        (
            DAEMON_SVC + "GetConfig",
            d.ConfigRequest(agent_id="sleepy", token="x"),
            d.ConfigResponse,
            nobody,
        ),
    ]


# ---- item 1: impersonation ------------------------------------------------------------


def test_daemon_holding_another_nodes_certificate_cannot_act_for_it(
    tmp_path: Path, fleet: Fleet
) -> None:
    """A real fleet-daemon told it is node-a but holding node-b's certificate (a stolen
    or misissued identity) gets PERMISSION_DENIED on every call; node-a's records are
    untouched and the attempt is in the Manager's log. The per-RPC variant (Heartbeat,
    ReportMetrics, SyncAgentStates, RegisterNode for another node) is
    ``test_manager_services.py::test_impersonation_is_refused_and_changes_nothing``."""
    certs, port = fleet.certs, fleet.mgr.grpc_port
    before_rows = stored_nodes(fleet.mgr.db_url)["node-a"]
    before_metrics = manager_rpc(
        certs,
        port,
        "admin",
        "query_node_metrics",
        admin_pb.QueryNodeMetricsRequest(node_id="node-a", since_seconds=3600, limit=1000),
    ).metrics
    # Same node id as the real node-a, node-b's certificate and key.
    mixed = tmp_path / "mixed-certs"
    mixed.mkdir()
    for name in ("ca.crt",):
        shutil.copy(certs / name, mixed / name)
    shutil.copy(certs / "node-b.crt", mixed / "node-a.crt")
    shutil.copy(certs / "node-b.key", mixed / "node-a.key")
    log_offset = len(fleet.mgr.output())
    impostor = start_daemon(
        tmp_path,
        mixed,
        node_id="node-a",
        manager_port=port,
        agents=[agent("evil", "sleeper", start_seconds=0.2)],
    )
    try:
        wait_until(
            lambda: "tried to act as node node-a" in fleet.mgr.output()[log_offset:],
            timeout=20,
            what="the Manager logging the impersonation",
        )
        wait_until(
            lambda: "PERMISSION_DENIED" in impostor.output(), what="the impostor being refused"
        )
        # Give it a few heartbeat/metrics/sync rounds to try.
        wait_until(
            lambda: impostor.output().count("PERMISSION_DENIED") >= 2,
            timeout=20,
            what="repeated refusals",
        )
    finally:
        impostor.stop()
    after_rows = stored_nodes(fleet.mgr.db_url)["node-a"]
    for key in ("instance_id", "daemon_address", "hostname", "registered_at"):
        assert after_rows[key] == before_rows[key], key
    agents = manager_rpc(
        certs, port, "admin", "list_agents", admin_pb.ListAgentsRequest(node_id="node-a")
    ).agents
    assert [a.id for a in agents] == ["sleepy"]  # no "evil" agent synced for node-a
    after_metrics = manager_rpc(
        certs,
        port,
        "admin",
        "query_node_metrics",
        admin_pb.QueryNodeMetricsRequest(node_id="node-a", since_seconds=3600, limit=1000),
    ).metrics
    # Only the real node-a reported meanwhile: every stored sample is one the real
    # Daemon sent; none came from the impostor's host sampler with its own clock.
    assert len(after_metrics) >= len(before_metrics)
    assert "node-b" not in stored_nodes(fleet.mgr.db_url)  # nor did it register as node-b


# ---- item 2: the method allow-list, both directions -----------------------------------


def test_every_manager_rpc_with_every_caller(fleet: Fleet) -> None:
    certs, port = fleet.certs, fleet.mgr.grpc_port

    async def matrix() -> dict[tuple[str, str], str]:
        out = {}
        for path, request, reply_type, allowed in _manager_calls(certs, fleet.token_id):
            for caller in CALLERS:
                ctx = _context(certs, caller, server_role="manager")
                code, detail = await matrix_call(port, ctx, path, request, reply_type)
                out[(path.rsplit("/", 1)[1], caller)] = code
                if caller == allowed:
                    assert code == "OK", (path, caller, detail)
                elif caller == "none":
                    assert code == REFUSED, (path, caller, code, detail)
                else:
                    assert code == "PERMISSION_DENIED", (path, caller, code, detail)
                    assert "may not call" in detail
        return out

    results = asyncio.run(matrix())
    calls = len(_manager_calls())
    assert len(results) == calls * 4
    assert sum(code == "OK" for code in results.values()) == calls  # exactly one role each


def test_every_daemon_rpc_with_every_caller(fleet: Fleet) -> None:
    certs, daemon = fleet.certs, fleet.daemon

    async def matrix() -> dict[tuple[str, str], str]:
        out = {}
        for path, request, reply_type, allowed in _daemon_calls():
            for caller in CALLERS:
                ctx = _context(certs, caller, server_role="node", server_name="node-a")
                code, detail = await matrix_call(daemon.grpc_port, ctx, path, request, reply_type)
                out[(path.rsplit("/", 1)[1], caller)] = code
                if caller in allowed:
                    assert code == "OK", (path, caller, detail)
                elif caller == "none":
                    assert code == REFUSED, (path, caller, code, detail)
                else:
                    assert code == "PERMISSION_DENIED", (path, caller, code, detail)
        return out

    results = asyncio.run(matrix())
    assert len(results) == 14 * 4
    assert sum(code == "OK" for code in results.values()) == 10 * 2
    # The agent-facing methods answer nobody on TCP, whatever the certificate.
    for method in ("Register", "Heartbeat", "ReportMetrics", "GetConfig"):
        assert all(results[(method, c)] != "OK" for c in CALLERS)
    assert list_agents(certs, daemon)["sleepy"].status == "RUNNING"


def test_manager_facing_rpcs_are_refused_on_the_agent_socket(fleet: Fleet) -> None:
    """The Unix socket serves only the agent API: a local process cannot operate agents
    (supervisord's unauthenticated socket let any local user restart services)."""
    from grpclib.client import Channel
    from grpclib.const import Cardinality
    from grpclib.exceptions import GRPCError

    async def call(path: str, request: Any, reply_type: type[Any]) -> str:
        channel = Channel(path=str(fleet.daemon.agent_socket))
        try:
            async with channel.request(
                path, Cardinality.UNARY_UNARY, type(request), reply_type, timeout=10
            ) as stream:
                await stream.send_message(request, end=True)
                await stream.recv_message()
                await stream.recv_trailing_metadata()
                return "OK"
        except GRPCError as exc:
            return exc.status.name
        finally:
            channel.close()

    for path, request, reply_type, allowed in _daemon_calls():
        if allowed:
            assert asyncio.run(call(path, request, reply_type)) == "PERMISSION_DENIED", path
        else:  # agent-facing with a made-up token
            assert asyncio.run(call(path, request, reply_type)) == "PERMISSION_DENIED", path


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("manager", "/fleet.manager.v1.ManagerService/DeleteNode"),
        ("manager", "/fleet.admin.v1.AdminService/Exec"),
        ("manager", "/fleet.admin.v1.AdminService/../ManagerService/RegisterNode"),
        ("manager", "/fleet.daemon.v1.DaemonService/OperateAgent"),
        ("daemon", "/fleet.daemon.v1.DaemonService/RunCommand"),
        ("daemon", "/fleet.daemon.v1.DaemonService/__init__"),
        ("daemon", "/fleet.admin.v1.AdminService/ListNodes"),
    ],
)
def test_unknown_method_paths_are_rejected(fleet: Fleet, target: str, path: str) -> None:
    """No path reaches anything but a declared RPC (supervisord CVE-2017-11610 walked
    from an XML-RPC method name to arbitrary objects). Checked with the official grpcio
    client, which reads a trailers-only status exactly (grpclib's client reports it as
    UNKNOWN for want of a content-type)."""
    grpc = pytest.importorskip("grpc", reason="grpcio is a dev dependency")
    certs = fleet.certs
    port = fleet.mgr.grpc_port if target == "manager" else fleet.daemon.grpc_port
    for caller in ("node-c", "manager", "admin"):
        creds = grpc.ssl_channel_credentials(
            root_certificates=(certs / "ca.crt").read_bytes(),
            private_key=(certs / f"{caller}.key").read_bytes(),
            certificate_chain=(certs / f"{caller}.crt").read_bytes(),
        )
        with grpc.secure_channel(f"127.0.0.1:{port}", creds) as channel:
            call = channel.unary_unary(path)
            with pytest.raises(grpc.RpcError) as err:
                call(b"", timeout=10)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED, (path, caller)


# ---- item 3: the certificate matrix ---------------------------------------------------


@pytest.fixture(scope="module")
def bad_certs(tmp_path_factory: pytest.TempPathFactory, certs: Path, certgen: ModuleType) -> Path:
    """node-c certificates that must all be refused, plus bad manager certificates."""
    directory = tmp_path_factory.mktemp("bad-certs")
    shutil.copy(certs / "ca.crt", directory / "ca.crt")
    ca = certgen.CertificateAuthority.load(certs)
    now = dt.datetime.now(dt.UTC)
    day = dt.timedelta(days=1)
    variants: dict[str, dict[str, Any]] = {
        "expired": {"not_before": now - 10 * day, "not_after": now - day},
        "not-yet-valid": {"not_before": now + day, "not_after": now + 10 * day},
        "server-only-eku": {"eku": [ExtendedKeyUsageOID.SERVER_AUTH]},
        "code-signing-eku": {"eku": [ExtendedKeyUsageOID.CODE_SIGNING]},
    }
    for stem, kw in variants.items():
        write_pair(directory, f"node-{stem}", *ca.issue("node", "node-c", **kw))
        write_pair(directory, f"manager-{stem}", *ca.issue("manager", "manager", **kw))
    write_pair(directory, "node-self-signed", *self_signed("node", "node-c"))
    write_pair(directory, "manager-self-signed", *self_signed("manager", "manager"))
    return directory


BAD_CLIENTS = (
    "expired",
    "not-yet-valid",
    "server-only-eku",
    "code-signing-eku",
    "self-signed",
    "other-ca",
)


def _bad_files(
    bad_certs: Path, other_ca_certs: Path, certs: Path, kind: str, role: str
) -> TLSFiles:
    if kind == "other-ca":
        name = "node-c" if role == "node" else "manager"
        return TLSFiles(
            other_ca_certs / f"{name}.crt", other_ca_certs / f"{name}.key", certs / "ca.crt"
        )
    return TLSFiles(
        bad_certs / f"{role}-{kind}.crt", bad_certs / f"{role}-{kind}.key", certs / "ca.crt"
    )


@pytest.mark.parametrize("kind", BAD_CLIENTS)
def test_bad_client_certificates_are_refused_by_manager_and_daemon(
    fleet: Fleet, bad_certs: Path, other_ca_certs: Path, kind: str
) -> None:
    certs = fleet.certs
    node_files = _bad_files(bad_certs, other_ca_certs, certs, kind, "node")
    # Against the Manager: a node-c certificate that is not good enough registers nothing.
    code, detail = asyncio.run(
        raw_call(
            fleet.mgr.grpc_port,
            client_context(node_files, expect_role="manager"),
            MANAGER_SVC + "RegisterNode",
            manager_pb.RegisterNodeRequest(node_id="node-c", daemon_address="127.0.0.1:2"),
            manager_pb.RegisterNodeResponse,
        )
    )
    assert code == REFUSED, (kind, code, detail)
    # Against the Daemon: a manager certificate that is not good enough operates nothing.
    manager_files = _bad_files(bad_certs, other_ca_certs, certs, kind, "manager")
    pid = list_agents(certs, fleet.daemon)["sleepy"].pid
    code, detail = asyncio.run(
        raw_call(
            fleet.daemon.grpc_port,
            client_context(manager_files, expect_role="node", expect_name="node-a"),
            DAEMON_SVC + "OperateAgent",
            daemon_pb.AgentOperationRequest(agent_id="sleepy", operation="stop"),
            daemon_pb.AgentOperationResponse,
        )
    )
    assert code == REFUSED, (kind, code, detail)
    assert list_agents(certs, fleet.daemon)["sleepy"].pid == pid


def test_wrong_role_is_refused_at_every_service(fleet: Fleet) -> None:
    """A valid certificate of the wrong role: handshake succeeds, every call is refused
    (covered per call by the matrices above; here the roles that are most tempting)."""
    certs, port = fleet.certs, fleet.mgr.grpc_port
    # The Manager's own certificate cannot pose as a node or an admin at the Manager.
    for method, request in (
        ("register_node", manager_pb.RegisterNodeRequest(node_id="manager")),
        ("list_nodes", admin_pb.ListNodesRequest()),
    ):
        status, _ = manager_rpc_error(certs, port, "manager", method, request)
        assert status.name == "PERMISSION_DENIED"


@pytest.mark.parametrize("kind", ["expired", "not-yet-valid", "self-signed", "other-ca", "node"])
def test_daemon_refuses_a_bad_manager(
    tmp_path: Path, certs: Path, bad_certs: Path, other_ca_certs: Path, kind: str
) -> None:
    """A real fleet-daemon whose "Manager" presents a bad certificate never registers with
    it: the server never sees a single request (and the Daemon says why)."""
    if kind == "node":  # a valid certificate of the wrong role where the Manager should be
        server_files = TLSFiles(certs / "node-b.crt", certs / "node-b.key", certs / "ca.crt")
    else:
        server_files = _bad_files(bad_certs, other_ca_certs, certs, kind, "manager")
        server_files = TLSFiles(server_files.cert_file, server_files.key_file, certs / "ca.crt")
    seen: list[str] = []

    class Trap(manager_pb.ManagerServiceBase):
        async def register_node(
            self, request: manager_pb.RegisterNodeRequest
        ) -> manager_pb.RegisterNodeResponse:
            seen.append(request.node_id)
            return manager_pb.RegisterNodeResponse(success=True)

    port = free_port()
    daemon = None

    async def serve() -> None:
        nonlocal daemon
        server = Server([GuardedService(Trap(), policy={"RegisterNode": {"node"}})])
        await server.start("127.0.0.1", port, ssl=server_context(server_files))
        try:
            daemon = await asyncio.to_thread(
                start_daemon, tmp_path, certs, node_id="node-a", manager_port=port
            )
            await asyncio.to_thread(
                wait_until,
                lambda: daemon.output().count("unreachable") >= 2,
                timeout=20,
                what="the Daemon refusing the server twice",
            )
        finally:
            server.close()
            await server.wait_closed()

    try:
        asyncio.run(serve())
        assert seen == []
        out = daemon.output()  # type: ignore[union-attr]
        assert "certificate" in out.lower() or "expected manager" in out, out[-2000:]
    finally:
        if daemon is not None:
            daemon.stop()


def test_manager_refuses_wrong_node_at_a_daemons_address(fleet: Fleet) -> None:
    """node-c registers node-a's Daemon address as its own: the Manager, dialling it for
    node-c, finds node/node-a's certificate there and refuses — node-a's agent is never
    operated on node-c's behalf. (The pool-level variant is
    ``test_manager_pool.py::test_wrong_node_certificate_is_refused_without_retry``.)"""
    certs, port = fleet.certs, fleet.mgr.grpc_port
    manager_rpc(
        certs,
        port,
        "node-c",
        "register_node",
        manager_pb.RegisterNodeRequest(
            node_id="node-c", daemon_address=fleet.daemon.address, heartbeat_interval_seconds=60
        ),
    )
    manager_rpc(
        certs,
        port,
        "node-c",
        "sync_agent_states",
        manager_pb.SyncAgentStatesRequest(
            node_id="node-c", states=[manager_pb.AgentState(agent_id="sleepy", status="RUNNING")]
        ),
    )
    pid = list_agents(certs, fleet.daemon)["sleepy"].pid
    status, message = manager_rpc_error(
        certs,
        port,
        "admin",
        "operate_agent",
        admin_pb.OperateAgentRequest(node_id="node-c", agent_id="sleepy", operation="stop"),
    )
    assert status.name == "UNAVAILABLE", (status, message)
    assert "node-c" in message
    assert list_agents(certs, fleet.daemon)["sleepy"].pid == pid
    assert list_agents(certs, fleet.daemon)["sleepy"].status == "RUNNING"


def test_nothing_falls_back_to_plaintext(tmp_path: Path, fleet: Fleet, certs: Path) -> None:
    """Plaintext clients get nothing from TLS listeners, and a TLS Daemon will not talk
    to a plaintext Manager."""
    for port, path, req, reply in (
        (
            fleet.mgr.grpc_port,
            ADMIN_SVC + "ListNodes",
            admin_pb.ListNodesRequest(),
            admin_pb.ListNodesResponse,
        ),
        (
            fleet.daemon.grpc_port,
            DAEMON_SVC + "ListAgents",
            daemon_pb.ListAgentsRequest(),
            daemon_pb.ListAgentsResponse,
        ),
    ):
        code, _ = asyncio.run(raw_call(port, None, path, req, reply, timeout=5))
        assert code in (REFUSED, "UNAVAILABLE", "UNKNOWN", "INTERNAL"), code
        assert code != "OK"
    plain = start_manager(tmp_path, None, insecure=True, log_name="plain.log")
    daemon = start_daemon(tmp_path, certs, node_id="node-b", manager_port=plain.grpc_port)
    try:
        wait_until(lambda: daemon.output().count("unreachable") >= 2, timeout=20, what="refusals")
        assert stored_nodes(plain.db_url) == {}
    finally:
        daemon.stop()
        plain.stop()
