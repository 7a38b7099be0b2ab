#!/usr/bin/env python3
"""The two commands a developer needs, from nothing but Python 3.11+.

    python3 tools/dev.py run    # set up .venv, make dev certificates, run Manager + Daemon
    python3 tools/dev.py test   # set up .venv, run the whole test suite (args go to pytest)

Both create ``.venv`` in the repository on first use and reinstall only when
``pyproject.toml`` changes. ``run`` keeps everything under ``.fleet/``: certificates,
configs, the Manager's SQLite database, the Daemon's state and agent logs. Ctrl-C stops
the Daemon, then the Manager.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".fleet-installed"
WORK = ROOT / ".fleet"

if sys.version_info < (3, 11):  # noqa: UP036 - this script may run on any python3
    sys.exit(f"Fleet needs Python 3.11 or newer (this is {sys.version.split()[0]})")


def ensure_venv() -> None:
    """Create .venv and install Fleet with its dev extras, once per pyproject change."""
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == want:
        return
    if not (BIN / "python").exists():
        print(f"creating virtual environment in {VENV.relative_to(ROOT)} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    print("installing Fleet and its dependencies (first run takes a minute) ...", flush=True)
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "install", "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(want)


def node_name() -> str:
    """This host's name, made into a valid node id."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).strip(".-") or "local"
    return name[:63]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def write_configs(node: str, args: argparse.Namespace) -> tuple[Path, Path]:
    certs = WORK / "certs"
    manager_toml = WORK / "manager.toml"
    manager_toml.write_text(
        f"""# Written by tools/dev.py run: a Manager on embedded SQLite for local use.
[manager]
data_dir = "{WORK / "manager"}"

[grpc]
listen = "127.0.0.1:{args.manager_port}"

[grpc.tls]
enabled = true
cert_file = "{certs / "manager.crt"}"
key_file = "{certs / "manager.key"}"
ca_file = "{certs / "ca.crt"}"

[server]
listen = "127.0.0.1:{args.http_port}"

[database]
url = "sqlite://{WORK / "manager" / "fleet.db"}"
"""
    )
    agent = ROOT / "examples" / "sample_agent.py"
    daemon_toml = WORK / "daemon.toml"
    agents = "".join(
        f"""
[[agents]]
id = "{agent_id}"
type = "sample"
version = "1.0.0"
command = ["{BIN / "python"}", "{agent}"]
autostart = true
autorestart = "always"

[agents.config]
greeting = "{greeting}"
work_interval = {interval}
"""
        for agent_id, greeting, interval in (("web-1", "hello", 2), ("worker-1", "busy", 5))
    )
    # Central specs may not run agents as root unless the host allows it; this Daemon runs
    # them as its own user, which is root when `run` is started as root.
    specs_policy = (
        "\n[specs]\n# This Daemon runs as root: let central specs run agents as root too.\n"
        "allow_root = true\n"
        if os.geteuid() == 0
        else ""
    )
    daemon_toml.write_text(
        f"""# Written by tools/dev.py run: a Daemon supervising two sample agents.
node_id = "{node}"
state_dir = "{WORK / "daemon"}"

[labels]
env = "dev"
role = "demo"

[manager]
address = "127.0.0.1:{args.manager_port}"
heartbeat_interval = 10

[manager.tls]
cert_file = "{certs / f"{node}.crt"}"
key_file = "{certs / f"{node}.key"}"
ca_file = "{certs / "ca.crt"}"

[grpc]
listen = "127.0.0.1:{args.daemon_port}"
{specs_policy}{agents}"""
    )
    write_sample_spec(agent)
    return manager_toml, daemon_toml


def write_sample_spec(agent: Path) -> Path:
    """A central spec for the quick start: one more sample agent on every role=demo node."""
    specs = WORK / "specs"
    specs.mkdir(exist_ok=True)
    path = specs / "hello.toml"
    path.write_text(
        f"""# Written by tools/dev.py run: a central spec (docs/specs.md). Apply it with
#   fleetctl apply -f {path.relative_to(ROOT)}
# then change `greeting` or the command and apply again: it rolls out.
name = "hello"

[target]
labels = {{ role = "demo" }}

[[agents]]
id = "hello-1"
type = "sample"
version = "1.0.0"
command = ["{BIN / "python"}", "{agent}"]
start_seconds = "2s"

[agents.config]
greeting = "hello from a central spec"
work_interval = 3
"""
    )
    return path


def wait_for_line(log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def cmd_run(args: argparse.Namespace) -> int:
    ensure_venv()
    for port in (args.manager_port, args.daemon_port, args.http_port):
        if not port_free(port):
            print(
                f"port {port} on 127.0.0.1 is in use; pick others with --manager-port/"
                "--daemon-port/--http-port",
                file=sys.stderr,
            )
            return 1
    node = node_name()
    WORK.mkdir(exist_ok=True)
    certs = WORK / "certs"
    subprocess.run(
        [
            str(BIN / "python"),
            str(ROOT / "tools" / "certgen.py"),
            "dev",
            str(certs),
            "--node",
            node,
        ],
        check=True,
    )
    manager_toml, daemon_toml = write_configs(node, args)
    logs = WORK / "logs"
    logs.mkdir(exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(name: str, argv: list[str], ready: str) -> bool:
        log = logs / f"{name}.log"
        log.write_bytes(b"")
        out = open(log, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        procs.append((name, proc))
        if not wait_for_line(log, ready, proc, 120):
            print(
                f"{name} did not start; its log ({log}):\n{log.read_text()[-3000:]}",
                file=sys.stderr,
            )
            return False
        print(f"  {name:<8} pid {proc.pid:<7} log {log.relative_to(ROOT)}")
        return True

    def stop_all() -> None:
        for name, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            print(f"  {name} stopped (exit {proc.returncode})")

    print("starting Fleet:")
    ok = start(
        "manager", [str(BIN / "fleet-manager"), "--config", str(manager_toml)], "manager ready"
    ) and start("daemon", [str(BIN / "fleet-daemon"), "--config", str(daemon_toml)], "daemon ready")
    if not ok:
        stop_all()
        return 1
    env = {
        "FLEET_MANAGER": f"127.0.0.1:{args.manager_port}",
        "FLEET_CA": str(certs / "ca.crt"),
        "FLEET_CERT": str(certs / "admin.crt"),
        "FLEET_KEY": str(certs / "admin.key"),
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    fleetctl = BIN / "fleetctl"
    print(
        f"""
Fleet is running: Manager on 127.0.0.1:{args.manager_port} (SQLite in .fleet/manager),
Daemon '{node}' on 127.0.0.1:{args.daemon_port} with agents web-1 and worker-1.
HTTP: http://127.0.0.1:{args.http_port}/healthz  /readyz  /metrics

In another shell, try:

  export {exports}
  {fleetctl} nodes list
  {fleetctl} nodes show {node}
  {fleetctl} agents list
  {fleetctl} agent restart {node} web-1
  {fleetctl} metrics web-1 --since 5m
  {fleetctl} apply -f .fleet/specs/hello.toml --dry-run    # what a central spec would change
  {fleetctl} apply -f .fleet/specs/hello.toml              # sign it, roll it out, watch
  {fleetctl} specs status hello
  {fleetctl} daemon reload {node}          # after editing .fleet/daemon.toml (or kill -HUP)

Ctrl-C stops both.""",
        flush=True,
    )
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping:
            for _, proc in procs:
                proc.kill()
            sys.exit(130)
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while all(proc.poll() is None for _, proc in procs):
            time.sleep(0.5)
        dead = [name for name, proc in procs if proc.poll() is not None]
        print(f"{', '.join(dead)} exited unexpectedly; see .fleet/logs/", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...")
        return 0
    finally:
        stop_all()


def cmd_test(args: argparse.Namespace) -> int:
    ensure_venv()
    env = dict(os.environ)
    if not env.get("FLEET_TEST_POSTGRES"):
        print(
            "note: FLEET_TEST_POSTGRES is not set, PostgreSQL tests will be skipped "
            "(e.g. FLEET_TEST_POSTGRES=postgres://postgres@127.0.0.1:5432/test)",
            flush=True,
        )
    return subprocess.call(
        [str(BIN / "python"), "-m", "pytest", *args.pytest_args], cwd=ROOT, env=env
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a Manager and a local Daemon with sample agents")
    run.add_argument("--manager-port", type=int, default=50051)
    run.add_argument("--daemon-port", type=int, default=50052)
    run.add_argument("--http-port", type=int, default=8080)
    run.set_defaults(func=cmd_run)
    test = sub.add_parser("test", help="run the whole test suite (extra args go to pytest)")
    test.set_defaults(func=cmd_test)
    args, extra = parser.parse_known_args()
    if args.command != "test" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.pytest_args = extra
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
