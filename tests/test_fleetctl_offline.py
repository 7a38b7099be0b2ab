"""fleetctl without a Manager: settings precedence, rendering, usage errors, unreachable
servers and refused certificates (against a real grpclib TLS listener started here)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from harness import clean_fleetctl_env, console_script, free_port, one_line, run_cli
from typer.testing import CliRunner

from fleetctl import render
from fleetctl.app import app, hoist_global_options
from fleetctl.errors import ExitCode
from fleetctl.settings import resolve

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_fleetctl_env(monkeypatch, tmp_path)


def admin_env(certs: Path, **extra: str) -> dict[str, str]:
    return {
        "FLEET_CA": str(certs / "ca.crt"),
        "FLEET_CERT": str(certs / "admin.crt"),
        "FLEET_KEY": str(certs / "admin.key"),
        **extra,
    }


# ---- settings -------------------------------------------------------------------------------


def test_flags_beat_env_beat_config_file_beat_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "fleetctl.toml"
    cfg.write_text(
        'manager = "cfg-host:1111"\nca = "certs/ca.crt"\ncert = "/abs/admin.crt"\n'
        'key = "/abs/admin.key"\ntimeout = "7s"\n'
    )
    environ = {"FLEET_CONFIG": str(cfg), "FLEET_MANAGER": "env-host:2222", "FLEET_KEY": "/e/k"}
    s = resolve({"manager": "flag-host:3333"}, environ=environ, home=tmp_path)
    assert str(s.manager) == "flag-host:3333" and s.sources["manager"] == "flag --manager"
    assert str(s.key) == "/e/k" and s.sources["key"] == "env FLEET_KEY"
    assert s.ca == tmp_path / "certs" / "ca.crt"  # relative to the config file
    assert s.sources["ca"] == f"config {cfg}"
    assert s.timeout == 7
    assert s.insecure is False and s.sources["insecure"] == "default"

    s = resolve({}, environ={}, home=tmp_path)
    assert str(s.manager) == "127.0.0.1:50051" and s.sources["manager"] == "default"
    assert s.cert is None and s.sources["cert"] == "unset" and s.config_file is None


def test_default_config_file_is_read_from_the_config_home(tmp_path: Path) -> None:
    path = tmp_path / ".config" / "fleet" / "fleetctl.toml"
    path.parent.mkdir(parents=True)
    path.write_text('manager = "[::1]:6000"\ninsecure = true\n')
    s = resolve({}, environ={}, home=tmp_path)
    assert s.manager.host == "::1" and s.manager.port == 6000 and s.insecure
    assert s.config_file == path and s.sources["config_file"] == "default"


def test_config_show_prints_values_and_sources(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('manager = "cfg:1"\ntimeout = "9s"\n')
    result = runner.invoke(
        app,
        ["config", "show", "-o", "json", "--cert", "/x/admin.crt"],
        env={"FLEET_CONFIG": str(cfg), "FLEET_CA": "/x/ca.crt"},
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["config_file"] == str(cfg)
    assert data["settings"]["manager"] == {"value": "cfg:1", "source": f"config {cfg}"}
    assert data["settings"]["cert"] == {"value": "/x/admin.crt", "source": "flag --cert"}
    assert data["settings"]["ca"] == {"value": "/x/ca.crt", "source": "env FLEET_CA"}
    assert data["settings"]["key"] == {"value": None, "source": "unset"}
    assert data["settings"]["timeout"] == {"value": "9s", "source": f"config {cfg}"}

    table = runner.invoke(app, ["config", "show"], env={"FLEET_CONFIG": str(cfg)})
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["SETTING", "VALUE", "SOURCE"]
    assert any(line.split()[:2] == ["manager", "cfg:1"] for line in lines)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('manger = "x:1"\n', "unknown key(s) manger"),
        ("manager = \n", "cannot read config file"),
        ('timeout = "soon"\n', "invalid timeout"),
        ('manager = "h:99999"\n', "port must be a number from 1 to 65535"),
    ],
)
def test_bad_config_file_is_a_usage_error(tmp_path: Path, content: str, message: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(content)
    result = runner.invoke(app, ["nodes", "list", "--config", str(cfg)])
    assert result.exit_code == ExitCode.USAGE
    assert message in one_line(result.stderr)


def test_global_options_may_follow_the_command() -> None:
    args = ["nodes", "list", "--manager", "h:1", "-o", "json", "--debug", "--ca=x", "--", "--key"]
    assert hoist_global_options(args) == [
        "--manager",
        "h:1",
        "--debug",
        "--ca=x",
        "nodes",
        "list",
        "-o",
        "json",
        "--",
        "--key",
    ]


def test_missing_certificate_settings_name_the_fix() -> None:
    result = runner.invoke(app, ["nodes", "list"])
    assert result.exit_code == ExitCode.USAGE
    line = one_line(result.stderr)
    assert "--cert / FLEET_CERT" in line and "--insecure" in line


def test_missing_certificate_file_names_the_path_and_source(certs: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.crt"
    result = runner.invoke(app, ["nodes", "list"], env=admin_env(certs, FLEET_CERT=str(missing)))
    assert result.exit_code == ExitCode.USAGE
    assert f"cert file not found: {missing} (from env FLEET_CERT)" in one_line(result.stderr)


# ---- usage errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["metrics", "web", "--since", "5x"],
        ["nodes", "metrics", "node-a", "--since", "tomorrow"],
        ["nodes", "metrics", "node-a", "--since", "0s"],
        ["nodes", "list", "--status", "sleeping"],
        ["agents", "list", "--status", "sleeping"],
        ["nodes", "list", "--label", "novalue"],
        ["nodes", "list", "-o", "yaml"],
        ["nodes", "lst"],
        ["agent", "restart", "a", "b", "c"],
        ["agent", "restart", "node-a", "web", "--all"],
        ["agent", "restart", "web", "--all", "--daemon", "127.0.0.1:1"],
        ["agent", "restart", "node-a", "web", "--daemon", "nohost:notaport"],
    ],
)
def test_usage_errors_exit_2_with_one_line(certs: Path, argv: list[str]) -> None:
    result = runner.invoke(app, argv, env=admin_env(certs, FLEET_MANAGER="127.0.0.1:1"))
    assert result.exit_code == ExitCode.USAGE, result.output
    one_line(result.stderr)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["agent", "restart"],
            "fleetctl: missing AGENT: fleetctl agent restart [NODE] AGENT [OPTIONS] "
            "(see 'fleetctl agent restart --help')",
        ),
        (["agent", "stop"], "fleetctl: missing AGENT: fleetctl agent stop [NODE] AGENT"),
        (["agent", "logs"], "fleetctl: missing AGENT: fleetctl agent logs [NODE] AGENT"),
        (["metrics"], "fleetctl: missing AGENT: fleetctl metrics [NODE] AGENT"),
        (
            ["agent", "config", "push", "node-a"],
            "fleetctl: missing AGENT and FILE: fleetctl agent config push NODE AGENT FILE",
        ),
        (
            ["agent", "config", "push"],
            "fleetctl: missing NODE, AGENT and FILE: fleetctl agent config push NODE AGENT FILE",
        ),
        (["nodes", "show"], "fleetctl: missing NODE: fleetctl nodes show NODE [OPTIONS]"),
        (["specs", "history"], "fleetctl: missing NAME: fleetctl specs history NAME"),
        (["apply"], "fleetctl: missing option --file FILE (see 'fleetctl apply --help')"),
    ],
)
def test_command_without_arguments_says_what_is_missing(argv: list[str], line: str) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == ExitCode.USAGE
    assert one_line(result.stderr).startswith(line)
    assert result.stdout == ""


def test_a_group_without_a_command_still_shows_its_commands() -> None:
    result = runner.invoke(app, ["agent"])
    assert result.exit_code == ExitCode.USAGE
    assert "Commands:" in result.stderr and "restart" in result.stderr


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["nodes", "list", "-o", "yaml"],
            "fleetctl: Invalid value for '-o' / '--output': 'yaml' is not one of 'table', "
            "'wide', 'json'. (see 'fleetctl nodes list --help')",
        ),
        (["version", "-o", "yaml"], "'yaml' is not one of 'table', 'wide', 'json'"),
        (["config", "show", "-o", "yaml"], "'yaml' is not one of 'table', 'wide', 'json'"),
        (["agent", "logs", "web", "--stream", "stdin"], "'stdin' is not one of 'stderr'"),
    ],
)
def test_a_bad_choice_says_the_choices_plainly(argv: list[str], line: str) -> None:
    result = runner.invoke(app, argv)
    assert result.exit_code == ExitCode.USAGE
    message = one_line(result.stderr)
    assert line in message and "Value error" not in message


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o default -F _fleetctl_completion fleetctl"),
        ("zsh", "#compdef fleetctl"),
        ("fish", "complete --command fleetctl"),
        ("pwsh", "Register-ArgumentCompleter -Native -CommandName fleetctl"),
    ],
)
def test_show_completion_prints_the_named_shells_script(shell: str, marker: str) -> None:
    # A real process: the bash that runs the tests must not decide which script it gets.
    for argv in (["--show-completion", shell], [f"--show-completion={shell}"]):
        proc = run_cli([console_script("fleetctl"), *argv])
        assert proc.returncode == 0, proc.stderr
        protocol = "powershell" if shell == "pwsh" else shell
        assert marker in proc.stdout, proc.stdout
        assert {f"complete_{protocol}"} == set(re.findall(r"complete_[a-z]+", proc.stdout))


def test_show_completion_of_an_unknown_shell_is_a_usage_error() -> None:
    result = runner.invoke(app, ["--show-completion", "tcsh"])
    assert result.exit_code == ExitCode.USAGE
    assert one_line(result.stderr) == (
        "fleetctl: --show-completion tcsh: not a shell fleetctl completes: use bash, zsh, "
        "fish, powershell or pwsh"
    )


def test_install_completion_writes_the_named_shells_script(tmp_path: Path) -> None:
    proc = run_cli(
        [console_script("fleetctl"), "--install-completion", "zsh"], env={"HOME": str(tmp_path)}
    )
    assert proc.returncode == 0, proc.stderr
    assert "zsh completion installed in" in proc.stdout
    assert (tmp_path / ".zfunc" / "_fleetctl").read_text().startswith("#compdef fleetctl")


def test_bad_duration_message_shows_examples(certs: Path) -> None:
    result = runner.invoke(app, ["metrics", "web", "--since", "5x"], env=admin_env(certs))
    assert one_line(result.stderr) == (
        "fleetctl: --since: invalid duration '5x': use e.g. 30s, 5m, 1h, 2d"
    )


def test_config_push_rejects_a_non_object_file(certs: Path, tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text("[1, 2]")
    result = runner.invoke(app, ["agent", "config", "push", "n", "a", str(f)], env=admin_env(certs))
    assert result.exit_code == ExitCode.USAGE
    assert "must be a JSON object" in one_line(result.stderr)


# ---- unreachable and refused ----------------------------------------------------------------


def test_unreachable_manager_is_one_line_exit_5(certs: Path) -> None:
    port = free_port()
    result = runner.invoke(
        app, ["nodes", "list", "--manager", f"127.0.0.1:{port}"], env=admin_env(certs)
    )
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert one_line(result.stderr) == (
        f"fleetctl: cannot reach manager at 127.0.0.1:{port} (connection refused) — "
        "is fleet-manager running? check --manager"
    )


def test_unreachable_daemon_names_daemon_and_flag(certs: Path) -> None:
    port = free_port()
    result = runner.invoke(
        app, ["agents", "list", "--daemon", f"127.0.0.1:{port}"], env=admin_env(certs)
    )
    assert result.exit_code == ExitCode.UNAVAILABLE
    line = one_line(result.stderr)
    assert f"cannot reach daemon at 127.0.0.1:{port}" in line and "check --daemon" in line


def test_real_console_script_unreachable_no_traceback(certs: Path) -> None:
    port = free_port()
    proc = run_cli(
        [console_script("fleetctl"), "nodes", "list", "--manager", f"127.0.0.1:{port}"],
        env=admin_env(certs),
    )
    assert proc.returncode == ExitCode.UNAVAILABLE
    assert proc.stdout == ""
    assert "cannot reach manager" in one_line(proc.stderr)


def test_debug_shows_the_traceback(certs: Path) -> None:
    port = free_port()
    proc = run_cli(
        [console_script("fleetctl"), "--debug", "nodes", "list", "--manager", f"127.0.0.1:{port}"],
        env=admin_env(certs),
    )
    assert proc.returncode == ExitCode.UNAVAILABLE
    assert "Traceback" in proc.stderr and "ConnectionRefusedError" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("fleetctl: cannot reach manager")


@contextmanager
def tls_listener(certs: Path, role: str) -> Iterator[int]:
    """A real grpclib AdminService listener (every method UNIMPLEMENTED but ListNodes,
    which only admin certificates may call) with ``role``'s certificate, on its own thread."""
    from grpclib.server import Server

    from common.rpc import GuardedService, Transport
    from common.tls import TLSFiles, server_context
    from schema import admin_pb

    port = free_port()
    files = TLSFiles(certs / f"{role}.crt", certs / f"{role}.key", certs / "ca.crt")
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: list[Server] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = Server(
            [
                GuardedService(
                    admin_pb.AdminServiceBase(),
                    policy={"ListNodes": {"admin"}, "GetNode": {"admin"}},
                    transport=Transport.TLS,
                )
            ]
        )
        holder.append(server)
        loop.run_until_complete(server.start("127.0.0.1", port, ssl=server_context(files)))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield port
    finally:

        async def stop() -> None:
            holder[0].close()
            await holder[0].wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_certificate_from_another_ca_is_refused(certs: Path, other_ca_certs: Path) -> None:
    with tls_listener(certs, "manager") as port:
        env = admin_env(
            certs,
            FLEET_CERT=str(other_ca_certs / "admin.crt"),
            FLEET_KEY=str(other_ca_certs / "admin.key"),
        )
        result = runner.invoke(app, ["nodes", "list", "--manager", f"127.0.0.1:{port}"], env=env)
    assert result.exit_code == ExitCode.PERMISSION_DENIED
    line = one_line(result.stderr)
    assert f"manager at 127.0.0.1:{port} refused our certificate" in line
    assert str(other_ca_certs / "admin.crt") in line and "check --cert" in line


def test_server_from_another_ca_is_not_trusted(certs: Path, other_ca_certs: Path) -> None:
    with tls_listener(certs, "manager") as port:
        result = runner.invoke(
            app,
            ["nodes", "list", "--manager", f"127.0.0.1:{port}"],
            env=admin_env(other_ca_certs),
        )
    assert result.exit_code == ExitCode.PERMISSION_DENIED
    line = one_line(result.stderr)
    assert "has a certificate we do not trust" in line and "check --ca" in line


def test_node_certificate_is_permission_denied(certs: Path) -> None:
    with tls_listener(certs, "manager") as port:
        env = admin_env(
            certs, FLEET_CERT=str(certs / "node-a.crt"), FLEET_KEY=str(certs / "node-a.key")
        )
        result = runner.invoke(app, ["nodes", "list", "--manager", f"127.0.0.1:{port}"], env=env)
    assert result.exit_code == ExitCode.PERMISSION_DENIED
    line = one_line(result.stderr)
    assert "permission denied" in line and "admin certificate" in line


def test_a_daemon_is_not_a_manager(certs: Path) -> None:
    with tls_listener(certs, "node-a") as port:
        result = runner.invoke(
            app, ["nodes", "list", "--manager", f"127.0.0.1:{port}"], env=admin_env(certs)
        )
    assert result.exit_code == ExitCode.PERMISSION_DENIED
    line = one_line(result.stderr)
    assert "server identity is node/node-a, expected manager/*" in line
    assert "did you mean --daemon?" in line


def test_mismatched_key_is_a_usage_error(certs: Path) -> None:
    with tls_listener(certs, "manager") as port:
        env = admin_env(certs, FLEET_KEY=str(certs / "node-a.key"))
        result = runner.invoke(app, ["nodes", "list", "--manager", f"127.0.0.1:{port}"], env=env)
    assert result.exit_code == ExitCode.USAGE
    assert "do the certificate and key belong together?" in one_line(result.stderr)


def test_a_ca_file_that_is_not_a_certificate_names_ca_not_the_key(
    certs: Path, tmp_path: Path
) -> None:
    not_a_ca = tmp_path / "passwd"
    not_a_ca.write_text("root:x:0:0:root:/root:/bin/bash\n")
    env = admin_env(certs, FLEET_CA=str(not_a_ca))
    result = runner.invoke(app, ["nodes", "list", "--manager", "127.0.0.1:1"], env=env)
    assert result.exit_code == ExitCode.USAGE
    line = one_line(result.stderr)
    assert f"cannot load the CA certificate {not_a_ca}" in line and "check --ca" in line, line
    assert "belong together" not in line, line


def test_unimplemented_rpc_says_so(certs: Path) -> None:
    with tls_listener(certs, "manager") as port:
        result = runner.invoke(
            app, ["nodes", "show", "node-a", "--manager", f"127.0.0.1:{port}"], env=admin_env(certs)
        )
    assert result.exit_code == ExitCode.FAILED
    assert "does not support this yet" in one_line(result.stderr)


def test_plaintext_client_against_tls_listener(certs: Path) -> None:
    with tls_listener(certs, "manager") as port:
        result = runner.invoke(
            app, ["nodes", "list", "--insecure", "--manager", f"127.0.0.1:{port}"]
        )
    assert result.exit_code == ExitCode.UNAVAILABLE
    assert "closed the connection" in one_line(result.stderr)


@contextmanager
def silent_listener() -> Iterator[int]:
    """A real plaintext grpclib server, on its own thread, serving AdminService and
    DaemonService with handlers that never answer: only a deadline ends a call."""
    from google.protobuf.message_factory import GetMessageClass
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    from schema import admin_pb2, daemon_pb2

    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    release = asyncio.Event()
    holder: list[Server] = []

    class Silent:
        def __init__(self, service: Any) -> None:
            self.service = service

        def __mapping__(self) -> dict[str, Handler]:
            async def never_answer(stream: Any) -> None:
                await release.wait()

            return {
                f"/{self.service.full_name}/{m.name}": Handler(
                    never_answer,
                    Cardinality.UNARY_UNARY,
                    GetMessageClass(m.input_type),
                    GetMessageClass(m.output_type),
                )
                for m in self.service.methods
            }

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = Server(
            [
                Silent(admin_pb2.DESCRIPTOR.services_by_name["AdminService"]),
                Silent(daemon_pb2.DESCRIPTOR.services_by_name["DaemonService"]),
            ]
        )
        holder.append(server)
        loop.run_until_complete(server.start("127.0.0.1", port))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield port
    finally:

        async def stop() -> None:
            release.set()
            holder[0].close()
            await holder[0].wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_every_rpc_command_gives_up_at_its_timeout(tmp_path: Path) -> None:
    """Each command that calls the Manager or a Daemon puts --timeout on every call: against
    a server that never answers it exits 5 with one line instead of hanging."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = tmp_path / "cfg.json"
    cfg.write_text("{}")
    commands = [
        ["nodes", "list"],
        ["nodes", "show", "node-a"],
        ["nodes", "metrics", "node-a"],
        ["nodes", "remove", "node-a"],
        ["agents", "list"],
        ["agent", "restart", "node-a", "web"],
        ["agent", "restart", "web", "--all"],
        ["metrics", "web", "--node", "node-a"],
        ["agent", "config", "get", "node-a", "web"],
        ["agent", "config", "push", "node-a", "web", str(cfg)],
        ["agents", "list", "--daemon", "{daemon}"],
        ["agent", "restart", "web", "--daemon", "{daemon}"],
        ["metrics", "web", "--daemon", "{daemon}"],
        ["agent", "config", "get", "web", "--daemon", "{daemon}"],
        ["agent", "config", "push", "node-a", "web", str(cfg), "--daemon", "{daemon}"],
    ]
    with silent_listener() as port:
        address = f"127.0.0.1:{port}"

        def run(argv: list[str]) -> tuple[list[str], Any]:
            argv = [a.replace("{daemon}", address) for a in argv]
            base = [console_script("fleetctl"), "--insecure", "--timeout", "1s"]
            return argv, run_cli([*base, "--manager", address, *argv], timeout=30)

        with ThreadPoolExecutor(max_workers=len(commands)) as pool:
            results = list(pool.map(run, commands))
    for argv, proc in results:
        assert proc.returncode == ExitCode.UNAVAILABLE, (argv, proc.stderr)
        kind = "daemon" if "--daemon" in argv else "manager"
        line = one_line(proc.stderr)
        assert f"{kind} at {address} did not answer within 1s" in line, (argv, line)


# ---- did you mean ---------------------------------------------------------------------------

NODES_ABC = ["node-a", "node-b", "node-c"]


@pytest.mark.parametrize(
    ("typed", "known", "meant"),
    [
        ("nod-a", NODES_ABC, ["node-a"]),  # a letter missing
        ("node-cc", NODES_ABC, ["node-c"]),  # one too many
        ("NODE-B", NODES_ABC, ["node-b"]),  # case
        ("web-01", NODES_ABC, []),  # nothing like it
        ("web-01", ["web-01.example.net", "web-02.example.net"], ["web-01.example.net"]),
        ("web-01.example.net", ["web-01", "web-02"], ["web-01"]),
        ("node", [*NODES_ABC, "node-d"], ["node-a", "node-b", "node-c"]),  # at most three
        # Short ids, where a similarity ratio says little: one edit away is close.
        ("v", ["vm", "node-a"], ["vm"]),
        ("mv", ["vm", "db"], ["vm"]),
        ("vn", ["vm"], ["vm"]),
        ("x", ["vm"], []),
        ("wbe", ["web", "cfg"], ["web"]),  # two letters swapped
        ("wrker-1", ["web-1", "worker-1"], ["worker-1"]),
        ("frontend-wst-1", ["frontend-east-1", "frontend-west-1"], ["frontend-west-1"]),
        ("frontnd-west-2", ["frontend-east-1", "frontend-west-1"], ["frontend-west-1"]),
    ],
)
def test_close_ids(typed: str, known: list[str], meant: list[str]) -> None:
    from fleetctl.suggest import close_ids

    assert close_ids(typed, known) == meant


def test_did_you_mean_lists_the_ids() -> None:
    from fleetctl.suggest import did_you_mean

    assert did_you_mean([]) == ""
    assert did_you_mean(["vm"]) == " — did you mean vm?"
    assert did_you_mean(["a", "b", "c"]) == " — did you mean a, b or c?"


# ---- rendering ------------------------------------------------------------------------------


def test_relative_times_sizes_and_iso() -> None:
    now = 1_800_000_000.0
    assert render.ago(now - 12, now) == "12s ago"
    assert render.ago(now - 300, now) == "5m ago"
    assert render.ago(now - 3 * 3600 - 20 * 60, now) == "3h20m ago"
    assert render.ago(now - 2 * 86400, now) == "2d ago"
    assert render.ago(0, now) == "never"
    assert render.human_size(512) == "512 B"
    assert render.human_size(12.5 * 1024 * 1024) == "12.5 MiB"
    assert render.human_size(3 * 1024**3) == "3.0 GiB"
    assert render.iso(0) is None
    assert render.iso(1_800_000_000) == "2027-01-15T08:00:00Z"


def test_sparkline_spans_the_range_and_resamples() -> None:
    assert render.sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert render.sparkline([5, 5, 5], unicode=False) == "___"
    assert len(render.sparkline(list(range(1000)), width=20)) == 20
    assert render.sparkline([]) == ""
    assert set(render.sparkline([1, 9, 3], unicode=False)) <= set(render.SPARK_ASCII)


def test_plain_table_is_aligned_and_parseable() -> None:
    import io

    buf = io.StringIO()
    out = render.Output(rich=False, stream=buf)
    out.table(
        ["NODE", "STATUS", "PID"],
        [["a", ("online", "green"), "7"], ["bb", "x", "1234"]],
        right=["PID"],
    )
    assert buf.getvalue().splitlines() == [
        "NODE  STATUS   PID",
        "a     online     7",
        "bb    x       1234",
    ]


def test_big_tables_on_a_terminal_are_plain_columns_in_colour() -> None:
    """Past RICH_TABLE_MAX_ROWS a terminal gets the piped layout with coloured cells
    (Rich's table layout took 11 s for 10,000 nodes)."""
    import io
    import re

    from rich.console import Console

    rows: list[list[render.Cell]] = [
        [f"n{i}", ("online" if i % 2 else "offline", "green"), str(i)] for i in range(300)
    ]
    piped = io.StringIO()
    render.Output(rich=False, stream=piped).table(["NODE", "STATUS", "N"], rows, right=["N"])
    tty = io.StringIO()
    out = render.Output(rich=True, stream=tty)
    out._console = Console(file=tty, force_terminal=True, color_system="standard")
    out.table(["NODE", "STATUS", "N"], rows, right=["N"])
    coloured = tty.getvalue()
    assert "\x1b[32monline\x1b[0m" in coloured  # green cells
    assert "\x1b[1mNODE\x1b[0m" in coloured  # bold header
    # Without the colour codes it is exactly the piped output.
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == piped.getvalue()
    # A short table on a terminal is still Rich's (a rule under the header).
    small = io.StringIO()
    out = render.Output(rich=True, stream=small)
    out._console = Console(file=small, force_terminal=True, color_system="standard")
    out.table(["NODE", "STATUS", "N"], rows[:3], right=["N"])
    assert "─" in small.getvalue()


def test_use_rich_only_on_terminals(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert render.use_rich(Tty(), {}) is True
    assert render.use_rich(Tty(), {"NO_COLOR": "1"}) is False
    assert render.use_rich(Tty(), {"TERM": "dumb"}) is False
    assert render.use_rich(io.StringIO(), {}) is False
    assert render.use_rich(io.StringIO(), {"FORCE_COLOR": "1"}) is True


def test_running_a_command_never_formats_its_reply() -> None:
    """A command's reply is not repr()'d on the way out (asyncio.run formats the main
    task's result when it restores the SIGINT handler; for 10,000 nodes that was 80 ms)."""
    from fleetctl.commands._shared import run

    formatted: list[str] = []

    class Reply:
        def __repr__(self) -> str:
            formatted.append("repr")
            return "Reply()"

    async def call() -> Reply:
        return Reply()

    assert isinstance(run(call()), Reply)
    assert formatted == []


# ---- start-up ------------------------------------------------------------------------------


def test_help_is_fast_and_imports_no_grpc() -> None:
    """``fleetctl --help`` must not pay for grpclib, betterproto, the schema or Rich."""
    import subprocess
    import sys

    code = (
        "import sys; from fleetctl.app import app\n"
        "heavy = [m for m in ('grpclib', 'betterproto', 'schema', 'rich.console', 'rich.table')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    start = time.perf_counter()
    proc = run_cli([console_script("fleetctl"), "--help"])
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and "nodes" in proc.stdout
    assert elapsed < 2.0  # generous on a loaded CI box; bench/fleetctl_startup.py measures
