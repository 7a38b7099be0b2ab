"""fleetctl against a real Manager and three real Daemons (harness processes, real certs).

One fleet per module (starting it is the slow part); tests that change agent state use
agents no other test asserts on, or assert only on what they changed themselves.

node-a (role=edge):  web (sleeper), solo (sleeper, unique), hog (memory/cpu/files)
node-b (role=edge):  web (sleeper), cfg (SDK agent that follows its config)
node-c (role=core):  web (exits 3 at start: every start fails)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from harness import console_script, one_line, run_cli, table, wait_until
from harness.daemon import DaemonProc, agent, cleanup_socket_dir, start_daemon
from harness.manager import ManagerProc, start_manager
from typer.testing import CliRunner

from fleetctl.app import app
from fleetctl.errors import ExitCode

runner = CliRunner()
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
NODE_KEYS = [
    "node_id",
    "hostname",
    "ip",
    "os",
    "arch",
    "status",
    "status_since",
    "last_heartbeat",
    "heartbeat_interval_seconds",
    "labels",
    "agent_count",
    "daemon_version",
    "agent_version",
    "daemon_address",
    "registered_at",
    "updated_at",
]
AGENT_KEYS = [
    "node_id",
    "id",
    "type",
    "status",
    "status_reason",
    "pid",
    "version",
    "start_time",
    "restart_count",
    "last_heartbeat",
    "config_hash",
    "last_exit_code",
    "updated_at",
    "node_status",
    "spec",
    "spec_revision",
]


@dataclass
class Fleet:
    manager: ManagerProc
    daemons: dict[str, DaemonProc]
    env: dict[str, str]
    certs: Path
    cfg_out: Path


def admin_env(certs: Path, manager: str) -> dict[str, str]:
    return {
        "FLEET_MANAGER": manager,
        "FLEET_CA": str(certs / "ca.crt"),
        "FLEET_CERT": str(certs / "admin.crt"),
        "FLEET_KEY": str(certs / "admin.key"),
        "FLEET_CONFIG": "",
        "FLEET_TIMEOUT": "20s",
        "NO_COLOR": "",
        "FORCE_COLOR": "",
    }


def cli(
    fleet: Fleet, *argv: str, env: dict[str, str] | None = None, input: str | None = None
) -> Any:
    return runner.invoke(app, list(argv), env={**fleet.env, **(env or {})}, input=input)


def ok_json(fleet: Fleet, *argv: str) -> Any:
    result = cli(fleet, *argv, "-o", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleetctl-e2e")
    manager = start_manager(tmp, certs)
    cfg_out = tmp / "cfg-agent.json"
    specs = {
        "node-a": (
            {"role": "edge", "zone": "z1"},
            [agent("web", "sleeper"), agent("solo", "sleeper"), agent("hog", "hog", "20")],
        ),
        "node-b": (
            {"role": "edge", "zone": "z2"},
            [
                agent("web", "sleeper"),
                # A restart counts as failed only if the agent exits within
                # start_seconds: 1 s is less than this Python agent may take to start,
                # read {"fail": true} and exit on a loaded machine.
                agent("cfg", "sdk_agent", str(cfg_out), heartbeat_interval=1.0, start_seconds=5.0),
            ],
        ),
        "node-c": (
            {"role": "core"},
            [agent("web", "crasher", "3", "0", autorestart="never", start_retries=0)],
        ),
    }
    daemons: dict[str, DaemonProc] = {}
    try:
        for node_id, (labels, agents) in specs.items():
            daemons[node_id] = start_daemon(
                tmp,
                certs,
                node_id=node_id,
                manager_port=manager.grpc_port,
                agents=agents,
                config={"labels": labels, "history": {"interval": 0.5}},
            )
        f = Fleet(manager, daemons, admin_env(certs, manager.address), certs, cfg_out)

        def synced() -> bool:
            agents = ok_json(f, "agents", "list")
            have = {(a["node_id"], a["id"], a["status"]) for a in agents}
            return {
                ("node-a", "web", "RUNNING"),
                ("node-a", "solo", "RUNNING"),
                ("node-a", "hog", "RUNNING"),
                ("node-b", "web", "RUNNING"),
                ("node-b", "cfg", "RUNNING"),
            } <= have and any(a["node_id"] == "node-c" for a in agents)

        wait_until(
            lambda: [n["status"] for n in ok_json(f, "nodes", "list")] == ["online"] * 3,
            timeout=30,
            what="three nodes online",
        )
        wait_until(synced, timeout=30, what="agents synced to the manager")
        yield f
    finally:
        for d in daemons.values():
            d.stop()
            cleanup_socket_dir(d)
        manager.stop()


# ---- nodes ----------------------------------------------------------------------------------


def test_nodes_list_table(fleet: Fleet) -> None:
    result = cli(fleet, "nodes", "list")
    assert result.exit_code == 0, result.output
    rows = table(result.stdout)
    assert rows[0] == ["NODE", "HOSTNAME", "IP", "OS/ARCH", "STATUS", "LAST HEARTBEAT", "LABELS"]
    assert [r[0] for r in rows[1:]] == ["node-a", "node-b", "node-c"]
    for row in rows[1:]:
        assert row[4] == "online"
        assert re.fullmatch(r"\d+s ago", row[5]), row
    assert rows[1][6] == "role=edge,zone=z1"
    assert "\x1b[" not in result.stdout and "─" not in result.stdout  # plain when piped


def test_nodes_list_json_is_the_documented_shape(fleet: Fleet) -> None:
    nodes = ok_json(fleet, "nodes", "list")
    assert [n["node_id"] for n in nodes] == ["node-a", "node-b", "node-c"]
    for n in nodes:
        assert list(n) == NODE_KEYS
        assert n["status"] == "online"
        for key in ("status_since", "last_heartbeat", "registered_at", "updated_at"):
            assert ISO.match(n[key]), (key, n[key])
        assert n["daemon_address"] == fleet.daemons[n["node_id"]].address
        assert isinstance(n["agent_count"], int)
    assert nodes[2]["labels"] == {"role": "core"}


def test_nodes_list_filters_and_wide(fleet: Fleet) -> None:
    edge = ok_json(fleet, "nodes", "list", "--label", "role=edge")
    assert [n["node_id"] for n in edge] == ["node-a", "node-b"]
    both = ok_json(fleet, "nodes", "list", "-l", "role=edge", "-l", "zone=z2")
    assert [n["node_id"] for n in both] == ["node-b"]
    assert ok_json(fleet, "nodes", "list", "--status", "offline") == []
    wide = cli(fleet, "nodes", "list", "-o", "wide", "--label", "role=core")
    rows = table(wide.stdout)
    assert rows[0][-5:] == ["SINCE", "AGENTS", "DAEMON", "ADDRESS", "REGISTERED"]
    assert rows[1][0] == "node-c" and rows[1][-2] == fleet.daemons["node-c"].address


def test_nodes_show(fleet: Fleet) -> None:
    result = cli(fleet, "nodes", "show", "node-a")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert re.search(r"^Status:\s+online for \d+[smh]", out, re.M)
    assert re.search(r"^Labels:\s+role=edge,zone=z1$", out, re.M)
    assert "Agents (3)" in out and "Recent events" in out
    agent_rows = {r[0] for r in table(out.split("Agents (3)")[1].split("Recent events")[0])}
    assert {"hog", "solo", "web"} <= agent_rows
    # A failing agent's reason is on the node's page, not only in `agents list -o wide`.
    failing = table(cli(fleet, "nodes", "show", "node-c").stdout.split("Agents (1)")[1])
    assert failing[0][-1] == "REASON" and failing[1][0] == "web"
    assert "exit code 3" in failing[1][-1], failing
    data = ok_json(fleet, "nodes", "show", "node-a")
    assert list(data) == ["node", "agents", "events"]
    assert list(data["node"]) == NODE_KEYS
    assert sorted(a["id"] for a in data["agents"]) == ["hog", "solo", "web"]
    assert all(list(a) == AGENT_KEYS for a in data["agents"])
    assert data["events"] and data["events"][-1]["new_status"] in ("online", "registering")
    assert all(ISO.match(e["timestamp"]) for e in data["events"])


# ---- agents ---------------------------------------------------------------------------------


def test_agents_list_table_json_and_filters(fleet: Fleet) -> None:
    result = cli(fleet, "agents", "list")
    assert result.exit_code == 0, result.output
    rows = table(result.stdout)
    assert rows[0] == [
        "NODE", "AGENT", "TYPE", "STATUS", "PID", "RESTARTS", "UPTIME", "HEARTBEAT", "SPEC",
    ]  # fmt: skip
    pairs = [(r[0], r[1]) for r in rows[1:]]
    assert pairs == sorted(pairs) and ("node-b", "cfg") in pairs
    agents = ok_json(fleet, "agents", "list", "node-b")
    assert {a["id"] for a in agents} == {"web", "cfg"}
    assert all(list(a) == AGENT_KEYS and a["node_id"] == "node-b" for a in agents)
    running = ok_json(fleet, "agents", "list", "node-a", "--status", "running")
    assert running and all(a["status"] == "RUNNING" and a["pid"] > 0 for a in running)
    live = ok_json(fleet, "agents", "list", "--live")
    assert {(a["node_id"], a["id"]) for a in live} >= {("node-a", "hog"), ("node-b", "cfg")}
    wide = table(cli(fleet, "agents", "list", "node-c", "-o", "wide").stdout)
    assert wide[0][-3:] == ["VERSION", "CONFIG", "REASON"]


def test_agent_restart_prints_new_state_and_pid(fleet: Fleet) -> None:
    before = next(
        a for a in ok_json(fleet, "agents", "list", "node-a", "--live") if a["id"] == "solo"
    )
    result = cli(fleet, "agent", "restart", "node-a", "solo")
    assert result.exit_code == 0, result.output
    match = re.fullmatch(r"restarted solo on node-a: RUNNING, pid (\d+)", result.stdout.strip())
    assert match, result.stdout
    assert int(match.group(1)) != before["pid"]
    # Without NODE: solo exists on one node only.
    data = ok_json(fleet, "agent", "restart", "solo")
    assert data["node_id"] == "node-a" and data["operation"] == "restart" and data["success"]
    assert data["error"] is None and list(data["agent"]) == AGENT_KEYS
    assert data["agent"]["status"] == "RUNNING" and data["agent"]["pid"] != int(match.group(1))


def test_agent_stop_then_start(fleet: Fleet) -> None:
    stopped = ok_json(fleet, "agent", "stop", "node-a", "solo")
    assert stopped["success"] and stopped["agent"]["status"] == "STOPPED"
    assert stopped["agent"]["pid"] is None
    result = cli(fleet, "agent", "start", "node-a", "solo")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"started solo on node-a: RUNNING, pid \d+", result.stdout.strip())


def test_failed_operation_exits_1_with_the_daemons_error(fleet: Fleet) -> None:
    result = cli(fleet, "agent", "start", "node-c", "web")
    assert result.exit_code == ExitCode.FAILED
    line = one_line(result.stderr)
    assert line.startswith("fleetctl: start web on node-c failed: ") and "exit code 3" in line
    data = cli(fleet, "agent", "start", "node-c", "web", "-o", "json")
    assert data.exit_code == ExitCode.FAILED
    body = json.loads(data.stdout)
    assert body["success"] is False and "exit code 3" in body["error"]


def test_fleet_wide_restart_with_one_failing_node(fleet: Fleet) -> None:
    result = cli(fleet, "agent", "restart", "web", "--all", "--parallel", "2")
    assert result.exit_code == ExitCode.FAILED, result.output
    rows = table(result.stdout)
    assert rows[0] == ["NODE", "RESULT", "STATUS", "PID", "ERROR"]
    by_node = {r[0]: r for r in rows[1:4]}
    assert by_node["node-a"][1] == "ok" and by_node["node-a"][2] == "RUNNING"
    assert by_node["node-b"][1] == "ok"
    assert by_node["node-c"][1] == "failed" and "exit code 3" in by_node["node-c"][-1]
    assert "restarted web on 2 of 3 node(s); 1 failed" in result.stdout
    assert one_line(result.stderr) == "fleetctl: restart web failed on 1 of 3 node(s): node-c"

    data = cli(fleet, "agent", "restart", "web", "--all", "-o", "json")
    assert data.exit_code == ExitCode.FAILED
    body = json.loads(data.stdout)
    assert (body["succeeded"], body["failed"], body["skipped"]) == (2, 1, [])
    assert [r["node_id"] for r in body["results"]] == ["node-a", "node-b", "node-c"]
    assert [r["success"] for r in body["results"]] == [True, True, False]

    edge = ok_json(fleet, "agent", "restart", "web", "--all", "--label", "role=edge")
    assert (edge["succeeded"], edge["failed"]) == (2, 0)
    assert edge["labels"] == {"role": "edge"}


def test_fleet_wide_skips_nodes_without_the_agent(fleet: Fleet) -> None:
    data = ok_json(fleet, "agent", "restart", "solo", "--all")
    assert data["succeeded"] == 1 and data["skipped"] == ["node-b", "node-c"]
    missing = cli(fleet, "agent", "restart", "nosuch", "--all")
    assert missing.exit_code == ExitCode.NOT_FOUND
    assert "agent nosuch is not on any node" in one_line(missing.stderr)


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["nodes", "show", "nope"], "node nope is not registered"),
        (["nodes", "metrics", "nope"], "node nope is not registered"),
        (["agent", "restart", "nope", "web"], "node nope is not registered"),
        (["agent", "restart", "node-a", "nosuch"], "nosuch"),
        (["agent", "restart", "nosuch"], "agent nosuch is not known on any node"),
        (["metrics", "nosuch", "--node", "node-a"], "nosuch"),
        (["agent", "config", "get", "node-a", "nosuch"], "nosuch"),
    ],
)
def test_unknown_node_or_agent_exits_3(fleet: Fleet, argv: list[str], needle: str) -> None:
    result = cli(fleet, *argv)
    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert needle in one_line(result.stderr)


@pytest.mark.parametrize(
    ("argv", "suggestion"),
    [
        (["nodes", "show", "nod-a"], "node nod-a is not registered — did you mean node-a?"),
        (["nodes", "show", "NODE-B"], "did you mean node-b?"),
        (["agent", "restart", "node-cc", "web"], "did you mean node-c?"),
        (["nodes", "show", "web-01"], "node web-01 is not registered"),
    ],
)
def test_a_mistyped_node_gets_a_suggestion(fleet: Fleet, argv: list[str], suggestion: str) -> None:
    result = cli(fleet, *argv)
    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    line = one_line(result.stderr)
    assert suggestion in line, line
    if argv[-1] == "web-01":
        assert "did you mean" not in line, line


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["agent", "restart", "node-a", "sol"],
            "fleetctl: daemon node-a: agent 'sol' is not configured on this node "
            "— did you mean solo?",
        ),
        (
            ["agent", "restart", "slo"],
            "fleetctl: agent slo is not known on any node (give its node) — did you mean solo?",
        ),
        (["agent", "logs", "node-a", "hgo"], "— did you mean hog?"),
        (["agent", "config", "get", "node-b", "cgf"], "— did you mean cfg?"),
        (["metrics", "node-a", "wbe"], "— did you mean web?"),
        # Right id, wrong node: where it is.
        (
            ["agent", "logs", "node-b", "solo"],
            "fleetctl: daemon node-b: agent 'solo' is not configured on this node "
            "— solo is on node-a",
        ),
        (["agents", "list", "nod-c"], "node nod-c is not registered — did you mean node-c?"),
        # The first part of ids, like a host's short name: every id it starts.
        (["nodes", "show", "node"], "did you mean node-a, node-b or node-c?"),
        (["agent", "restart", "node-c", "nosuch"], "not configured on this node"),
    ],
)
def test_a_mistyped_agent_gets_a_suggestion(fleet: Fleet, argv: list[str], line: str) -> None:
    result = cli(fleet, *argv)
    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    said = one_line(result.stderr)
    assert line in said, said
    if argv[-1] == "nosuch":
        assert "did you mean" not in said and " is on " not in said, said


def test_a_mistyped_agent_gets_a_suggestion_from_the_daemon_too(fleet: Fleet) -> None:
    daemon = fleet.daemons["node-a"].address
    result = cli(fleet, "agent", "stop", "node-a", "hgo", "--daemon", daemon)
    assert result.exit_code == ExitCode.NOT_FOUND, result.output
    assert one_line(result.stderr) == (
        "fleetctl: agent 'hgo' is not configured on this node — did you mean hog?"
    )


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["agent", "restart", "web"], "(as NODE AGENT)"),
        (["metrics", "web"], "(as NODE AGENT)"),
        (["agent", "config", "get", "web"], "(as NODE AGENT)"),
    ],
)
def test_ambiguous_agent_is_a_usage_error(fleet: Fleet, argv: list[str], hint: str) -> None:
    result = cli(fleet, *argv)
    assert result.exit_code == ExitCode.USAGE
    line = one_line(result.stderr)
    assert "agent web exists on 3 nodes: node-a, node-b, node-c" in line and line.endswith(hint)


def test_node_certificate_is_permission_denied(fleet: Fleet) -> None:
    env = {
        "FLEET_CERT": str(fleet.certs / "node-a.crt"),
        "FLEET_KEY": str(fleet.certs / "node-a.key"),
    }
    result = cli(fleet, "nodes", "list", env=env)
    assert result.exit_code == ExitCode.PERMISSION_DENIED
    line = one_line(result.stderr)
    assert "permission denied" in line and "admin certificate" in line


def test_certificate_from_another_ca_is_refused(fleet: Fleet, other_ca_certs: Path) -> None:
    env = {
        "FLEET_CERT": str(other_ca_certs / "admin.crt"),
        "FLEET_KEY": str(other_ca_certs / "admin.key"),
    }
    result = cli(fleet, "nodes", "list", env=env)
    assert result.exit_code == ExitCode.PERMISSION_DENIED
    assert "refused our certificate" in one_line(result.stderr)


def test_real_console_script_lists_nodes(fleet: Fleet) -> None:
    proc = run_cli([console_script("fleetctl"), "nodes", "list", "-o", "json"], env=fleet.env)
    assert proc.returncode == 0, proc.stderr
    assert [n["node_id"] for n in json.loads(proc.stdout)] == ["node-a", "node-b", "node-c"]


@pytest.mark.parametrize(
    "argv",
    [
        ["nodes", "list", "-o", "json"],
        ["agents", "list", "-o", "json"],
        ["nodes", "show", "node-a"],
        ["agent", "config", "get", "node-a", "web", "-o", "json"],
    ],
)
def test_commands_load_neither_betterproto_nor_rich_when_piped(
    fleet: Fleet, argv: list[str]
) -> None:
    """fleetctl reads replies with upb (betterproto costs ~85 ms to import and a second to
    decode 10,000 nodes), and plain output needs no Rich."""
    code = (
        "import sys\n"
        "from fleetctl.app import app\n"
        "try:\n"
        f"    app({argv!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "heavy = [m for m in ('betterproto', 'rich') if m in sys.modules]\n"
        "sys.stderr.write(f'exit={code} heavy={heavy}\\n')\n"
    )
    proc = run_cli([sys.executable, "-c", code], env=fleet.env)
    assert proc.stderr.strip().splitlines()[-1] == "exit=0 heavy=[]", proc.stderr
    assert proc.stdout.strip()


# ---- metrics --------------------------------------------------------------------------------


def test_agent_metrics_summary_raw_and_json(fleet: Fleet) -> None:
    def points() -> list[dict[str, Any]]:
        data = ok_json(fleet, "metrics", "hog", "--since", "5m")
        return data["points"] if len(data["points"]) >= 3 else []

    pts = wait_until(points, timeout=30, what="3 history points for hog")
    data = ok_json(fleet, "metrics", "hog", "--node", "node-a", "--since", "5m")
    assert (data["node_id"], data["agent_id"], data["since_seconds"]) == ("node-a", "hog", 300)
    for p in pts:
        assert list(p) == [
            "timestamp",
            "cpu",
            "memory_rss",
            "memory_vms",
            "disk_read_bytes",
            "disk_write_bytes",
            "open_files",
        ]
        assert ISO.match(p["timestamp"]) and isinstance(p["memory_rss"], int)
    assert max(p["memory_rss"] for p in pts) > 15 * 1024 * 1024  # hog holds ~20 MB

    summary = cli(fleet, "metrics", "hog", "--since", "5m")
    assert summary.exit_code == 0, summary.output
    lines = summary.stdout.strip().splitlines()
    assert re.match(r"agent hog on node-a, last 5m \(\d+ points", lines[0])
    rows = table("\n".join(lines[1:]))
    assert rows[0] == ["FIELD", "MIN", "AVG", "MAX", "LAST", "TREND"]
    fields = {r[0]: r for r in rows[1:]}
    assert set(fields) == {
        "cpu",
        "memory_rss",
        "memory_vms",
        "disk_read_bytes",
        "disk_write_bytes",
        "open_files",
    }
    assert fields["memory_rss"][3].endswith("MiB")
    assert re.fullmatch(r"[_.\-~=+*#]+", fields["memory_rss"][5])  # ASCII sparkline when piped

    raw = cli(fleet, "metrics", "hog", "--node", "node-a", "--since", "5m", "--raw")
    raw_rows = table("\n".join(raw.stdout.strip().splitlines()[1:]))
    assert raw_rows[0][0] == "TIME" and len(raw_rows) - 1 >= 3


def test_metrics_takes_the_node_as_every_agent_command_does(fleet: Fleet) -> None:
    """``metrics [NODE] AGENT`` like ``agent logs``; ``-n`` is a count everywhere, so
    ``metrics -n NODE`` still works but says it is deprecated (on stderr)."""
    wait_until(
        lambda: ok_json(fleet, "metrics", "web", "--node", "node-b", "--since", "5m")["points"],
        timeout=30,
        what="history points for web on node-b",
    )
    positional = cli(fleet, "metrics", "node-b", "web", "--since", "5m", "-o", "json")
    assert positional.exit_code == 0 and positional.stderr == "", positional.output
    assert json.loads(positional.stdout)["node_id"] == "node-b"

    old = cli(fleet, "metrics", "web", "-n", "node-b", "--since", "5m", "-o", "json")
    assert old.exit_code == 0, old.output
    assert json.loads(old.stdout)["node_id"] == "node-b"
    assert one_line(old.stderr) == (
        "fleetctl: warning: '-n node-b' is deprecated (-n means a count, as in "
        "'agent logs -n 50'): write '--node node-b' or 'node-b web'"
    )
    options = cli(fleet, "metrics", "--help").stdout.split("Options:")[1]
    assert "--node NODE" in options and not re.search(r"(^|\s)-n\b", options)

    twice = cli(fleet, "metrics", "node-a", "web", "--node", "node-b")
    assert twice.exit_code == ExitCode.USAGE
    assert one_line(twice.stderr) == (
        "fleetctl: two nodes given: node-a and node-b; give the node once"
    )


def test_bad_duration_exits_2(fleet: Fleet) -> None:
    result = cli(fleet, "metrics", "hog", "--since", "an hour")
    assert result.exit_code == ExitCode.USAGE
    assert "invalid duration 'an hour'" in one_line(result.stderr)


def test_node_metrics_summary_and_json(fleet: Fleet) -> None:
    def samples() -> list[dict[str, Any]]:
        data = ok_json(fleet, "nodes", "metrics", "node-a", "--type", "memory", "--since", "10m")
        return data["metrics"] if len(data["metrics"]) >= 2 else []

    got = wait_until(samples, timeout=30, what="memory samples for node-a")
    assert all(m["type"] == "memory" and ISO.match(m["timestamp"]) for m in got)
    assert all(isinstance(m["values"], dict) and m["values"] for m in got)
    summary = cli(fleet, "nodes", "metrics", "node-a", "--since", "10m")
    assert summary.exit_code == 0, summary.output
    lines = summary.stdout.strip().splitlines()
    assert lines[0].startswith("node node-a, last 10m (")
    rows = table("\n".join(lines[1:]))
    assert rows[0] == ["TYPE", "FIELD", "MIN", "AVG", "MAX", "LAST", "TREND"]
    assert {r[0] for r in rows[1:]} >= {"cpu", "memory"}


# ---- the two message runtimes --------------------------------------------------------------


class _RawReply:
    """grpclib reply type keeping the bytes as they came off the wire."""

    @staticmethod
    def FromString(data: bytes) -> bytes:
        return data


def test_upb_and_betterproto_replies_print_the_same(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fleetctl decodes its list replies with upb (schema.admin_pb2); the same real reply
    decoded by betterproto must print exactly the same JSON and table rows."""
    import asyncio
    import io

    from grpclib.const import Cardinality
    from harness.manager import admin_channel

    from fleetctl.commands.metrics import print_node_metrics
    from fleetctl.render import Output
    from fleetctl.views import agent_json, agent_row, node_json, node_row, point_json
    from schema import admin_pb, admin_pb2

    # hog's history and node-a's samples exist (other tests wait for them too).
    wait_until(
        lambda: len(ok_json(fleet, "metrics", "hog", "--since", "5m")["points"]) >= 2,
        timeout=30,
        what="history points for hog",
    )
    wait_until(
        lambda: ok_json(fleet, "nodes", "metrics", "node-a", "--since", "10m")["metrics"],
        timeout=30,
        what="host metrics of node-a",
    )
    calls = {
        "ListNodes": admin_pb2.ListNodesRequest(),
        "ListAgents": admin_pb2.ListAgentsRequest(),
        "GetAgentMetrics": admin_pb2.GetAgentMetricsRequest(
            node_id="node-a", agent_id="hog", since_seconds=600
        ),
        "QueryNodeMetrics": admin_pb2.QueryNodeMetricsRequest(node_id="node-a", since_seconds=600),
    }

    async def fetch() -> dict[str, bytes]:
        channel = admin_channel(fleet.certs, fleet.manager.grpc_port)
        replies = {}
        try:
            for method, request in calls.items():
                async with channel.request(
                    f"/fleet.admin.v1.AdminService/{method}",
                    Cardinality.UNARY_UNARY,
                    type(request),
                    _RawReply,
                ) as stream:
                    await stream.send_message(request, end=True)
                    replies[method] = cast(bytes, await stream.recv_message())
        finally:
            channel.close()
        return replies

    replies = asyncio.run(fetch())
    monkeypatch.setattr("fleetctl.render.time.time", lambda: 1_900_000_000.0)  # fixed "ago"

    def printed(method: str, message: Any) -> list[Any]:
        if method == "ListNodes":
            nodes = sorted(message.nodes, key=lambda n: n.node_id)
            return [[node_json(n), node_row(n, wide=True)] for n in nodes]
        if method == "ListAgents":
            agents = sorted(message.agents, key=lambda a: (a.node_id, a.id))
            return [[agent_json(a), agent_row(a, wide=True)] for a in agents]
        if method == "GetAgentMetrics":
            return [point_json(p) for p in message.data_points]
        texts = []
        for raw, as_json in ((False, True), (False, False), (True, False)):
            buf = io.StringIO()
            out = Output(rich=False, stream=buf)
            print_node_metrics(
                out, "node-a", message.metrics, since_seconds=600, raw=raw, as_json=as_json
            )
            texts.append(buf.getvalue())
        return texts

    for method, data in replies.items():
        reply_type = method + "Response"
        upb = getattr(admin_pb2, reply_type).FromString(data)
        betterproto = getattr(admin_pb, reply_type)().parse(data)
        assert upb.ListFields(), f"{method}: an empty reply proves nothing"
        # Through json.dumps as fleetctl prints them: a upb container left in a view
        # (a map, a repeated field) is not JSON-serialisable and fails here.
        assert json.dumps(printed(method, upb)) == json.dumps(printed(method, betterproto))


# ---- config ---------------------------------------------------------------------------------


def test_config_push_and_get(fleet: Fleet, tmp_path: Path) -> None:
    new = tmp_path / "cfg.json"
    new.write_text(json.dumps({"greeting": "hello", "n": 3}))
    result = cli(fleet, "agent", "config", "push", "node-b", "cfg", str(new), "--version", "v7")
    assert result.exit_code == 0, result.output
    match = re.fullmatch(
        r"APPLIED: cfg on node-b, config hash ([0-9a-f]{64}), version v7", result.stdout.strip()
    )
    assert match, result.stdout
    got = ok_json(fleet, "agent", "config", "get", "node-b", "cfg")
    assert got == {
        "node_id": "node-b",
        "agent_id": "cfg",
        "version": "v7",
        "config_hash": match.group(1),
        "config": {"greeting": "hello", "n": 3},
    }
    # The SDK agent picks the new config up on its next heartbeat.
    wait_until(
        lambda: json.loads(fleet.cfg_out.read_text())["config"] == {"greeting": "hello", "n": 3},
        timeout=30,
        what="agent sees pushed config",
    )
    table_out = cli(fleet, "agent", "config", "get", "node-b", "cfg").stdout
    assert re.search(r"^Version:\s+v7$", table_out, re.M) and '"greeting": "hello"' in table_out


def test_config_push_says_which_version_label_is_in_effect(fleet: Fleet, tmp_path: Path) -> None:
    """A push without --version sets no label: fleetctl shows the label the agent has
    after it, and says it was not this push's, rather than let an older config's label
    pass for this one's."""
    first, second = tmp_path / "one.json", tmp_path / "two.json"
    first.write_text('{"round": 1}')
    second.write_text('{"round": 2}')
    labelled = ok_json(
        fleet, "agent", "config", "push", "node-a", "solo", str(first), "--version", "s1"
    )
    assert labelled["version"] == "s1"

    result = cli(fleet, "agent", "config", "push", "node-a", "solo", str(second))
    assert result.exit_code == 0, result.output
    now = ok_json(fleet, "agent", "config", "get", "node-a", "solo")
    assert now["config"] == {"round": 2}
    line = result.stdout.strip()
    assert line.startswith(f"APPLIED: solo on node-a, config hash {now['config_hash']}")
    if now["version"]:  # the Daemon kept the older label
        assert line.endswith(
            f", version {now['version']} (kept: this push set none; label it with --version)"
        )
    else:
        assert line.endswith(now["config_hash"])
    pushed = ok_json(fleet, "agent", "config", "push", "node-a", "solo", str(second))
    assert pushed["version"] == now["version"]

    empty = cli(fleet, "agent", "config", "push", "node-a", "solo", str(second), "--version", "")
    assert empty.exit_code == ExitCode.USAGE
    assert "--version '': give a label" in one_line(empty.stderr)


def test_config_push_with_failing_restart_is_rolled_back(fleet: Fleet, tmp_path: Path) -> None:
    before = ok_json(fleet, "agent", "config", "get", "node-b", "cfg")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fail": True}))
    result = cli(
        fleet, "agent", "config", "push", "node-b", "cfg", str(bad), "--restart", "-o", "json"
    )
    assert result.exit_code == ExitCode.FAILED, result.output
    body = json.loads(result.stdout)
    assert body["status"] == "FAILED" and body["success"] is False and body["error"]
    assert body["config_hash"] == before["config_hash"]  # rolled back
    assert "FAILED" in one_line(result.stderr)
    assert ok_json(fleet, "agent", "config", "get", "node-b", "cfg")["config"] == before["config"]


# ---- --daemon -------------------------------------------------------------------------------


def test_daemon_direct_commands(fleet: Fleet, tmp_path: Path) -> None:
    daemon = fleet.daemons["node-a"].address
    agents = ok_json(fleet, "agents", "list", "--daemon", daemon)
    assert {a["id"] for a in agents} == {"web", "solo", "hog"}
    assert all(a["node_id"] == "node-a" for a in agents)  # learnt from its certificate
    result = cli(fleet, "agent", "restart", "node-a", "solo", "--daemon", daemon)
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"restarted solo on node-a: RUNNING, pid \d+", result.stdout.strip())
    metrics = ok_json(fleet, "metrics", "hog", "--daemon", daemon, "--since", "5m")
    assert metrics["node_id"] == "node-a" and metrics["points"]
    cfg = ok_json(fleet, "agent", "config", "get", "node-a", "hog", "--daemon", daemon)
    assert cfg["agent_id"] == "hog" and re.fullmatch(r"[0-9a-f]{64}", cfg["config_hash"])
    f = tmp_path / "c.json"
    f.write_text('{"x": 1}')
    pushed = ok_json(fleet, "agent", "config", "push", "node-a", "hog", str(f), "--daemon", daemon)
    assert pushed["status"] == "APPLIED"
    unknown = cli(fleet, "agent", "stop", "node-a", "nosuch", "--daemon", daemon)
    assert unknown.exit_code == ExitCode.NOT_FOUND


def test_config_push_from_stdin_and_toml(fleet: Fleet, tmp_path: Path) -> None:
    piped = cli(
        fleet, "agent", "config", "push", "node-a", "hog", "-", "-o", "json", input='{"a": 1}'
    )
    assert piped.exit_code == 0, piped.output
    assert json.loads(piped.stdout)["status"] == "APPLIED"
    assert ok_json(fleet, "agent", "config", "get", "node-a", "hog")["config"] == {"a": 1}
    toml = tmp_path / "hog.toml"
    toml.write_text('level = "debug"\n[limits]\nmax = 5\n')
    assert cli(fleet, "agent", "config", "push", "node-a", "hog", str(toml)).exit_code == 0
    got = ok_json(fleet, "agent", "config", "get", "node-a", "hog")["config"]
    assert got == {"level": "debug", "limits": {"max": 5}}


def test_daemon_direct_checks_the_node_identity(fleet: Fleet) -> None:
    result = cli(fleet, "agents", "list", "node-b", "--daemon", fleet.daemons["node-a"].address)
    assert result.exit_code == ExitCode.PERMISSION_DENIED
    line = one_line(result.stderr)
    assert "expected node/node-b" in line and "is node-b the node at" in line


def test_daemon_refuses_node_certificates(fleet: Fleet) -> None:
    env = {
        "FLEET_CERT": str(fleet.certs / "node-b.crt"),
        "FLEET_KEY": str(fleet.certs / "node-b.key"),
    }
    result = cli(fleet, "agents", "list", "--daemon", fleet.daemons["node-a"].address, env=env)
    assert result.exit_code == ExitCode.PERMISSION_DENIED
    assert "permission denied" in one_line(result.stderr)


def test_daemon_that_went_away(tmp_path: Path, certs: Path) -> None:
    """A Daemon that stopped: --live lists what it can, names the node, exits 1; an
    operation on it exits 5 (unavailable); the node shows stopped (it said goodbye: a
    crash would show offline once the grace passes, tests/test_node_leave.py)."""
    manager = start_manager(tmp_path, certs, grace=2.0)
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=manager.grpc_port,
        agents=[agent("web", "sleeper")],
        heartbeat_interval=0.5,
    )
    f = Fleet(manager, {"node-a": daemon}, admin_env(certs, manager.address), certs, tmp_path)
    try:
        wait_until(lambda: ok_json(f, "agents", "list"), timeout=30, what="agents synced")
        daemon.stop()
        result = cli(f, "agents", "list", "--live")
        assert result.exit_code == ExitCode.FAILED
        assert one_line(result.stderr).startswith("fleetctl: node-a: UNAVAILABLE: ")
        op = cli(f, "agent", "restart", "node-a", "web")
        assert op.exit_code == ExitCode.UNAVAILABLE
        one_line(op.stderr)

        assert [n["node_id"] for n in ok_json(f, "nodes", "list", "--status", "stopped")] == [
            "node-a"
        ]
        rows = table(cli(f, "nodes", "list").stdout)
        assert rows[1][0] == "node-a" and rows[1][4] == "stopped"
        shown = cli(f, "nodes", "show", "node-a").stdout
        assert re.search(r"^Status:\s+stopped for \d+s$", shown, re.M), shown
        events = ok_json(f, "nodes", "show", "node-a")["events"]
        assert events[0]["old_status"] == "online" and events[0]["new_status"] == "stopped"
        assert events[0]["reason"] == "daemon shut down (SIGTERM)"
        # Its agents are marked: what is shown is their last reported state.
        (web,) = ok_json(f, "agents", "list")
        assert web["node_status"] == "stopped"
        status_col = table(cli(f, "agents", "list").stdout)[1][3]
        assert status_col.endswith("(node stopped)"), status_col
    finally:
        daemon.stop()
        cleanup_socket_dir(daemon)
        manager.stop()


def test_terminal_output_has_colour_and_unicode_unless_no_color(fleet: Fleet) -> None:
    rich = cli(fleet, "metrics", "hog", "--since", "5m", env={"FORCE_COLOR": "1"})
    assert rich.exit_code == 0, rich.output
    assert "\x1b[" in rich.stdout and "─" in rich.stdout
    assert any(ch in rich.stdout for ch in "▁▂▃▄▅▆▇█")
    plain = cli(fleet, "metrics", "hog", "--since", "5m", env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert "\x1b[" not in plain.stdout and "─" not in plain.stdout
    assert not any(ch in plain.stdout for ch in "▁▂▃▄▅▆▇█")


def test_agents_list_of_unknown_node_exits_3(fleet: Fleet) -> None:
    result = cli(fleet, "agents", "list", "nope")
    assert result.exit_code == ExitCode.NOT_FOUND
    assert one_line(result.stderr) == "fleetctl: node nope is not registered"


def test_global_options_after_the_command(fleet: Fleet) -> None:
    env = {"FLEET_MANAGER": "127.0.0.1:1"}  # wrong, overridden by the flag
    result = cli(fleet, "nodes", "list", "-o", "json", "--manager", fleet.manager.address, env=env)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 3


def test_insecure_manager_needs_insecure_flag(tmp_path: Path, certs: Path) -> None:
    manager = start_manager(tmp_path, None, insecure=True)
    try:
        env = {"FLEET_MANAGER": manager.address, "FLEET_CONFIG": ""}
        plain = runner.invoke(app, ["nodes", "list", "-o", "json", "--insecure"], env=env)
        assert plain.exit_code == 0, plain.output
        assert json.loads(plain.stdout) == []
        tls = runner.invoke(
            app, ["nodes", "list"], env={**env, **admin_env(certs, manager.address)}
        )
        assert tls.exit_code == ExitCode.UNAVAILABLE
        assert "is it serving TLS? check --manager and --insecure" in one_line(tls.stderr)
    finally:
        manager.stop()


def complete(fleet: Fleet, words: str, env: dict[str, str] | None = None) -> list[str]:
    """What bash completion offers for the last word of ``words`` (a real subprocess)."""
    parts = words.split(" ")
    proc = run_cli(
        [console_script("fleetctl")],
        env={
            **fleet.env,
            "_FLEETCTL_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(parts) - 1),
            **(env or {}),
        },
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return proc.stdout.split()


def test_shell_completion_of_nodes_and_agents(fleet: Fleet) -> None:
    assert complete(fleet, "fleetctl nodes show node-") == ["node-a", "node-b", "node-c"]
    assert complete(fleet, "fleetctl agent restart node-a ") == ["hog", "solo", "web"]
    # Unique agent ids complete in the first position too; "web" is on every node.
    first = complete(fleet, "fleetctl agent restart ")
    assert {"node-a", "node-b", "node-c", "solo", "hog", "cfg"} <= set(first)
    assert "web" not in first
    assert complete(fleet, "fleetctl metrics h") == ["hog"]
    assert complete(fleet, "fleetctl metrics node-a h") == ["hog"]
    # Manager unreachable: nothing offered, nothing printed.
    assert complete(fleet, "fleetctl nodes show n", env={"FLEET_MANAGER": "127.0.0.1:1"}) == []


def test_zsh_completion_answers_what_its_script_asks(fleet: Fleet) -> None:
    """The script ``--show-completion zsh`` prints asks with complete_zsh; the answer
    carries each id with its help text, as zsh shows them."""
    script = run_cli([console_script("fleetctl"), "--show-completion", "zsh"]).stdout
    assert "_FLEETCTL_COMPLETE=complete_zsh" in script
    proc = run_cli(
        [console_script("fleetctl")],
        env={
            **fleet.env,
            "_FLEETCTL_COMPLETE": "complete_zsh",
            "_TYPER_COMPLETE_ARGS": "fleetctl nodes show node-",
        },
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    assert '"node-a":"online"' in proc.stdout and '"node-c":"online"' in proc.stdout
