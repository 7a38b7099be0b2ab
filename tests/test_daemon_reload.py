"""Live reload of daemon.toml (SIGHUP and DaemonService.ReloadConfig) on a real Daemon:
added, changed and removed agents while untouched ones keep their processes, config-only
changes without a restart, refusals that change nothing (syntax error, bad value, a
setting only a restart applies), dry runs, labels sent to the Manager, and a Daemon that
always survives SIGHUP."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import REPO, console_script, free_port, wait_until
from harness.daemon import (
    DaemonProc,
    agent,
    all_running,
    call_daemon,
    list_agents,
    lone_daemon,
    read_config,
    start_daemon,
    start_daemon_without_config,
    write_config,
)
from harness.manager import admin_channel, start_manager

from schema import admin_pb, daemon_pb


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _children(daemon: DaemonProc) -> set[int]:
    return {p.pid for p in psutil.Process(daemon.pid).children()}


def _reload(certs: Path, daemon: DaemonProc, *, dry_run: bool = False, cert: str = "admin") -> Any:
    return call_daemon(
        certs,
        daemon,
        "reload_config",
        daemon_pb.ReloadConfigRequest(dry_run=dry_run),
        cert_name=cert,
    )


def _snapshot(certs: Path, daemon: DaemonProc) -> list[tuple[str, str, int, str]]:
    return [(a.id, a.status, a.pid, a.config_hash) for a in list_agents(certs, daemon).values()]


def test_hup_adds_changes_and_removes_while_untouched_agents_keep_running(
    tmp_path: Path, certs: Path
) -> None:
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent("keep", "sleeper", start_seconds=0.2),
            agent("change", "sleeper", start_seconds=0.2),
            agent("gone", "sleeper", start_seconds=0.2, stop_signal="INT"),
            agent("cfg", "sleeper", start_seconds=0.2, config={"level": 1}, version="1"),
        ],
    ) as daemon:
        before = all_running(certs, daemon)
        # A config pushed earlier is replaced by the file's new config on reload.
        pushed = call_daemon(
            certs,
            daemon,
            "push_update",
            daemon_pb.UpdateRequest(agent_id="cfg", config_json='{"pushed": true}'),
        )
        assert pushed.success

        data = read_config(daemon)
        agents = {a["id"]: a for a in data["agents"]}
        new_log = tmp_path / "change.pids"
        agents["change"]["command"] = [*agents["change"]["command"], str(new_log)]
        agents["cfg"]["config"] = {"level": 2}
        agents["cfg"]["version"] = "2"
        data["agents"] = [
            agents["keep"],
            agent("new", "sleeper", start_seconds=0.2),
            agents["change"],
            agents["cfg"],
        ]
        write_config(daemon, data)
        log = daemon.reload_by_signal()

        assert "reloaded " in log, log
        assert "added new" in log and "cfg (version, config)" in log, log
        assert "change (command)" in log and "removed gone" in log, log
        assert daemon.alive()
        after = wait_until(
            lambda: (x := list_agents(certs, daemon)) and x["change"].status == "RUNNING" and x,
            what="changed agent running again",
        )
        assert list(after) == ["keep", "new", "change", "cfg"]  # the file's order
        assert after["keep"].pid == before["keep"].pid  # untouched: same process
        assert after["cfg"].pid == before["cfg"].pid  # config + version: no restart
        assert after["cfg"].version == "2"
        assert after["change"].pid != before["change"].pid
        assert new_log.read_text().split() == [str(after["change"].pid)]
        assert not _alive(before["change"].pid) and not _alive(before["gone"].pid)
        assert after["new"].status == "RUNNING" and after["new"].pid
        assert all(a.spec == "" and a.spec_revision == 0 for a in after.values())
        # The file's config replaced the pushed one; the agent sees it through GetConfig.
        config = call_daemon(
            certs, daemon, "get_agent_config", daemon_pb.AgentConfigRequest(agent_id="cfg")
        )
        assert json.loads(config.config_json) == {"level": 2}
        assert after["cfg"].config_hash == config.config_hash != before["cfg"].config_hash
        # Removed: forgotten (no record, no API presence), its logs kept.
        state = json.loads((daemon.state_dir / "agents.json").read_text())
        assert set(state["agents"]) == {"keep", "new", "change", "cfg"}
        assert (daemon.state_dir / "logs" / "gone.stdout.log").exists()
        with pytest.raises(GRPCError) as exc:
            call_daemon(
                certs,
                daemon,
                "operate_agent",
                daemon_pb.AgentOperationRequest(agent_id="gone", operation="start"),
            )
        assert exc.value.status is Status.NOT_FOUND
        # Every agent is still the Daemon's own child: nothing was orphaned.
        assert {a.pid for a in after.values()} <= _children(daemon)


def test_config_only_change_reaches_the_running_agent_without_a_restart(
    tmp_path: Path, certs: Path
) -> None:
    out = tmp_path / "sdk.json"
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent(
                "sdk",
                "sdk_agent",
                str(out),
                start_seconds=0.3,
                heartbeat_interval=0.3,
                config={"greeting": "hello"},
            )
        ],
    ) as daemon:
        first = wait_until(
            lambda: out.exists() and json.loads(out.read_text()), what="agent got its config"
        )
        assert first["config"] == {"greeting": "hello"}
        data = read_config(daemon)
        data["agents"][0]["config"] = {"greeting": "bonjour"}
        write_config(daemon, data)
        log = daemon.reload_by_signal()
        assert "changed sdk (config)" in log, log
        seen = wait_until(
            lambda: (d := json.loads(out.read_text()))["config"] == {"greeting": "bonjour"} and d,
            what="the running agent follows the new config on its heartbeat",
        )
        assert seen["pid"] == first["pid"]
        info = list_agents(certs, daemon)["sdk"]
        assert info.pid == first["pid"] and info.restart_count == 0


def _agent_line(text: str, agent_id: str, key: str) -> int:
    """The line number of ``key =`` inside the [[agents]] block with ``id = agent_id``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f'id = "{agent_id}"')
    block_start = max(i for i in range(start) if lines[i].strip() == "[[agents]]")
    for i in range(block_start + 1, len(lines)):
        if lines[i].split("=")[0].strip() == key:
            return i + 1
    raise AssertionError(f"{key} not in block of {agent_id}")


def test_invalid_files_are_refused_with_file_line_and_key_and_change_nothing(
    tmp_path: Path, certs: Path
) -> None:
    with lone_daemon(
        tmp_path,
        certs,
        agents=[agent("web", "sleeper", start_seconds=0.2), agent("db", "sleeper")],
    ) as daemon:
        all_running(certs, daemon)
        before = _snapshot(certs, daemon)
        good = read_config(daemon)
        path = daemon.config_path

        # A bad value: refused naming file, line, agent and key.
        bad = read_config(daemon)
        bad["agents"][0]["autorestart"] = "maybe"
        bad["agents"].append(agent("extra", "sleeper"))  # would be added: must not be
        text = write_config(daemon, bad)
        line = _agent_line(text, "web", "autorestart")
        expected = (
            f"{path} line {line}: agent 'web': key 'autorestart' must be one of "
            "always, on-failure, never"
        )
        log = daemon.reload_by_signal()
        assert "reload refused, nothing changed" in log and expected in log, log
        reply = _reload(certs, daemon)
        assert not reply.success and reply.error_message == expected
        assert reply.config_file == str(path) and not reply.changes

        # A syntax error: refused naming file, line and key.
        broken = text.replace('autorestart = "maybe"', "autorestart = maybe")
        path.write_text(broken)
        line = _agent_line(broken, "web", "autorestart")
        log = daemon.reload_by_signal()
        assert f"{path} line {line}: key 'autorestart': Invalid value" in log, log
        reply = _reload(certs, daemon)
        assert not reply.success
        assert reply.error_message.startswith(f"{path} line {line}: key 'autorestart'")

        assert daemon.alive()
        assert _snapshot(certs, daemon) == before  # same agents, same pids, same configs

        # Fixed again: the reload goes through (and has nothing to do).
        write_config(daemon, good)
        reply = _reload(certs, daemon)
        assert reply.success and not reply.changes and sorted(reply.unchanged) == ["db", "web"]
        assert _snapshot(certs, daemon) == before


def test_settings_that_need_a_restart_refuse_the_whole_reload(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(tmp_path, certs, agents=[agent("web", "sleeper")]) as daemon:
        all_running(certs, daemon)
        before = _snapshot(certs, daemon)
        data = read_config(daemon)
        data["grpc"]["listen"] = f"127.0.0.1:{free_port()}"
        data["state_dir"] = str(tmp_path / "elsewhere")
        data["agents"].append(agent("extra", "sleeper"))  # valid, but not applied either
        write_config(daemon, data)
        log = daemon.reload_by_signal()
        assert "needs a Daemon restart: state_dir, grpc.listen" in log, log
        reply = _reload(certs, daemon, cert="manager")
        assert not reply.success
        assert reply.error_message == (
            f"{daemon.config_path}: needs a Daemon restart: state_dir, grpc.listen "
            "(nothing applied)"
        )
        assert _snapshot(certs, daemon) == before
        assert daemon.alive()


def test_reload_config_rpc_reports_changes_and_dry_run_changes_nothing(
    tmp_path: Path, certs: Path
) -> None:
    with lone_daemon(
        tmp_path,
        certs,
        agents=[agent("a", "sleeper", start_seconds=0.2), agent("b", "sleeper", start_seconds=0.2)],
    ) as daemon:
        all_running(certs, daemon)
        before = _snapshot(certs, daemon)
        data = read_config(daemon)
        data["agents"][1]["stop_timeout"] = "3s"
        data["agents"].append(agent("c", "sleeper", start_seconds=0.2))
        write_config(daemon, data)

        dry = _reload(certs, daemon, dry_run=True)
        assert dry.success and dry.config_file == str(daemon.config_path)
        changes = {(c.agent_id, c.action): c for c in dry.changes}
        assert set(changes) == {("b", "changed"), ("c", "added")}
        field = changes["b", "changed"].fields[0]
        assert (field.field, field.old, field.new) == ("stop_timeout", "10.0", "3.0")
        assert changes["c", "added"].source == "local" and list(dry.unchanged) == ["a"]
        assert _snapshot(certs, daemon) == before  # a dry run touches nothing

        # Only the Manager and admins may reload.
        with pytest.raises(GRPCError) as exc:
            _reload(certs, daemon, cert="node-a")
        assert exc.value.status is Status.PERMISSION_DENIED

        real = _reload(certs, daemon)
        assert real.success
        assert {(c.agent_id, c.action) for c in real.changes} == set(changes)
        assert all(not c.error for c in real.changes)
        after = list_agents(certs, daemon)
        assert after["a"].pid == before[0][2] and after["c"].status == "RUNNING"
        assert after["b"].pid != before[1][2] and after["b"].status == "RUNNING"

        # A new command that cannot start: applied, and the reply says why it failed.
        data["agents"][2]["command"] = ["/nonexistent/bin/agent"]
        data["agents"][2]["start_retries"] = 0
        write_config(daemon, data)
        failed = _reload(certs, daemon)
        assert failed.success
        (change,) = failed.changes
        assert change.agent_id == "c" and change.action == "changed"
        assert "no such executable: /nonexistent/bin/agent" in change.error


def test_labels_reload_reaches_the_manager(tmp_path: Path, certs: Path) -> None:
    mgr = start_manager(tmp_path, certs)
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=mgr.grpc_port,
        config={"labels": {"env": "dev"}},
        heartbeat_interval=30.0,  # the new labels must not wait for a heartbeat
    )

    def labels() -> dict[str, str]:
        async def go() -> dict[str, str]:
            channel = admin_channel(certs, mgr.grpc_port)
            try:
                reply = await admin_pb.AdminServiceStub(channel).list_nodes(
                    admin_pb.ListNodesRequest(), timeout=5
                )
            finally:
                channel.close()
            return next((dict(n.labels) for n in reply.nodes if n.node_id == "node-a"), {})

        return asyncio.run(go())

    try:
        wait_until(lambda: labels() == {"env": "dev"}, timeout=30, what="node registered")
        data = read_config(daemon)
        data["labels"] = {"env": "prod", "role": "web"}
        data["log"] = {"level": "debug"}
        write_config(daemon, data)
        log = daemon.reload_by_signal()
        assert "reloaded " in log and "log level is now debug" in log, log
        wait_until(
            lambda: labels() == {"env": "prod", "role": "web"},
            timeout=30,
            what="new labels at the Manager",
        )
    finally:
        daemon.stop()
        mgr.stop()


def test_daemon_without_a_config_file_survives_sighup_and_says_so(
    tmp_path: Path, certs: Path
) -> None:
    daemon = start_daemon_without_config(tmp_path, certs, node_id="node-a")
    try:
        offset = len(daemon.output())
        daemon.signal(signal.SIGHUP)
        wait_until(
            lambda: "no config file to reload" in daemon.output()[offset:],
            what="the HUP noted in the log",
        )
        assert daemon.alive()
        reply = _reload(certs, daemon)
        assert not reply.success and "started without --config" in reply.error_message
        assert daemon.alive()
    finally:
        daemon.stop()


_SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(_SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path: Path) -> None:
    units = REPO / "deploy" / "systemd"
    for name in ("fleet-daemon.service", "fleet-manager.service"):
        text = (units / name).read_text()
        # verify checks that ExecStart exists: point it at the console scripts here.
        text = text.replace(
            "/usr/local/bin/", str(Path(console_script("fleet-daemon")).parent) + "/"
        )
        (tmp_path / name).write_text(text)
    # Both reload on SIGHUP (the Manager: its certificate files).
    for name in ("fleet-daemon.service", "fleet-manager.service"):
        assert "ExecReload=/bin/kill -HUP $MAINPID" in (units / name).read_text()
    result = subprocess.run(
        [
            str(_SYSTEMD_ANALYZE),
            "verify",
            *(str(tmp_path / n) for n in sorted(os.listdir(tmp_path))),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "fleet-" in line and ".service" in line
    ]
    assert not problems, result.stdout + result.stderr
