#!/usr/bin/env python3
"""The two commands a developer needs, from nothing but Python 3.11+.

    python3 tools/dev.py run    # set up .venv, make dev certificates, run Manager + Daemon
    python3 tools/dev.py test   # set up .venv, run the whole test suite (args go to pytest)

Both create ``.venv`` in the repository on first use and reinstall only when
``pyproject.toml`` changes. ``run`` keeps everything under ``.fleet/`` (``--work-dir``):
certificates, configs, the Manager's SQLite database, the Daemon's state and agent logs.
Ctrl-C (or SIGTERM, or SIGHUP when the terminal goes) stops the Daemon, then the
Manager; a second one kills whatever is still running. Nothing printed can stop that:
when whoever reads our output is gone (``| head``, a ``| tee`` that Ctrl-C killed too),
the rest of the output is dropped and the shutdown goes on.
"""

from __future__ import annotations

import argparse
import contextlib
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
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".fleet-installed"
DEFAULT_WORK = ROOT / ".fleet"
# How long each child gets to stop after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 20.0

if sys.version_info < (3, 11):  # noqa: UP036 - this script may run on any python3
    sys.exit(f"Fleet needs Python 3.11 or newer (this is {sys.version.split()[0]})")


def say(text: str = "", *, err: bool = False) -> None:
    """Print a line now; never fail because nobody reads it any more.

    A closed pipe (EPIPE: the ``| head`` exited, or the ``| tee`` died with the Ctrl-C
    that also reached us) would otherwise raise BrokenPipeError from wherever we happen
    to print, e.g. in the middle of stopping the children. The stream is pointed at
    /dev/null instead, so later lines, and the interpreter's flush at exit, go nowhere
    quietly.
    """
    stream = sys.stderr if err else sys.stdout
    try:
        stream.write(text + "\n")
        stream.flush()
    except (OSError, ValueError):  # BrokenPipeError, EIO from a gone terminal; closed
        _drop(stream)


def _drop(stream: TextIO) -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)


def shown(path: Path) -> str:
    """``path`` as the user knows it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP counted instead of raised (STYLE: two stages).

    The first asks for a graceful stop, a second for killing what is left. The handler
    only counts: an exception thrown from it (KeyboardInterrupt) could land in the
    middle of stopping the children and leave one running.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._note)
        # Python ignores SIGPIPE already (writes fail with EPIPE, which say() drops);
        # said here because dying of it mid-shutdown is what this class prevents.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, frame: object) -> None:
        self.count += 1

    @property
    def stop(self) -> bool:
        return self.count >= 1

    @property
    def force(self) -> bool:
        return self.count >= 2


def ensure_venv() -> None:
    """Create .venv and install Fleet with its dev extras, once per pyproject change."""
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == want:
        return
    if not (BIN / "python").exists():
        say(f"creating virtual environment in {VENV.relative_to(ROOT)} ...")
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    say("installing Fleet and its dependencies (first run takes a minute) ...")
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


def write_configs(
    node: str, args: argparse.Namespace, work: Path, issuing: str
) -> tuple[Path, Path]:
    certs = work / "certs"
    manager_toml = work / "manager.toml"
    manager_toml.write_text(
        f"""# Written by tools/dev.py run: a Manager on embedded SQLite for local use.
[manager]
data_dir = "{work / "manager"}"

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
url = "sqlite://{work / "manager" / "fleet.db"}"

[enroll]                        # hosts join with `fleetctl tokens create` (docs/security.md)
listen = "127.0.0.1:{args.enroll_port}"
ca_cert = "{certs / f"{issuing}.crt"}"
ca_key = "{certs / f"{issuing}.key"}"
"""
    )
    agent = ROOT / "examples" / "sample_agent.py"
    daemon_toml = work / "daemon.toml"
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
state_dir = "{work / "daemon"}"

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
    write_sample_spec(agent, work)
    return manager_toml, daemon_toml


def write_sample_spec(agent: Path, work: Path) -> Path:
    """A central spec for the quick start: one more sample agent on every role=demo node."""
    specs = work / "specs"
    specs.mkdir(exist_ok=True)
    path = specs / "hello.toml"
    path.write_text(
        f"""# Written by tools/dev.py run: a central spec (docs/specs.md). Apply it with
#   fleetctl apply -f {shown(path)}
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


def wait_for_line(
    log: Path, needle: str, proc: subprocess.Popen[bytes], timeout: float, signals: StopSignals
) -> bool:
    """Whether ``needle`` shows up in ``log`` before ``proc`` exits, a stop is asked for
    or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not signals.stop:
        if needle in log.read_text(errors="replace"):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def stop_children(
    procs: list[tuple[str, subprocess.Popen[bytes]]],
    signals: StopSignals,
    grace: float = STOP_GRACE_SECONDS,
) -> None:
    """Stop the children, last started first (the Daemon still reports to the Manager).

    Each gets SIGTERM, then ``grace`` seconds, then SIGKILL; after a second Ctrl-C the
    ones left are killed at once. Whatever goes wrong on the way (an exception, even
    one we did not think of), every child is killed and reaped before this returns.
    """
    try:
        for name, proc in reversed(procs):
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
                deadline = time.monotonic() + grace
                while proc.poll() is None:
                    if signals.force or time.monotonic() > deadline:
                        _signal_group(proc, signal.SIGKILL)
                        proc.wait()
                        break
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(0.1)
            killed = " (killed)" if proc.returncode == -signal.SIGKILL else ""
            say(f"  {name} stopped (exit {proc.returncode}){killed}")
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    """Signal the child's process group (it leads one: ``start_new_session``).

    Called only while ``proc`` is not reaped, so its pid cannot belong to anybody else.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def cmd_run(args: argparse.Namespace) -> int:
    ensure_venv()
    for port in (args.manager_port, args.daemon_port, args.http_port):
        if not port_free(port):
            say(
                f"port {port} on 127.0.0.1 is in use; pick others with --manager-port/"
                "--daemon-port/--http-port",
                err=True,
            )
            return 1
    work: Path = args.work_dir.resolve()
    with StopSignals() as signals:
        procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        try:
            code = run_fleet(args, work, signals, procs)
        finally:
            stop_children(procs, signals)
    return 130 if signals.force else code


def run_fleet(
    args: argparse.Namespace,
    work: Path,
    signals: StopSignals,
    procs: list[tuple[str, subprocess.Popen[bytes]]],
) -> int:
    """Start the Manager and the Daemon (into ``procs``) and wait for a stop signal."""
    node = node_name()
    work.mkdir(parents=True, exist_ok=True)
    certs = work / "certs"
    certgen = subprocess.run(
        [
            str(BIN / "python"),
            str(ROOT / "tools" / "certgen.py"),
            "dev",
            str(certs),
            "--node",
            node,
        ],
        capture_output=True,
        text=True,
    )
    if signals.stop:  # Ctrl-C reached certgen too
        return 0
    for line in certgen.stdout.splitlines():
        say(line)
    if certgen.returncode != 0:
        say(certgen.stderr.rstrip(), err=True)
        return 1
    issuing = issuing_ca(certs)
    manager_toml, daemon_toml = write_configs(node, args, work, issuing)
    logs = work / "logs"
    logs.mkdir(exist_ok=True)

    def start(name: str, argv: list[str], ready: str) -> bool:
        log = logs / f"{name}.log"
        log.write_bytes(b"")
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,  # Ctrl-C reaches us only: we stop it in order
            )
        procs.append((name, proc))
        if not wait_for_line(log, ready, proc, 120, signals):
            if not signals.stop:
                say(f"{name} did not start; its log ({log}):\n{log.read_text()[-3000:]}", err=True)
            return False
        say(f"  {name:<8} pid {proc.pid:<7} log {shown(log)}")
        return True

    say("starting Fleet:")
    ok = start(
        "manager", [str(BIN / "fleet-manager"), "--config", str(manager_toml)], "manager ready"
    ) and start("daemon", [str(BIN / "fleet-daemon"), "--config", str(daemon_toml)], "daemon ready")
    if not ok:
        return 0 if signals.stop else 1
    env = {
        "FLEET_MANAGER": f"127.0.0.1:{args.manager_port}",
        "FLEET_CA": str(certs / "ca.crt"),
        "FLEET_CERT": str(certs / "admin.crt"),
        "FLEET_KEY": str(certs / "admin.key"),
    }
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    fleetctl = BIN / "fleetctl"
    spec = shown(work / "specs" / "hello.toml")
    say(
        f"""
Fleet is running: Manager on 127.0.0.1:{args.manager_port} (SQLite in {shown(work / "manager")}),
Daemon '{node}' on 127.0.0.1:{args.daemon_port} with agents web-1 and worker-1.
HTTP: http://127.0.0.1:{args.http_port}/healthz  /readyz  /metrics

In another shell, try:

  export {exports}
  {fleetctl} nodes list
  {fleetctl} nodes show {node}
  {fleetctl} agents list
  {fleetctl} agent restart {node} web-1
  {fleetctl} metrics web-1 --since 5m
  {fleetctl} apply -f {spec} --dry-run    # what a central spec would change
  {fleetctl} apply -f {spec}              # sign it, roll it out, watch
  {fleetctl} specs status hello
  {fleetctl} daemon reload {node}          # after editing {shown(daemon_toml)} (or kill -HUP)
  {fleetctl} tokens create --ttl 1h        # prints the `fleet-daemon join` command for a new host

Ctrl-C stops both."""
    )
    while not signals.stop:
        dead = [name for name, proc in procs if proc.poll() is not None]
        if dead:
            say(f"{', '.join(dead)} exited unexpectedly; see {shown(logs)}/", err=True)
            return 1
        time.sleep(0.2)
    say("\nstopping ... (Ctrl-C again to kill them now)")
    return 0


def issuing_ca(certs: Path) -> str:
    """The name of the CA the dev Manager signs joining nodes with: an intermediate
    ``issuing`` (made once), or the root itself when the root predates intermediates."""
    if (certs / "issuing.crt").exists() and (certs / "issuing.key").exists():
        return "issuing"
    made = subprocess.run(
        [
            *(str(BIN / "python"), str(ROOT / "tools" / "certgen.py")),
            *("intermediate", "issuing", "--dir", str(certs)),
        ],
        capture_output=True,
        text=True,
    )
    if made.returncode == 0:
        say(f"wrote {shown(certs / 'issuing.crt')} (the Manager signs joining nodes with it)")
        return "issuing"
    say(f"the Manager signs joining nodes with the root CA: {made.stderr.strip()}")
    return "ca"


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
    run.add_argument("--enroll-port", type=int, default=50053)
    run.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK,
        metavar="DIR",
        help="where certificates, configs, the database, state and logs go "
        f"(default: {shown(DEFAULT_WORK)})",
    )
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
