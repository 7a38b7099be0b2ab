"""Central specs on a real fleet-manager: ApplySpec checks, dry-run plans, history,
delete, the spec columns of agents, and the schema (fresh and upgraded, both backends).

Nodes here are played through ManagerService with their own certificates and register
no Daemon address, so the controller has nobody to push to: what is checked is what the
Manager stores and answers. Pushing and rollouts are tests/test_manager_rollout.py's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness.manager import (
    ManagerProc,
    manager_rpc,
    manager_rpc_error,
    sign_spec,
    spec_document,
    start_manager,
)

from common.specdoc import canonical, load_signing_key
from schema import admin_pb, daemon_pb, manager_pb

# The newest migration: a fresh or upgraded database ends there.
LATEST_MIGRATION = max(
    p.stem for p in (Path(__file__).parents[1] / "manager" / "store" / "migrations").glob("0*.py")
)
WEB = {"id": "web", "command": ["/usr/bin/nginx", "-g", "daemon off;"], "start_seconds": "2s"}
WORKER = {"id": "worker", "command": ["/bin/sleep", "3600"]}


@pytest.fixture(scope="module")
def spec_certs(tmp_path_factory: pytest.TempPathFactory, certgen: ModuleType) -> Path:
    """The dev layout plus a second admin, alice, who signs while 'admin' sends."""
    directory = tmp_path_factory.mktemp("spec-certs")
    certgen.dev(directory, ["node-a", "node-b", "node-c"], echo=lambda _line: None)
    certgen.issue(directory, "admin", "alice")
    return directory


@pytest.fixture
def manager(tmp_path: Path, spec_certs: Path) -> Iterator[ManagerProc]:
    proc = start_manager(tmp_path, spec_certs)
    yield proc
    assert proc.stop() == 0, proc.output()[-3000:]


def admin(certs: Path, mgr: ManagerProc, method: str, request: Any) -> Any:
    return manager_rpc(certs, mgr.grpc_port, "admin", method, request)


def refused(certs: Path, mgr: ManagerProc, method: str, request: Any) -> tuple[Status, str]:
    return manager_rpc_error(certs, mgr.grpc_port, "admin", method, request)


def apply(certs: Path, mgr: ManagerProc, document: dict[str, Any], **kw: Any) -> Any:
    signer = kw.pop("signer", "admin")
    request = admin_pb.ApplySpecRequest(spec=sign_spec(certs, document, signer), **kw)
    return admin(certs, mgr, "apply_spec", request)


def register(certs: Path, mgr: ManagerProc, node_id: str, labels: dict[str, str]) -> None:
    manager_rpc(
        certs,
        mgr.grpc_port,
        node_id,
        "register_node",
        manager_pb.RegisterNodeRequest(
            node_id=node_id, hostname=node_id, labels=labels, instance_id=f"{node_id}-1"
        ),
    )


def report(
    certs: Path,
    mgr: ManagerProc,
    node_id: str,
    agents: list[manager_pb.AgentState],
    specs: list[manager_pb.SpecState],
) -> None:
    """A full SyncAgentStates, as a Daemon sends it."""
    manager_rpc(
        certs,
        mgr.grpc_port,
        node_id,
        "sync_agent_states",
        manager_pb.SyncAgentStatesRequest(node_id=node_id, states=agents, full=True, specs=specs),
    )


def running(agent_id: str, spec: str, revision: int) -> manager_pb.AgentState:
    return manager_pb.AgentState(
        agent_id=agent_id, status="RUNNING", pid=42, spec=spec, spec_revision=revision
    )


def applied(name: str, revision: int) -> manager_pb.SpecState:
    return manager_pb.SpecState(
        name=name, revision=revision, status="APPLIED", running_revision=revision
    )


def test_apply_spec_checks_every_input(manager: ManagerProc, spec_certs: Path) -> None:
    certs = spec_certs
    doc = spec_document("web", 1, [WEB], labels={"role": "web"})

    # No spec at all.
    status, message = refused(certs, manager, "apply_spec", admin_pb.ApplySpecRequest())
    assert status == Status.INVALID_ARGUMENT and "spec is required" in message

    # A payload changed after signing.
    signed = sign_spec(certs, doc)
    signed.payload = signed.payload.replace(b"nginx", b"evilx")
    status, message = refused(certs, manager, "apply_spec", admin_pb.ApplySpecRequest(spec=signed))
    assert status == Status.PERMISSION_DENIED
    assert "signature by admin/admin does not match" in message

    # Signed with a node's key and certificate: a valid certificate, but not an admin's.
    status, message = refused(
        certs,
        manager,
        "apply_spec",
        admin_pb.ApplySpecRequest(spec=sign_spec(certs, doc, "node-a")),
    )
    assert status == Status.PERMISSION_DENIED and "node/node-a is not an admin" in message

    # A document no Daemon would accept (a relative cwd), signed anyway.
    bad = dict(doc, agents=[dict(WEB, cwd="relative/dir")])
    payload = canonical(bad)
    key = load_signing_key(certs / "admin.key")
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    raw = daemon_pb.SignedSpec(
        payload=payload,
        signature=key.sign(payload, ec.ECDSA(hashes.SHA256())),
        signer_cert=(certs / "admin.crt").read_bytes(),
    )
    status, message = refused(certs, manager, "apply_spec", admin_pb.ApplySpecRequest(spec=raw))
    assert status == Status.INVALID_ARGUMENT and "'cwd' must be an absolute path" in message

    # The wrong revision: a new spec's first revision is 1.
    status, message = refused(
        certs,
        manager,
        "apply_spec",
        admin_pb.ApplySpecRequest(spec=sign_spec(certs, dict(doc, revision=3))),
    )
    assert status == Status.FAILED_PRECONDITION
    assert message == "spec web is at revision 0 (next 1); you signed 3: re-run"

    # A bad policy names the field.
    status, message = refused(
        certs,
        manager,
        "apply_spec",
        admin_pb.ApplySpecRequest(
            spec=sign_spec(certs, doc), policy=admin_pb.RolloutPolicy(max_unavailable="150%")
        ),
    )
    assert status == Status.INVALID_ARGUMENT and "policy.max_unavailable" in message

    # Only admins may call it at all (the allow-list, before the request is read).
    status, _ = manager_rpc_error(
        certs,
        manager.grpc_port,
        "node-a",
        "apply_spec",
        admin_pb.ApplySpecRequest(spec=sign_spec(certs, doc)),
    )
    assert status == Status.PERMISSION_DENIED

    # Nothing of the above was stored.
    status, message = refused(certs, manager, "get_spec", admin_pb.GetSpecRequest(name="web"))
    assert status == Status.NOT_FOUND and message == "spec web does not exist"

    # Revision 1 is stored; its rollout starts.
    reply = apply(certs, manager, doc)
    assert reply.changed
    assert (reply.spec.name, reply.spec.revision, reply.spec.next_revision) == ("web", 1, 2)
    assert reply.spec.agent_ids == ["web"] and reply.spec.target_labels == {"role": "web"}
    assert reply.rollout.revision == 1 and reply.rollout.from_revision == 0
    assert reply.rollout.state in ("running", "succeeded")
    assert reply.rollout.policy.max_unavailable == "25%"
    assert reply.rollout.policy.healthy_deadline_seconds == 120

    # Signing the same revision again is a stale apply now.
    status, message = refused(
        certs, manager, "apply_spec", admin_pb.ApplySpecRequest(spec=sign_spec(certs, doc))
    )
    assert status == Status.FAILED_PRECONDITION
    assert message == "spec web is at revision 1 (next 2); you signed 1: re-run"

    # The same content at the next revision is a no-op: nothing stored, no rollout.
    again = apply(certs, manager, dict(doc, revision=2, signed_at=int(time.time()) + 5))
    assert not again.changed and not again.rollout.spec and not again.plan
    spec = admin(certs, manager, "get_spec", admin_pb.GetSpecRequest(name="web"))
    assert (spec.spec.revision, spec.spec.next_revision) == (1, 2)
    assert [h.revision for h in spec.history] == [1]

    # A rollback envelope must be revision + 1 of the current content.
    changed = spec_document("web", 2, [WEB, WORKER], labels={"role": "web"})
    for rollback, why in (
        (spec_document("web", 4, [WEB], labels={"role": "web"}, rollback_of=2), "revision is 4"),
        (spec_document("web", 3, [WEB], labels={"role": "web"}, rollback_of=1), "rollback_of"),
        (
            spec_document("web", 3, [WORKER], labels={"role": "web"}, rollback_of=2),
            "content is not the current revision's",
        ),
    ):
        status, message = refused(
            certs,
            manager,
            "apply_spec",
            admin_pb.ApplySpecRequest(
                spec=sign_spec(certs, changed), rollback=sign_spec(certs, rollback)
            ),
        )
        assert status == Status.INVALID_ARGUMENT and message.startswith("rollback: "), message
        assert why in message
    good = spec_document("web", 3, [WEB], labels={"role": "web"}, rollback_of=2)
    reply = apply(
        certs,
        manager,
        changed,
        rollback=sign_spec(certs, good),
        policy=admin_pb.RolloutPolicy(auto_rollback=True, max_unavailable="1"),
    )
    assert reply.changed and reply.rollout.revision == 2 and reply.rollout.from_revision == 1
    assert reply.rollout.policy.auto_rollback and reply.rollout.policy.max_unavailable == "1"


def test_apply_spec_refused_from_other_ca_and_without_tls(
    tmp_path: Path, spec_certs: Path, other_ca_certs: Path
) -> None:
    doc = spec_document("web", 1, [WEB], labels={"role": "web"})
    mgr = start_manager(tmp_path, spec_certs)
    try:
        status, message = refused(
            spec_certs,
            mgr,
            "apply_spec",
            admin_pb.ApplySpecRequest(spec=sign_spec(other_ca_certs, doc)),
        )
        assert status == Status.PERMISSION_DENIED
        assert "not issued by the fleet CA" in message
    finally:
        assert mgr.stop() == 0

    insecure = start_manager(tmp_path / "insecure", None, insecure=True)

    async def call() -> None:
        channel = Channel("127.0.0.1", insecure.grpc_port)
        try:
            await admin_pb.AdminServiceStub(channel, timeout=10).apply_spec(
                admin_pb.ApplySpecRequest(spec=sign_spec(spec_certs, doc))
            )
        finally:
            channel.close()

    try:
        with pytest.raises(GRPCError) as info:
            asyncio.run(call())
        assert info.value.status == Status.FAILED_PRECONDITION
        assert (info.value.message or "").startswith("specs need TLS")
    finally:
        assert insecure.stop() == 0


def test_dry_run_plans_each_node_field_by_field(manager: ManagerProc, spec_certs: Path) -> None:
    certs = spec_certs
    register(certs, manager, "node-a", {"role": "web"})
    register(certs, manager, "node-b", {"role": "db"})
    register(certs, manager, "node-c", {"role": "db"})
    first = spec_document("web", 1, [WEB, WORKER], labels={"role": "web"})
    plan = apply(certs, manager, first, dry_run=True)
    assert plan.changed and not plan.rollout.spec
    assert [(p.node_id, [(c.agent_id, c.action) for c in p.changes]) for p in plan.plan] == [
        ("node-a", [("web", "added"), ("worker", "added")])
    ]
    assert {c.source for c in plan.plan[0].changes} == {"spec:web@1"}
    # A dry run stores nothing.
    assert refused(certs, manager, "get_spec", admin_pb.GetSpecRequest(name="web"))[0] == (
        Status.NOT_FOUND
    )

    apply(certs, manager, first)
    report(
        certs,
        manager,
        "node-a",
        [running("web", "web", 1), running("worker", "web", 1)],
        [applied("web", 1)],
    )
    # Revision 2: web gets another command and start_seconds, worker goes, cache comes;
    # node-b is named in the target as well.
    web2 = dict(WEB, command=["/usr/sbin/nginx"], start_seconds="5s")
    cache = {"id": "cache", "command": ["/usr/bin/redis-server"]}
    second = spec_document("web", 2, [web2, cache], labels={"role": "web"}, nodes=["node-b"])
    plan = apply(certs, manager, second, dry_run=True)
    by_node = {p.node_id: p.changes for p in plan.plan}
    assert sorted(by_node) == ["node-a", "node-b"]  # node-c is not targeted and runs nothing
    node_a = {c.agent_id: c for c in by_node["node-a"]}
    assert {a: c.action for a, c in node_a.items()} == {
        "cache": "added",
        "web": "changed",
        "worker": "removed",
    }
    fields = {f.field: (f.old, f.new) for f in node_a["web"].fields}
    assert fields == {
        "command": (
            json.dumps(WEB["command"], separators=(",", ":")),
            json.dumps(["/usr/sbin/nginx"]),
        ),
        "start_seconds": ("2.0", "5.0"),
    }
    assert node_a["web"].source == "spec:web@2" and node_a["worker"].source == "spec:web@1"
    assert [(c.agent_id, c.action) for c in by_node["node-b"]] == [
        ("cache", "added"),
        ("web", "added"),
    ]
    spec = admin(certs, manager, "get_spec", admin_pb.GetSpecRequest(name="web"))
    assert (spec.spec.revision, spec.spec.next_revision) == (1, 2)  # still untouched


def test_history_status_and_delete(tmp_path: Path, spec_certs: Path, db_url: str) -> None:
    certs = spec_certs
    mgr = start_manager(tmp_path, certs, db_url=db_url)
    try:
        register(certs, mgr, "node-a", {"role": "web"})
        register(certs, mgr, "node-b", {"role": "web"})
        register(certs, mgr, "node-c", {"role": "db"})
        one = spec_document("web", 1, [WEB], labels={"role": "web"})
        apply(certs, mgr, one, signer="alice")
        report(certs, mgr, "node-a", [running("web", "web", 1)], [applied("web", 1)])
        report(
            certs,
            mgr,
            "node-b",
            [],
            [
                manager_pb.SpecState(
                    name="web",
                    revision=1,
                    status="REFUSED",
                    reason="host policy: /usr/bin/nginx is not in allow_commands",
                )
            ],
        )
        two = spec_document("web", 2, [WEB, WORKER], labels={"role": "web"})
        apply(certs, mgr, two)

        got = admin(certs, mgr, "get_spec", admin_pb.GetSpecRequest(name="web"))
        assert (got.spec.revision, got.spec.next_revision, got.spec.deleted) == (2, 3, False)
        assert (got.spec.node_count, got.spec.converged_count) == (2, 0)
        assert got.spec.updated_by == "admin/admin"
        assert [(h.revision, h.kind, h.signed_by, h.applied_by) for h in got.history] == [
            (2, "apply", "admin/admin", "admin/admin"),
            (1, "apply", "admin/alice", "admin/admin"),
        ]
        assert all(h.created_at >= time.time() - 60 for h in got.history)
        assert got.current.revision == 2
        assert got.current.signed.payload == sign_spec(certs, two).payload
        nodes = {n.node_id: n for n in got.nodes}
        assert sorted(nodes) == ["node-a", "node-b"]  # node-c is not targeted
        assert nodes["node-a"].running_revision == 1
        assert nodes["node-b"].running_revision == 0
        assert "allow_commands" in nodes["node-b"].reason
        assert got.rollout.revision == 2

        listed = admin(certs, mgr, "list_specs", admin_pb.ListSpecsRequest())
        assert [(s.name, s.revision) for s in listed.specs] == [("web", 2)]

        # Delete: the plan removes what nodes run; the delete is a revision of its own.
        report(
            certs,
            mgr,
            "node-a",
            [running("web", "web", 2), running("worker", "web", 2)],
            [applied("web", 2)],
        )
        plan = admin(
            certs, mgr, "delete_spec", admin_pb.DeleteSpecRequest(name="web", dry_run=True)
        )
        assert [(p.node_id, sorted(c.agent_id for c in p.changes)) for p in plan.plan] == [
            ("node-a", ["web", "worker"])
        ]
        assert {c.action for c in plan.plan[0].changes} == {"removed"}
        assert not plan.spec.deleted
        gone = admin(certs, mgr, "delete_spec", admin_pb.DeleteSpecRequest(name="web"))
        assert gone.spec.deleted and (gone.spec.revision, gone.spec.next_revision) == (3, 4)
        got = admin(certs, mgr, "get_spec", admin_pb.GetSpecRequest(name="web"))
        assert not got.current.name  # unset
        assert [(h.revision, h.kind, h.applied_by) for h in got.history][:1] == [
            (3, "delete", "admin/admin")
        ]
        assert not got.history[0].signed.payload
        assert got.rollout.state == "interrupted" and got.rollout.reason == "spec deleted"
        assert {n.node_id: n.target_revision for n in got.nodes} == {"node-a": 0, "node-b": 0}
        assert admin(certs, mgr, "list_specs", admin_pb.ListSpecsRequest()).specs == []
        deleted = admin(certs, mgr, "list_specs", admin_pb.ListSpecsRequest(include_deleted=True))
        assert [(s.name, s.deleted) for s in deleted.specs] == [("web", True)]
        # Deleting again changes nothing; applying again must be signed as revision 4.
        assert (
            admin(certs, mgr, "delete_spec", admin_pb.DeleteSpecRequest(name="web")).spec.revision
            == 3
        )
        assert refused(
            certs,
            mgr,
            "apply_spec",
            admin_pb.ApplySpecRequest(spec=sign_spec(certs, dict(one, revision=3))),
        ) == (
            Status.FAILED_PRECONDITION,
            "spec web is at revision 3 (next 4); you signed 3: re-run",
        )
        back = apply(certs, mgr, dict(one, revision=4))
        assert back.changed and not back.spec.deleted and back.spec.revision == 4
        assert back.rollout.from_revision == 0
    finally:
        assert mgr.stop() == 0


def test_spec_rpcs_name_what_is_wrong(manager: ManagerProc, spec_certs: Path) -> None:
    certs = spec_certs
    assert refused(certs, manager, "get_spec", admin_pb.GetSpecRequest(name="no such"))[0] == (
        Status.INVALID_ARGUMENT
    )
    assert refused(certs, manager, "get_rollout", admin_pb.GetRolloutRequest(spec="web")) == (
        Status.NOT_FOUND,
        "spec web does not exist",
    )
    assert refused(certs, manager, "delete_spec", admin_pb.DeleteSpecRequest(name="web")) == (
        Status.NOT_FOUND,
        "spec web does not exist",
    )
    status, message = refused(
        certs,
        manager,
        "get_spec",
        admin_pb.GetSpecRequest(name="web", history_limit=5000),
    )
    assert status == Status.INVALID_ARGUMENT and "history_limit" in message
    apply(certs, manager, spec_document("web", 1, [WEB], labels={"role": "web"}))
    status, message = refused(
        certs,
        manager,
        "set_rollout_state",
        admin_pb.SetRolloutStateRequest(spec="web", action="rewind"),
    )
    assert (status, message) == (Status.INVALID_ARGUMENT, "action 'rewind' is not pause or resume")
    # No node is targeted: the rollout has nothing to do and succeeds.
    rollout = admin(certs, manager, "get_rollout", admin_pb.GetRolloutRequest(spec="web")).rollout
    deadline = time.monotonic() + 15
    while rollout.state != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.1)
        rollout = admin(
            certs, manager, "get_rollout", admin_pb.GetRolloutRequest(spec="web")
        ).rollout
    assert (rollout.state, rollout.total) == ("succeeded", 0)
    status, message = refused(
        certs,
        manager,
        "set_rollout_state",
        admin_pb.SetRolloutStateRequest(spec="web", action="pause"),
    )
    assert status == Status.FAILED_PRECONDITION
    assert message == (
        "the rollout of web revision 1 is succeeded: only a running rollout can be paused"
    )
    status, message = refused(
        certs, manager, "reload_daemon", admin_pb.ReloadDaemonRequest(node_id="node-z")
    )
    assert (status, message) == (Status.NOT_FOUND, "node node-z is not registered")


def test_agents_show_their_spec_and_revision(manager: ManagerProc, spec_certs: Path) -> None:
    certs = spec_certs
    register(certs, manager, "node-a", {"role": "web"})
    report(
        certs,
        manager,
        "node-a",
        [
            running("web", "web", 7),
            manager_pb.AgentState(agent_id="local", status="RUNNING", pid=7),
        ],
        [applied("web", 7)],
    )
    listed = admin(certs, manager, "list_agents", admin_pb.ListAgentsRequest())  # upb path
    assert [(a.id, a.spec, a.spec_revision) for a in listed.agents] == [
        ("local", "", 0),
        ("web", "web", 7),
    ]
    node = admin(certs, manager, "get_node", admin_pb.GetNodeRequest(node_id="node-a"))
    assert [(a.id, a.spec, a.spec_revision) for a in node.agents] == [
        ("local", "", 0),
        ("web", "web", 7),
    ]
    # Spec states are checked like everything else a node sends.
    status, message = manager_rpc_error(
        certs,
        manager.grpc_port,
        "node-a",
        "sync_agent_states",
        manager_pb.SyncAgentStatesRequest(
            node_id="node-a",
            full=True,
            specs=[manager_pb.SpecState(name="web", revision=1, status="GREAT")],
        ),
    )
    assert status == Status.INVALID_ARGUMENT and "specs[0].status 'GREAT'" in message


# ---- the schema on both backends ----


async def _database_at_0003(url: str) -> None:
    """A database as the Manager before specs left it (migrations up to 0003), with an
    agent row in it."""
    from tortoise.context import TortoiseContext
    from tortoise.migrations.api import migrate

    from manager.store.database import connection_name, tortoise_config

    ctx = TortoiseContext()
    ctx.__enter__()
    try:
        await migrate(config=tortoise_config(url), target="manager.0003_metric_sample_identity")
        conn = ctx.db(connection_name(url))
        pg = url.startswith("postgres")

        def insert(table: str, row: dict[str, Any]) -> tuple[str, list[Any]]:
            marks = ", ".join(f"${i}" if pg else "?" for i in range(1, len(row) + 1))
            return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", list(row.values())

        text = dict.fromkeys(("ip", "os", "arch", "daemon_version", "agent_version"), "")
        await conn.execute_query(
            *insert(
                "fleet_node",
                {
                    "node_id": "old-node",
                    "hostname": "old-host",
                    "labels": json.dumps({"role": "web"}),
                    "daemon_address": "",
                    "heartbeat_interval": 60.0,
                    "instance_id": "",
                    "status": "offline",
                    "registered_at": time.time(),
                    "updated_at": time.time(),
                    **text,
                },
            )
        )
        await conn.execute_query(
            *insert(
                "fleet_agent",
                {
                    "node_id": "old-node",
                    "agent_id": "legacy",
                    "type": "worker",
                    "status": "RUNNING",
                    "pid": 7,
                    "version": "",
                    "start_time": 0,
                    "restart_count": 0,
                    "last_heartbeat": 0,
                    "status_reason": "",
                    "config_hash": "",
                    "updated_at": time.time(),
                },
            )
        )
    finally:
        await ctx.close_connections()
        ctx.__exit__(None, None, None)


@pytest.mark.parametrize("upgraded", [False, True], ids=["fresh", "from-0003"])
def test_spec_schema_fresh_and_upgraded(
    tmp_path: Path, spec_certs: Path, db_url: str, upgraded: bool
) -> None:
    if upgraded:
        asyncio.run(_database_at_0003(db_url))
    mgr = start_manager(tmp_path, spec_certs, db_url=db_url)
    try:
        migrated = mgr.output().split("database migrated: applied ")[1].splitlines()[0]
        assert "0004_specs_rollouts" in migrated
        assert migrated.endswith(LATEST_MIGRATION), migrated
        assert ("0001_initial" in migrated) is not upgraded
        if upgraded:
            agents = admin(spec_certs, mgr, "list_agents", admin_pb.ListAgentsRequest()).agents
            assert [(a.node_id, a.id, a.spec, a.spec_revision) for a in agents] == [
                ("old-node", "legacy", "", 0)
            ]
        reply = apply(spec_certs, mgr, spec_document("web", 1, [WEB], labels={"role": "web"}))
        assert reply.changed and reply.spec.revision == 1
        # The offline node is targeted; it is told when it comes back.
        got = admin(spec_certs, mgr, "get_spec", admin_pb.GetSpecRequest(name="web"))
        if upgraded:
            assert [(n.node_id, n.state) for n in got.nodes] == [("old-node", "offline")]
    finally:
        assert mgr.stop() == 0


def test_concurrent_applies_of_one_revision_store_one(db_url: str) -> None:
    """Two Managers (or two callers) applying revision 1 at once: one wins, the other is
    told to re-run; the store never holds two revisions 1."""
    from common.errors import FailedPrecondition
    from manager.store import Database
    from manager.store.specs import NewRevision, SpecStore

    async def run() -> None:
        db = Database(url=db_url)
        await db.start()
        try:
            store = SpecStore(database=db)

            def revision(by: str) -> NewRevision:
                return NewRevision("web", 1, "apply", b"{}", b"s", b"c", by, by)

            results = await asyncio.gather(
                *(
                    store.apply_revision(
                        new=revision(f"admin/{i}"),
                        policy={},
                        from_revision=0,
                        rollback=None,
                        now=time.time(),
                    )
                    for i in range(4)
                ),
                return_exceptions=True,
            )
            ok = [r for r in results if not isinstance(r, BaseException)]
            stale = [r for r in results if isinstance(r, FailedPrecondition)]
            assert len(ok) == 1 and len(stale) == 3, results
            assert "you signed 1: re-run" in str(stale[0])
            assert [r.revision for r in await store.history("web", 10)] == [1]
            assert len(await store.active_rollouts()) == 1
        finally:
            await db.close()

    asyncio.run(run())
