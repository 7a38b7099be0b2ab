"""Security battery, items 4 and 6: the local agent socket, and commands cannot escalate.

Item 4 is mostly proved by the Daemon's own tests, referenced in docs/security.md:
``test_daemon_agent_api.py::test_socket_is_private_even_under_umask_000`` (0600 socket in a
0700 directory under ``umask 000``), ``::test_agent_secrets_and_transport_separation``
(wrong or missing secret, another agent's secret, stale secret after a restart) and
``::test_stolen_token_is_useless_outside_the_agents_process_group``. What is added here
is the attack from *inside* a real agent: agent A, holding its own valid secret and
calling from its own process group, tries every agent RPC as agent B and the
manager-facing RPCs on the socket — all refused, while its own calls work.

Item 6: nothing the Manager (or an admin) can send makes the Daemon run a command that is
not in its local configuration. PushUpdate carries data for the agent, never its argv,
environment, working directory or user.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import free_port, wait_until
from harness.daemon import DaemonProc, agent, call_daemon, list_agents, start_daemon

from schema import daemon_pb

EVIL_AGENT = textwrap.dedent(
    """
    import asyncio, json, os, signal, sys
    from grpclib.client import Channel
    from grpclib.exceptions import GRPCError
    from schema import daemon_pb

    out, victim = sys.argv[1], sys.argv[2]
    me, token = os.environ["FLEET_AGENT_ID"], os.environ["FLEET_AGENT_TOKEN"]

    async def main():
        channel = Channel(path=os.environ["FLEET_AGENT_SOCKET"])
        stub = daemon_pb.DaemonServiceStub(channel, timeout=10)
        results = {}

        async def attempt(name, coro):
            try:
                await coro
                results[name] = "OK"
            except GRPCError as exc:
                results[name] = exc.status.name

        d = daemon_pb
        for who in (me, victim):
            await attempt(f"register:{who}", stub.register(d.RegisterRequest(
                agent_id=who, token=token, pid=os.getpid(), version="x")))
            await attempt(f"heartbeat:{who}", stub.heartbeat(d.HeartbeatRequest(
                agent_id=who, token=token, health="fine")))
            await attempt(f"report_metrics:{who}", stub.report_metrics(d.MetricsRequest(
                agent_id=who, token=token, metrics=[d.AgentMetric(name="m", value=1.0)])))
            await attempt(f"get_config:{who}", stub.get_config(d.ConfigRequest(
                agent_id=who, token=token)))
        # The manager-facing half, from inside an agent: stop the victim, push it a config.
        await attempt("operate_agent", stub.operate_agent(d.AgentOperationRequest(
            agent_id=victim, operation="stop")))
        await attempt("push_update", stub.push_update(d.UpdateRequest(
            agent_id=victim, config_json="{}", restart=True)))
        await attempt("list_agents", stub.list_agents(d.ListAgentsRequest()))
        channel.close()
        with open(out + ".tmp", "w") as f:
            json.dump(results, f)
        os.replace(out + ".tmp", out)

    asyncio.run(main())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.pause()
    """
)


def test_agent_cannot_act_as_another_agent_from_inside(tmp_path: Path, certs: Path) -> None:
    script = tmp_path / "evil_agent.py"
    script.write_text(EVIL_AGENT)
    results_file = tmp_path / "evil.json"
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[
            {
                "id": "evil",
                "command": [sys.executable, str(script), str(results_file), "victim"],
                "start_seconds": 0.2,
            },
            agent("victim", "sleeper", start_seconds=0.2, config={"secret": "victim-only"}),
        ],
    )
    try:
        victim_before = wait_until(
            lambda: (v := list_agents(certs, daemon)["victim"]).status == "RUNNING" and v,
            what="victim running",
        )
        results = json.loads(
            wait_until(
                lambda: results_file.exists() and results_file.read_text(),
                timeout=30,
                what="the evil agent's report",
            )
        )
        for rpc in ("register", "heartbeat", "report_metrics", "get_config"):
            assert results[f"{rpc}:evil"] == "OK", results  # its own secret works for itself
            assert results[f"{rpc}:victim"] == "PERMISSION_DENIED", (rpc, results)
        for rpc in ("operate_agent", "push_update", "list_agents"):
            assert results[rpc] == "PERMISSION_DENIED", (rpc, results)
        victim = list_agents(certs, daemon)["victim"]
        assert victim.status == "RUNNING" and victim.pid == victim_before.pid
        assert victim.restart_count == victim_before.restart_count
        assert victim.config_hash == victim_before.config_hash
        assert victim.last_heartbeat == victim_before.last_heartbeat  # nobody beat for it
    finally:
        daemon.stop()


# ---- item 6: commands cannot escalate ------------------------------------------------


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _cmdlines(pid: int) -> list[list[str]]:
    out = []
    for p in _descendants(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            out.append(p.cmdline())
    return out


def test_push_update_never_changes_what_runs(tmp_path: Path, certs: Path) -> None:
    pwned = tmp_path / "pwned"
    sleeper = [sys.executable, str(Path(__file__).parent / "agents" / "sleeper.py")]
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[agent("a", "sleeper", start_seconds=0.2, config={"level": 1})],
    )
    try:
        first = wait_until(lambda: list_agents(certs, daemon)["a"].pid, what="agent running")
        hostile = {
            "command": ["/bin/sh", "-c", f"touch {pwned}"],
            "argv": ["/bin/sh", "-c", f"touch {pwned}"],
            "env": {"LD_PRELOAD": "/tmp/evil.so", "PATH": "/tmp/evil"},
            "cwd": "/",
            "user": "root",
            "exec": f"touch {pwned}",
            "__class__": {"__init__": {"__globals__": "os.system"}},
        }
        for cert in ("manager", "admin"):
            reply = call_daemon(
                certs,
                daemon,
                "push_update",
                daemon_pb.UpdateRequest(
                    agent_id="a",
                    config_json=json.dumps(hostile),
                    version=f"$(touch {pwned})",
                    restart=True,
                ),
                cert_name=cert,
            )
            assert reply.status == "APPLIED", reply.error_message  # stored as data...
        info = wait_until(
            lambda: (i := list_agents(certs, daemon)["a"]).status == "RUNNING" and i.pid and i,
            what="agent restarted",
        )
        assert info.pid != first
        # ...but what runs is exactly the local configuration.
        proc = psutil.Process(info.pid)
        assert proc.cmdline() == sleeper
        env = proc.environ()
        assert "LD_PRELOAD" not in env and env.get("PATH") == os.environ.get("PATH")
        assert proc.cwd() == psutil.Process(daemon.pid).cwd()  # not the pushed "/"
        for cmd in _cmdlines(daemon.pid):
            assert cmd == sleeper, cmd
        assert not pwned.exists()
        # The hostile table is handed to the agent as its config, nothing more.
        cfg = call_daemon(
            certs, daemon, "get_agent_config", daemon_pb.AgentConfigRequest(agent_id="a")
        )
        assert json.loads(cfg.config_json)["command"][0] == "/bin/sh"
    finally:
        daemon.stop()
    assert not pwned.exists()


HOSTILE_IDS = ["/bin/sh", "../a", "a/../../bin/sh", "a;touch x", "a\x00", "", "ghost", "x" * 200]


def test_operations_on_unconfigured_agents_spawn_nothing(tmp_path: Path, certs: Path) -> None:
    """Any id that is not a configured agent is refused before anything is spawned."""
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[agent("a", "sleeper", start_seconds=0.2)],
    )
    try:
        wait_until(lambda: list_agents(certs, daemon)["a"].status == "RUNNING")
        before = sorted(p.pid for p in _descendants(daemon.pid))
        for agent_id in HOSTILE_IDS:
            _refuse_all(certs, daemon, agent_id)
        # And an operation name is a verb from a closed list, not a command.
        with pytest.raises(GRPCError) as err:
            call_daemon(
                certs,
                daemon,
                "operate_agent",
                daemon_pb.AgentOperationRequest(agent_id="a", operation="exec /bin/sh"),
            )
        assert err.value.status is Status.INVALID_ARGUMENT
        assert sorted(p.pid for p in _descendants(daemon.pid)) == before
        assert set(list_agents(certs, daemon)) == {"a"}
    finally:
        daemon.stop()


def _refuse_all(certs: Path, daemon: DaemonProc, agent_id: str) -> None:
    for method, request in (
        ("operate_agent", daemon_pb.AgentOperationRequest(agent_id=agent_id, operation="start")),
        ("push_update", daemon_pb.UpdateRequest(agent_id=agent_id, config_json="{}", restart=True)),
        ("get_agent_config", daemon_pb.AgentConfigRequest(agent_id=agent_id)),
    ):
        with pytest.raises(GRPCError) as err:
            call_daemon(certs, daemon, method, request)
        assert err.value.status in (Status.INVALID_ARGUMENT, Status.NOT_FOUND), (method, agent_id)
