"""Central specs on a real Daemon: ApplySpecs called directly with the Manager's or an
admin's certificate, specs signed with certgen's admin key (common.specdoc.sign).

Accepted revisions run with spec/spec_revision in ListAgents; a new revision restarts only
what changed; a spec left out of the set is removed. Every refusal (altered payload,
non-admin signer, replayed or swapped revision, expired, foreign target, host policy,
root, id clash, no CA) runs nothing of that revision and leaves the previous one running.
Accepted specs survive a Daemon restart without a Manager (adopted, or started again from
specs.json)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest
from grpclib.client import Channel
from harness.daemon import (
    DaemonProc,
    agent,
    all_running,
    call_daemon,
    list_agents,
    lone_daemon,
    read_config,
    write_config,
)

from common.specdoc import KIND, load_signing_key, sign
from schema import daemon_pb, manager_pb

ALLOW_ROOT = {"specs": {"allow_root": True}}  # the tests may run as root


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def signed(
    certs: Path,
    name: str,
    revision: int,
    agents: Sequence[Mapping[str, Any]],
    *,
    nodes: Sequence[str] = ("node-a",),
    labels: Mapping[str, str] | None = None,
    signer: str = "admin",
    expires_at: int = 0,
) -> daemon_pb.SignedSpec:
    """A spec revision signed with ``certs/<signer>.key`` as fleetctl would sign it."""
    document = {
        "kind": KIND,
        "name": name,
        "revision": revision,
        "target": {"labels": dict(labels or {}), "nodes": list(nodes)},
        "agents": [dict(a) for a in agents],
        "signed_at": int(time.time()),
        "expires_at": expires_at,
        "rollback_of": 0,
    }
    payload, signature = sign(document, load_signing_key(certs / f"{signer}.key"))
    return daemon_pb.SignedSpec(
        payload=payload, signature=signature, signer_cert=(certs / f"{signer}.crt").read_bytes()
    )


def apply(
    certs: Path, daemon: DaemonProc, *specs: daemon_pb.SignedSpec, cert: str = "manager"
) -> daemon_pb.ApplySpecsResponse:
    reply: daemon_pb.ApplySpecsResponse = call_daemon(
        certs, daemon, "apply_specs", daemon_pb.ApplySpecsRequest(specs=list(specs)), cert_name=cert
    )
    return reply


def states(reply: daemon_pb.ApplySpecsResponse) -> dict[str, manager_pb.SpecState]:
    return {s.name: s for s in reply.specs}


def changes(reply: daemon_pb.ApplySpecsResponse) -> dict[str, daemon_pb.AgentChange]:
    return {c.agent_id: c for c in reply.changes}


def sleeper(agent_id: str, *args: str, **settings: Any) -> dict[str, Any]:
    settings.setdefault("start_seconds", 0.2)
    return agent(agent_id, "sleeper", *args, **settings)


@pytest.fixture
def daemon(tmp_path: Path, certs: Path) -> Iterator[DaemonProc]:
    """node-a with one local agent ('local') and root allowed for central agents."""
    with lone_daemon(
        tmp_path, certs, agents=[sleeper("local")], config=dict(ALLOW_ROOT)
    ) as started:
        all_running(certs, started)
        yield started


def test_spec_runs_new_revision_restarts_only_what_changed_and_removal(
    tmp_path: Path, certs: Path, daemon: DaemonProc
) -> None:
    local_pid = list_agents(certs, daemon)["local"].pid
    rev1 = signed(certs, "web", 1, [sleeper("w1"), sleeper("w2")])
    reply = apply(certs, daemon, rev1)
    assert states(reply)["web"] == manager_pb.SpecState(
        name="web", revision=1, status="APPLIED", reason="", running_revision=1
    )
    assert {(c.agent_id, c.action, c.source) for c in reply.changes} == {
        ("w1", "added", "spec:web@1"),
        ("w2", "added", "spec:web@1"),
    }
    first = list_agents(certs, daemon)
    assert list(first) == ["local", "w1", "w2"]
    for name in ("w1", "w2"):
        assert first[name].status == "RUNNING"
        assert (first[name].spec, first[name].spec_revision) == ("web", 1)
    assert (first["local"].spec, first["local"].spec_revision) == ("", 0)
    specs_file = daemon.state_dir / "specs.json"
    assert stat.S_IMODE(specs_file.stat().st_mode) == 0o600

    # Same set again: nothing to do.
    again = apply(certs, daemon, rev1)
    assert states(again)["web"].status == "APPLIED" and not again.changes

    # Revision 2 changes w1's command only: w1 restarts, w2 keeps its process.
    pids = tmp_path / "w1.pids"
    reply = apply(certs, daemon, signed(certs, "web", 2, [sleeper("w1", str(pids)), sleeper("w2")]))
    assert states(reply)["web"].status == "APPLIED" and states(reply)["web"].running_revision == 2
    (change,) = reply.changes
    assert (change.agent_id, change.action, change.source) == ("w1", "changed", "spec:web@2")
    assert [f.field for f in change.fields] == ["command"]
    second = list_agents(certs, daemon)
    assert second["w2"].pid == first["w2"].pid and second["w2"].spec_revision == 2
    assert second["w1"].pid != first["w1"].pid and second["w1"].status == "RUNNING"
    assert pids.read_text().split() == [str(second["w1"].pid)]
    assert not _alive(first["w1"].pid)

    # A spec absent from the set is removed: its agents stop and are forgotten.
    reply = apply(certs, daemon)
    assert {(c.agent_id, c.action) for c in reply.changes} == {
        ("w1", "removed"),
        ("w2", "removed"),
    }
    gone = states(reply)["web"]
    assert gone.running_revision == 0 and "removed" in gone.reason
    assert list(list_agents(certs, daemon)) == ["local"]
    assert not _alive(second["w1"].pid) and not _alive(second["w2"].pid)
    assert list_agents(certs, daemon)["local"].pid == local_pid
    saved = json.loads(specs_file.read_text())
    assert saved["specs"] == {} and saved["seen"]["web"]["revision"] == 2
    assert set(json.loads((daemon.state_dir / "agents.json").read_text())["agents"]) == {"local"}

    # The highest revision seen is remembered: the old revision cannot come back.
    replay = states(apply(certs, daemon, rev1))["web"]
    assert replay.status == "REFUSED" and "replay" in replay.reason
    assert list(list_agents(certs, daemon)) == ["local"]


def test_agent_that_fails_to_start_makes_the_spec_failed(certs: Path, daemon: DaemonProc) -> None:
    broken = {"id": "broken", "command": ["/nonexistent/bin/app"], "start_retries": 0}
    reply = apply(certs, daemon, signed(certs, "bad", 1, [sleeper("fine"), broken]))
    state = states(reply)["bad"]
    assert (state.status, state.revision, state.running_revision) == ("FAILED", 1, 1)
    assert "agent 'broken' did not start" in state.reason
    assert "no such executable: /nonexistent/bin/app" in state.reason
    assert "no such executable" in changes(reply)["broken"].error
    agents = list_agents(certs, daemon)
    assert agents["fine"].status == "RUNNING" and agents["broken"].status == "FATAL"


def _refused(
    certs: Path, daemon: DaemonProc, *specs: daemon_pb.SignedSpec, name: str = "web"
) -> manager_pb.SpecState:
    """Apply, check ``name`` was refused and nothing of it changed; its state."""
    before = [(a.id, a.pid, a.spec, a.spec_revision) for a in list_agents(certs, daemon).values()]
    reply = apply(certs, daemon, *specs)
    state = states(reply)[name]
    assert state.status == "REFUSED" and state.reason, state
    assert not reply.changes, reply.changes
    after = [(a.id, a.pid, a.spec, a.spec_revision) for a in list_agents(certs, daemon).values()]
    assert after == before
    return state


def test_refused_revisions_run_nothing_and_the_previous_keeps_running(
    tmp_path: Path, certs: Path, other_ca_certs: Path, daemon: DaemonProc
) -> None:
    assert states(apply(certs, daemon, signed(certs, "web", 1, [sleeper("w1")])))["web"].status == (
        "APPLIED"
    )
    evil = [agent("w1", "crasher", "3", "0")]

    # A payload altered after signing.
    tampered = signed(certs, "web", 2, [sleeper("w1")])
    tampered.payload = tampered.payload.replace(b"sleeper.py", b"crasher.py")
    state = _refused(certs, daemon, tampered)
    assert "does not match" in state.reason and state.running_revision == 1

    # Signed with a node certificate (issued by the fleet CA, but not an admin).
    state = _refused(certs, daemon, signed(certs, "web", 2, evil, signer="node-b"))
    assert "is not an admin" in state.reason and state.running_revision == 1

    # Signed by the Manager's own certificate: the Manager cannot sign specs.
    manager = signed(certs, "web", 2, [sleeper("w1")])
    manager.signer_cert = (certs / "manager.crt").read_bytes()
    state = _refused(certs, daemon, manager)
    assert "signer manager/manager is not an admin" in state.reason

    # An admin of another CA.
    state = _refused(certs, daemon, signed(other_ca_certs, "web", 2, evil))
    assert "not issued by the fleet CA" in state.reason and state.running_revision == 1

    # Expired (a pre-signed rollback offered too late).
    state = _refused(certs, daemon, signed(certs, "web", 2, evil, expires_at=1))
    assert "expired" in state.reason and state.running_revision == 1

    # A target that does not name this node (by id or labels).
    # (Each is a new revision: a revision number, once seen with a valid signature,
    # stands for those bytes only.)
    state = _refused(certs, daemon, signed(certs, "web", 3, evil, nodes=["node-b"]))
    assert "does not include node 'node-a'" in state.reason
    state = _refused(certs, daemon, signed(certs, "web", 4, evil, nodes=(), labels={"role": "x"}))
    assert "does not include node 'node-a'" in state.reason and state.running_revision == 1

    # Revision 5 is accepted; an older one replayed afterwards is refused.
    rev5 = signed(certs, "web", 5, [sleeper("w1", str(tmp_path / "w1.pids"))])
    assert states(apply(certs, daemon, rev5))["web"].running_revision == 5
    running = list_agents(certs, daemon)["w1"]
    assert running.spec_revision == 5
    for old in (1, 4):
        state = _refused(certs, daemon, signed(certs, "web", old, [sleeper("w1")]))
        assert "lower than revision 5 already seen" in state.reason and "replay" in state.reason
        assert state.revision == old and state.running_revision == 5
    # The same revision number with other content.
    state = _refused(certs, daemon, signed(certs, "web", 5, evil))
    assert "other content" in state.reason and state.running_revision == 5
    # Two documents with the same name in one set.
    state = _refused(certs, daemon, rev5, signed(certs, "web", 6, [sleeper("w1")]))
    assert "2 documents named 'web'" in state.reason and state.running_revision == 5

    w1 = list_agents(certs, daemon)["w1"]
    assert (w1.pid, w1.spec_revision, w1.status) == (running.pid, 5, "RUNNING")
    # Nothing of the refused revisions ever ran (no crasher anywhere).
    for proc in psutil.Process(daemon.pid).children(recursive=True):
        assert "crasher.py" not in " ".join(proc.cmdline())


def test_id_clashes_local_wins_and_the_running_spec_keeps_its_id(
    certs: Path, daemon: DaemonProc
) -> None:
    state = _refused(certs, daemon, signed(certs, "web", 1, [sleeper("local")]))
    assert state.reason == "agent id 'local' is declared in daemon.toml on this node"
    assert state.running_revision == 0

    b1 = signed(certs, "b", 1, [sleeper("shared")])
    assert states(apply(certs, daemon, b1))["b"].status == "APPLIED"
    shared = list_agents(certs, daemon)["shared"]
    # "a" sorts before "b", but "b" already runs the id: "a" is refused, "b" keeps it.
    reply = apply(certs, daemon, signed(certs, "a", 1, [sleeper("shared"), sleeper("x")]), b1)
    a, b = states(reply)["a"], states(reply)["b"]
    assert a.status == "REFUSED" and "agent id 'shared' is also in spec 'b'" in a.reason
    assert (b.status, b.running_revision) == ("APPLIED", 1)
    now = list_agents(certs, daemon)
    assert "x" not in now and now["shared"].pid == shared.pid and now["shared"].spec == "b"


@pytest.mark.parametrize("allow_commands", [True, False])
def test_host_policy_refuses_executables_and_root(
    tmp_path: Path, certs: Path, allow_commands: bool
) -> None:
    venv_bin = str(Path(sys.executable).parent)
    policy: dict[str, Any] = {"allow_root": False}
    if allow_commands:
        policy["allow_commands"] = [f"{venv_bin}/*"]
    with lone_daemon(tmp_path, certs, config={"specs": policy}) as daemon:
        nobody = {"user": "nobody"} if os.geteuid() == 0 else {}

        # root: asked for by name, or implied by no user while the Daemon is root.
        state = _refused(certs, daemon, signed(certs, "web", 1, [sleeper("w", user="root")]))
        assert "would run as root (user 'root'): [specs] allow_root is false" in state.reason
        if os.geteuid() == 0:
            state = _refused(certs, daemon, signed(certs, "web", 2, [sleeper("w")]))
            assert "no user while the Daemon runs as root" in state.reason

        if not allow_commands:
            return
        sleep = {"id": "s", "command": ["sleep", "60"], **nobody}
        state = _refused(certs, daemon, signed(certs, "web", 3, [sleep]))
        assert "executable /" in state.reason and "not allowed by [specs] allow_commands" in (
            state.reason
        )
        nowhere = {"id": "s", "command": ["no-such-command-xyz"], **nobody}
        state = _refused(certs, daemon, signed(certs, "web", 4, [nowhere]))
        assert "not found on PATH" in state.reason
        # A path that climbs out of the allowed directory is normalised first.
        climb = {"id": "s", "command": [venv_bin + "/.." * 30 + "/bin/sh"], **nobody}
        state = _refused(certs, daemon, signed(certs, "web", 5, [climb]))
        assert "executable /bin/sh is not allowed" in state.reason
        assert list_agents(certs, daemon) == {}


def test_no_ca_means_every_spec_is_refused(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(tmp_path, None, insecure=True, config=dict(ALLOW_ROOT)) as daemon:

        async def go() -> daemon_pb.ApplySpecsResponse:
            channel = Channel("127.0.0.1", daemon.grpc_port)
            try:
                stub = daemon_pb.DaemonServiceStub(channel)
                return await stub.apply_specs(
                    daemon_pb.ApplySpecsRequest(specs=[signed(certs, "web", 1, [sleeper("w")])]),
                    timeout=30,
                )
            finally:
                channel.close()

        state = states(asyncio.run(go()))["web"]
        assert state.status == "REFUSED"
        assert state.reason == "no CA to verify signatures (insecure mode)"


def test_node_certificates_cannot_call_apply_specs(certs: Path, daemon: DaemonProc) -> None:
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    with pytest.raises(GRPCError) as exc:
        apply(certs, daemon, signed(certs, "web", 1, [sleeper("w")]), cert="node-b")
    assert exc.value.status is Status.PERMISSION_DENIED
    reply = apply(certs, daemon, signed(certs, "web", 1, [sleeper("w")]), cert="admin")
    assert states(reply)["web"].status == "APPLIED"


def test_reload_rechecks_specs_against_new_labels_and_policy(
    certs: Path, daemon: DaemonProc
) -> None:
    data = read_config(daemon)
    data["labels"] = {"role": "web"}
    write_config(daemon, data)
    assert daemon.reload_by_signal()
    by_label = signed(certs, "web", 1, [sleeper("w")], nodes=(), labels={"role": "web"})
    assert states(apply(certs, daemon, by_label))["web"].status == "APPLIED"
    assert list_agents(certs, daemon)["w"].status == "RUNNING"
    w_pid = list_agents(certs, daemon)["w"].pid

    # New labels no longer match the spec's target: its agents stop.
    data["labels"] = {"role": "db"}
    write_config(daemon, data)
    reply = call_daemon(certs, daemon, "reload_config", daemon_pb.ReloadConfigRequest())
    assert reply.success
    assert [(c.agent_id, c.action, c.source) for c in reply.changes] == [
        ("w", "removed", "spec:web@1")
    ]
    assert "w" not in list_agents(certs, daemon) and not _alive(w_pid)

    # Labels back: the spec the Manager offered last runs again, without the Manager.
    data["labels"] = {"role": "web"}
    write_config(daemon, data)
    reply = call_daemon(certs, daemon, "reload_config", daemon_pb.ReloadConfigRequest())
    assert [(c.agent_id, c.action) for c in reply.changes] == [("w", "added")]
    assert list_agents(certs, daemon)["w"].spec_revision == 1

    # A policy that forbids root now stops it too.
    data["specs"] = {"allow_root": False}
    write_config(daemon, data)
    reply = call_daemon(certs, daemon, "reload_config", daemon_pb.ReloadConfigRequest())
    if os.geteuid() == 0:
        assert [(c.agent_id, c.action) for c in reply.changes] == [("w", "removed")]
    # And [specs] enabled = false turns central specs off altogether.
    data["specs"] = {"allow_root": True, "enabled": False}
    write_config(daemon, data)
    call_daemon(certs, daemon, "reload_config", daemon_pb.ReloadConfigRequest())
    state = states(apply(certs, daemon, by_label))["web"]
    assert state.status == "REFUSED" and "[specs] enabled = false" in state.reason
    assert list(list_agents(certs, daemon)) == ["local"]


def test_restart_without_a_manager_keeps_central_agents(tmp_path: Path, certs: Path) -> None:
    pids = tmp_path / "w.pids"
    with lone_daemon(
        tmp_path,
        certs,
        agents=[sleeper("local")],
        config={**ALLOW_ROOT, "stop_agents_on_exit": False},
    ) as first:
        reply = apply(certs, first, signed(certs, "web", 1, [sleeper("w", str(pids))]))
        assert states(reply)["web"].status == "APPLIED"
        before = all_running(certs, first)
    # Gracefully stopped, leaving agents running (no Manager anywhere, as before).
    assert _alive(before["w"].pid) and _alive(before["local"].pid)

    daemon = first.restart()
    try:
        after = list_agents(certs, daemon)
        w = after["w"]
        assert (w.status, w.pid, w.spec, w.spec_revision) == ("RUNNING", before["w"].pid, "web", 1)
        assert "re-adopted" in w.status_reason
        assert after["local"].pid == before["local"].pid
        assert pids.read_text().split() == [str(w.pid)]  # no second copy started

        # Now with stop_agents_on_exit = true: agents stop with the Daemon and the next
        # one starts them again from specs.json.
        data = read_config(daemon)
        data["stop_agents_on_exit"] = True
        write_config(daemon, data)
        assert "reloaded " in daemon.reload_by_signal()
    finally:
        daemon.stop()
    assert not _alive(w.pid)

    daemon = daemon.restart()
    try:
        again = all_running(certs, daemon, what="central agents started from specs.json")
        assert (again["w"].spec, again["w"].spec_revision) == ("web", 1)
        assert again["w"].pid != w.pid and "re-adopted" not in again["w"].status_reason
        assert pids.read_text().split() == [str(w.pid), str(again["w"].pid)]
        # The replay protection survived the restarts too.
        old = states(apply(certs, daemon, signed(certs, "web", 1, [sleeper("w", "x")])))["web"]
        assert old.status == "REFUSED" and "other content" in old.reason
    finally:
        daemon.stop()
