"""Desired state end to end: fleetctl, a real Manager and real Daemons with real agents.

One Manager (SQLite) and three Daemons, each test with specs of its own name so no test
depends on another's leftovers:

node-a (role=web), node-b (role=web): no local agents but `local` (sleeper)
node-c (role=db): host policy allows only /usr/bin/* executables for central specs

The apply/rollout tests go through the real ``fleetctl`` commands (signing with the admin
key) and read the result from the Daemons themselves (their ListAgents), not only from the
Manager's view.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import tomli_w
from harness import free_port, wait_until
from harness.daemon import (
    DaemonProc,
    agent,
    cleanup_socket_dir,
    list_agents,
    start_daemon,
)
from harness.manager import ManagerProc, start_manager
from typer.testing import CliRunner

from fleetctl.app import app

runner = CliRunner()
WEB = {"role": "web"}


@dataclass
class Fleet:
    tmp: Path
    certs: Path
    manager: ManagerProc
    daemons: dict[str, DaemonProc]
    env: dict[str, str]


def cli(fleet: Fleet, *argv: str) -> Any:
    return runner.invoke(app, list(argv), env=fleet.env)


def ok(fleet: Fleet, *argv: str) -> str:
    result = cli(fleet, *argv)
    assert result.exit_code == 0, result.output
    return str(result.stdout)


def ok_json(fleet: Fleet, *argv: str) -> Any:
    return json.loads(ok(fleet, *argv, "-o", "json"))


def spec_file(fleet: Fleet, name: str, agents: list[dict[str, Any]], **target: Any) -> Path:
    path = fleet.tmp / f"{name}.toml"
    path.write_text(tomli_w.dumps({"name": name, "target": target, "agents": agents}))
    return path


def sleeper(fleet: Fleet, agent_id: str, tag: str, **settings: Any) -> dict[str, Any]:
    """A sleeper agent; ``tag`` changes its command line (the file it appends its pid to)."""
    settings.setdefault("start_seconds", 1.0)
    return agent(agent_id, "sleeper", str(fleet.tmp / f"{agent_id}-{tag}.pids"), **settings)


def agents_of(fleet: Fleet, node: str) -> dict[str, Any]:
    return list_agents(fleet.certs, fleet.daemons[node])


def running(fleet: Fleet, node: str, agent_id: str, spec: str, revision: int) -> Any:
    """The agent's AgentInfo once it runs from ``spec@revision`` on ``node`` (else None)."""
    info = agents_of(fleet, node).get(agent_id)
    if info and info.status == "RUNNING" and (info.spec, info.spec_revision) == (spec, revision):
        return info
    return None


def wait_running(fleet: Fleet, agent_id: str, spec: str, revision: int, *nodes: str) -> Any:
    """Wait until ``agent_id`` runs from ``spec@revision`` on every node; their AgentInfos."""
    return {
        node: wait_until(
            partial(running, fleet, node, agent_id, spec, revision),
            timeout=60,
            what=f"{agent_id} running from {spec}@{revision} on {node}",
        )
        for node in nodes
    }


def gone(fleet: Fleet, node: str, agent_id: str) -> bool:
    return agent_id not in agents_of(fleet, node)


def spec_status(fleet: Fleet, name: str) -> dict[str, dict[str, Any]]:
    data = ok_json(fleet, "specs", "status", name)
    rows = data["nodes"] if isinstance(data, dict) else data
    return {row["node_id"]: row for row in rows}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("specs-e2e")
    # A fixed port, so that the Manager can be restarted where the Daemons look for it.
    # No periodic drift sweep during the module: every convergence below must come from
    # its own trigger (apply, registration, a node back online), not from a sweep.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEET_MANAGER_SPECS_SWEEP_INTERVAL", "1h")
        manager = start_manager(tmp, certs, grpc_port=free_port())
    daemons: dict[str, DaemonProc] = {}
    layout: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
        "node-a": (WEB, {}),
        "node-b": (WEB, {}),
        "node-c": ({"role": "db"}, {"specs": {"allow_commands": ["/usr/bin/*"]}}),
    }
    try:
        for node_id, (labels, extra) in layout.items():
            daemons[node_id] = start_daemon(
                tmp,
                certs,
                node_id=node_id,
                manager_port=manager.grpc_port,
                agents=[agent("local", "sleeper")],
                config={"labels": labels, "specs": {"allow_root": True, **extra.get("specs", {})}},
            )
        env = {
            "FLEET_MANAGER": manager.address,
            "FLEET_CA": str(certs / "ca.crt"),
            "FLEET_CERT": str(certs / "admin.crt"),
            "FLEET_KEY": str(certs / "admin.key"),
            "FLEET_CONFIG": "",
            "FLEET_TIMEOUT": "30s",
            "NO_COLOR": "1",
        }
        f = Fleet(tmp, certs, manager, daemons, env)
        wait_until(
            lambda: [n["status"] for n in ok_json(f, "nodes", "list")] == ["online"] * 3,
            timeout=60,
            what="three nodes online",
        )
        yield f
    finally:
        for d in daemons.values():
            d.stop()
            cleanup_socket_dir(d)
        manager.stop()


def test_dry_run_then_apply_to_a_label_selector(fleet: Fleet) -> None:
    path = spec_file(fleet, "sel", [sleeper(fleet, "sel-app", "v1")], labels=WEB)
    dry = cli(fleet, "apply", "-f", str(path), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "node-a" in dry.stdout and "node-b" in dry.stdout and "node-c" not in dry.stdout
    assert "sel-app" in dry.stdout
    time.sleep(0.5)  # a dry run must not have started anything (checked right below)
    assert all("sel-app" not in agents_of(fleet, n) for n in fleet.daemons)

    result = cli(fleet, "apply", "-f", str(path))
    assert result.exit_code == 0, result.output
    wait_running(fleet, "sel-app", "sel", 1, "node-a", "node-b")
    assert "sel-app" not in agents_of(fleet, "node-c")
    # The untouched local agent kept its process.
    assert agents_of(fleet, "node-a")["local"].status == "RUNNING"
    # Applying the same file again changes nothing.
    pids = {n: agents_of(fleet, n)["sel-app"].pid for n in ("node-a", "node-b")}
    again = cli(fleet, "apply", "-f", str(path))
    assert again.exit_code == 0, again.output
    assert "unchanged" in again.stdout
    assert {n: agents_of(fleet, n)["sel-app"].pid for n in ("node-a", "node-b")} == pids
    # The agents list shows where each agent comes from.
    listed = {(a["node_id"], a["id"]): a for a in ok_json(fleet, "agents", "list")}
    wait_until(
        lambda: (
            {
                (a["node_id"], a["spec"], a["spec_revision"])
                for a in ok_json(fleet, "agents", "list")
                if a["id"] == "sel-app"
            }
            == {("node-a", "sel", 1), ("node-b", "sel", 1)}
        ),
        timeout=30,
        what="the Manager's view shows sel@1",
    )
    assert listed[("node-a", "local")]["spec"] == ""


def test_changed_command_rolls_out_wave_by_wave(fleet: Fleet) -> None:
    path = spec_file(
        fleet, "waves", [sleeper(fleet, "waves-app", "v1", start_seconds=2.0)], labels=WEB
    )
    assert cli(fleet, "apply", "-f", str(path)).exit_code == 0
    wait_running(fleet, "waves-app", "waves", 1, "node-a", "node-b")
    old = {n: agents_of(fleet, n)["waves-app"].pid for n in ("node-a", "node-b")}

    path = spec_file(
        fleet, "waves", [sleeper(fleet, "waves-app", "v2", start_seconds=2.0)], labels=WEB
    )
    dry = cli(fleet, "apply", "-f", str(path), "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "command" in dry.stdout and "v1" in dry.stdout and "v2" in dry.stdout
    result = cli(fleet, "apply", "-f", str(path), "--max-unavailable", "1")
    assert result.exit_code == 0, result.output
    new = {n: running(fleet, n, "waves-app", "waves", 2) for n in ("node-a", "node-b")}
    assert all(new.values()), new
    assert all(new[n].pid != old[n] for n in new)
    # One node at a time: the second wave started only once the first node's agent had
    # been up its start_seconds (2 s), so the two new processes started >= ~2 s apart.
    starts = sorted(info.start_time for info in new.values())
    assert starts[1] - starts[0] >= 1, starts
    rollout = ok_json(fleet, "rollout", "status", "waves")
    assert rollout["state"] == "succeeded" and rollout["done"] == 2, rollout


def test_failing_command_stops_the_rollout_and_rolls_back(fleet: Fleet) -> None:
    path = spec_file(fleet, "rb", [sleeper(fleet, "rb-app", "good")], labels=WEB)
    assert cli(fleet, "apply", "-f", str(path)).exit_code == 0
    wait_running(fleet, "rb-app", "rb", 1, "node-a", "node-b")
    good = {n: agents_of(fleet, n)["rb-app"].pid for n in ("node-a", "node-b")}

    bad = agent("rb-app", "crasher", "3", "0", start_seconds=1.0, start_retries=0)
    path = spec_file(fleet, "rb", [bad], labels=WEB)
    result = cli(
        fleet, "apply", "-f", str(path), "--max-unavailable", "1", "--auto-rollback",
        "--healthy-deadline", "60s",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "rolled" in result.output.lower()
    rollout = ok_json(fleet, "rollout", "status", "rb")
    assert rollout["state"] == "rolled_back", rollout
    assert rollout["failed"] >= 1 and rollout["failed_nodes"], rollout
    # Every node runs the good command again, from the rollback revision (3).
    assert all(i.pid for i in wait_running(fleet, "rb-app", "rb", 3, "node-a", "node-b").values())
    # The node the first wave did not reach never restarted its agent.
    untouched = [n for n in good if agents_of(fleet, n)["rb-app"].pid == good[n]]
    assert len(untouched) == 1, (good, {n: agents_of(fleet, n)["rb-app"] for n in good})
    history = ok(fleet, "specs", "history", "rb")
    assert "rollback" in history


def test_host_policy_refusal_is_visible(fleet: Fleet) -> None:
    path = spec_file(fleet, "pol", [sleeper(fleet, "pol-app", "v1")], nodes=["node-c"])
    result = cli(fleet, "apply", "-f", str(path), "--healthy-deadline", "30s")
    assert result.exit_code == 1, result.output
    row = wait_until(
        lambda: (r := spec_status(fleet, "pol").get("node-c")) and "REFUSED" in r["reason"] and r,
        timeout=60,
        what="node-c refuses the spec",
    )
    assert row["state"] in ("refused", "failed") and "allow_commands" in row["reason"], row
    assert "pol-app" not in agents_of(fleet, "node-c")


def test_spec_from_a_non_admin_signer_is_refused_by_the_manager(fleet: Fleet) -> None:
    path = spec_file(fleet, "forged", [sleeper(fleet, "forged-app", "v1")], labels=WEB)
    env = {**fleet.env, "FLEET_CERT": str(fleet.certs / "node-a.crt")}
    env["FLEET_KEY"] = str(fleet.certs / "node-a.key")
    result = runner.invoke(app, ["apply", "-f", str(path)], env=env)
    assert result.exit_code != 0
    assert "Traceback" not in result.output


def test_daemon_reload_through_the_manager(fleet: Fleet) -> None:
    daemon = fleet.daemons["node-b"]
    before = agents_of(fleet, "node-b")
    config = daemon.config_path.read_text()
    extra = agent("reloaded", "sleeper")
    daemon.config_path.write_text(config + "\n" + tomli_w.dumps({"agents": [extra]}))
    try:
        out = ok(fleet, "daemon", "reload", "node-b")
        assert "reloaded" in out and "added" in out.lower()
        wait_until(
            lambda: (a := agents_of(fleet, "node-b").get("reloaded")) and a.status == "RUNNING",
            timeout=30,
        )
        after = agents_of(fleet, "node-b")
        for agent_id, info in before.items():
            if info.status == "RUNNING":
                assert after[agent_id].pid == info.pid, agent_id
    finally:
        daemon.config_path.write_text(config)
        ok(fleet, "daemon", "reload", "node-b")
    assert "reloaded" not in agents_of(fleet, "node-b")


def test_new_matching_node_converges_on_registration(
    fleet: Fleet, certgen: ModuleType, tmp_path: Path
) -> None:
    path = spec_file(fleet, "join", [sleeper(fleet, "join-app", "v1")], labels={"tier": "late"})
    assert cli(fleet, "apply", "-f", str(path), "--detach").exit_code == 0
    certgen.issue(fleet.certs, "node", "node-d", sans=["127.0.0.1"])
    late = start_daemon(
        tmp_path,
        fleet.certs,
        node_id="node-d",
        manager_port=fleet.manager.grpc_port,
        config={"labels": {"tier": "late"}, "specs": {"allow_root": True}},
    )
    fleet.daemons["node-d"] = late
    wait_until(lambda: running(fleet, "node-d", "join-app", "join", 1), timeout=60)


def test_offline_node_converges_when_it_returns(fleet: Fleet) -> None:
    path = spec_file(fleet, "away", [sleeper(fleet, "away-app", "v1")], labels=WEB)
    daemon = fleet.daemons["node-b"]
    daemon.stop()
    try:
        assert cli(fleet, "apply", "-f", str(path), "--detach").exit_code == 0
        wait_until(lambda: running(fleet, "node-a", "away-app", "away", 1), timeout=60)
    finally:
        fleet.daemons["node-b"] = daemon.restart()
    wait_until(lambda: running(fleet, "node-b", "away-app", "away", 1), timeout=60)


def test_node_back_from_a_partition_converges_at_once(fleet: Fleet) -> None:
    """A Daemon that was unreachable (frozen past its grace) heartbeats again without
    registering anew: coming back online is what makes the Manager push it the spec."""
    path = spec_file(fleet, "split", [sleeper(fleet, "split-app", "v1")], labels=WEB)
    daemon = fleet.daemons["node-b"]
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: node_status(fleet, "node-b") == "offline",
            timeout=60,
            what="node-b offline while frozen",
        )
        assert cli(fleet, "apply", "-f", str(path), "--detach").exit_code == 0
        wait_running(fleet, "split-app", "split", 1, "node-a")
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    wait_running(fleet, "split-app", "split", 1, "node-b")


def node_status(fleet: Fleet, node_id: str) -> str:
    nodes = {n["node_id"]: n for n in ok_json(fleet, "nodes", "list")}
    return str(nodes[node_id]["status"])


def test_central_agents_survive_a_daemon_restart_with_the_manager_down(fleet: Fleet) -> None:
    path = spec_file(fleet, "keep", [sleeper(fleet, "keep-app", "v1")], nodes=["node-a"])
    assert cli(fleet, "apply", "-f", str(path)).exit_code == 0
    wait_until(lambda: running(fleet, "node-a", "keep-app", "keep", 1), timeout=60)
    port = fleet.manager.grpc_port
    fleet.manager.stop()
    try:
        fleet.daemons["node-a"].stop()
        fleet.daemons["node-a"] = fleet.daemons["node-a"].restart()
        info = wait_until(lambda: running(fleet, "node-a", "keep-app", "keep", 1), timeout=60)
        assert info.pid
    finally:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("FLEET_MANAGER_SPECS_SWEEP_INTERVAL", "1h")
            fleet.manager = start_manager(
                fleet.tmp, fleet.certs, grpc_port=port, log_name="manager-2.log"
            )
    wait_until(
        lambda: [n["status"] for n in ok_json(fleet, "nodes", "list")].count("online") >= 3,
        timeout=60,
        what="the Daemons back with the restarted Manager",
    )
    assert running(fleet, "node-a", "keep-app", "keep", 1)


def test_delete_removes_the_agents_everywhere(fleet: Fleet) -> None:
    path = spec_file(fleet, "gone", [sleeper(fleet, "gone-app", "v1")], labels=WEB)
    assert cli(fleet, "apply", "-f", str(path)).exit_code == 0
    wait_running(fleet, "gone-app", "gone", 1, "node-a", "node-b")
    ok(fleet, "specs", "delete", "gone", "--yes")
    for node in ("node-a", "node-b"):
        wait_until(partial(gone, fleet, node, "gone-app"), timeout=60, what=f"gone-app off {node}")
