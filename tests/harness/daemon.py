"""Start real ``fleet-daemon`` processes for tests, and dial their DaemonService.

    from harness.daemon import start_daemon, daemon_channel

    d = start_daemon(tmp_path, certs, node_id="node-a", manager_port=m.grpc_port,
                     agents=[{"id": "a1", "command": [sys.executable, AGENT]}])
    async with daemon_channel(certs, d.grpc_port, "node-a") as ch: ...
    d.stop()

``start_daemon`` writes a TOML config, starts the Daemon and waits for its ``daemon ready``
line. The Manager does not need to be up (the Daemon keeps retrying).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w
from grpclib.client import Channel

from common.tls import TLSFiles, client_context

from . import REPO, Proc, console_script, free_port, wait_until

AGENTS_DIR = REPO / "tests" / "agents"


def agent_script(name: str) -> str:
    """Path of a test agent script in ``tests/agents`` (``"crasher"`` → ``.../crasher.py``)."""
    return str(AGENTS_DIR / f"{name}.py")


def agent(agent_id: str, script: str, *args: str, **settings: Any) -> dict[str, Any]:
    """An ``[[agents]]`` table running ``tests/agents/<script>.py`` with this Python."""
    return {"id": agent_id, "command": [sys.executable, agent_script(script), *args], **settings}


def to_toml(data: Mapping[str, Any]) -> str:
    """A Daemon config as TOML text (``agents`` become ``[[agents]]``)."""
    return tomli_w.dumps(data)


class DaemonProc(Proc):
    """A running ``fleet-daemon`` with what tests need to reach it."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        node_id: str,
        grpc_port: int,
        state_dir: Path,
        config_path: Path,
        agent_socket: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        super().__init__(argv, log_path=log_path, env=env)
        self.node_id = node_id
        self.grpc_port = grpc_port
        self.address = f"127.0.0.1:{grpc_port}"
        self.state_dir = state_dir
        self.config_path = config_path
        self.agent_socket = agent_socket

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"fleet-daemon exited early:\n{self.output()}")
            return "daemon ready" in self.output()[self._log_offset :]

        try:
            wait_until(ready, timeout=timeout, what="daemon ready")
        except AssertionError:
            raise AssertionError(f"fleet-daemon not ready:\n{self.output()}") from None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the Daemon stops its agents), wait, SIGKILL if needed; exit code."""
        code = super().stop(timeout)
        cleanup_socket_dir(self)
        return code

    def reload_by_signal(self, *, timeout: float = 30.0) -> str:
        """SIGHUP, then wait for the reload's outcome line (``reloaded …`` or
        ``reload refused …``); the log written since the signal."""
        offset = len(self.output())
        self.signal(signal.SIGHUP)

        def outcome() -> str | None:
            text = self.output()[offset:]
            return text if ("reloaded " in text or "reload refused" in text) else None

        return str(wait_until(outcome, timeout=timeout, what="the reload's outcome in the log"))

    def restart(self, *, timeout: float = 30.0) -> DaemonProc:
        """Start a new Daemon process with the same config (after stop() or kill())."""
        return _launch(
            self.argv,
            self.log_path,
            self.node_id,
            self.grpc_port,
            self.state_dir,
            self.config_path,
            self.agent_socket,
            timeout,
        )


def _launch(
    argv: Sequence[str],
    log_path: Path,
    node_id: str,
    grpc_port: int,
    state_dir: Path,
    config_path: Path,
    agent_socket: Path,
    timeout: float,
) -> DaemonProc:
    proc = DaemonProc(
        argv,
        log_path=log_path,
        node_id=node_id,
        grpc_port=grpc_port,
        state_dir=state_dir,
        config_path=config_path,
        agent_socket=agent_socket,
        env={"PYTHONUNBUFFERED": "1"},
    )
    try:
        proc.wait_ready(timeout)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_daemon_without_config(
    tmp_path: Path, certs: Path, *, node_id: str, timeout: float = 30.0
) -> DaemonProc:
    """A Daemon configured by flags alone (no ``--config``), its Manager away."""
    base = tmp_path / f"daemon-{node_id}"
    base.mkdir(parents=True, exist_ok=True)
    grpc_port = free_port()
    agent_socket = short_socket_dir() / "run" / "agent.sock"
    argv = [
        console_script("fleet-daemon"),
        *("--node-id", node_id, "--manager", f"127.0.0.1:{free_port()}"),
        *("--listen", f"127.0.0.1:{grpc_port}", "--state-dir", str(base / "state")),
        *("--agent-socket", str(agent_socket)),
        *("--cert", str(certs / f"{node_id}.crt"), "--key", str(certs / f"{node_id}.key")),
        *("--ca", str(certs / "ca.crt")),
    ]
    return _launch(
        argv,
        base / "daemon.log",
        node_id,
        grpc_port,
        base / "state",
        base / "no-config-file",
        agent_socket,
        timeout,
    )


def short_socket_dir() -> Path:
    """A short private directory for the agent socket (sun_path is 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="fleet-sock-", dir="/tmp"))
    os.chmod(directory, 0o700)
    return directory


def start_daemon(
    tmp_path: Path,
    certs: Path | None,
    *,
    node_id: str,
    manager_port: int,
    agents: Sequence[Mapping[str, Any]] = (),
    heartbeat_interval: float = 1.0,
    metrics_interval: float = 1.0,
    extra_args: Sequence[str] = (),
    insecure: bool = False,
    config: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
    manager_addresses: Sequence[str] = (),
) -> DaemonProc:
    """Write a TOML config under ``tmp_path`` and start ``fleet-daemon`` until ready.

    ``config`` is merged over the generated top-level tables (e.g.
    ``{"history": {"interval": 0.5}}``); ``agents`` become ``[[agents]]``.
    ``manager_addresses`` (several Managers to fail over between) replaces
    ``manager_port``: a TOML list in the file, and the same comma-separated in
    ``--manager``.
    """
    base = tmp_path / f"daemon-{node_id}"
    base.mkdir(parents=True, exist_ok=True)
    state_dir = base / "state"
    grpc_port = free_port()
    sock_dir = short_socket_dir()
    agent_socket = sock_dir / "run" / "agent.sock"
    data: dict[str, Any] = {
        "node_id": node_id,
        "state_dir": str(state_dir),
        "manager": {
            "address": f"127.0.0.1:{manager_port}",
            "timeout": 5.0,
            "heartbeat_interval": heartbeat_interval,
            "reconnect_interval": 2.0,
            "metrics_interval": metrics_interval,
            "sync_interval": max(heartbeat_interval, 1.0),
            "tls": {"enabled": False}
            if insecure or certs is None
            else {
                "enabled": True,
                "cert_file": str(certs / f"{node_id}.crt"),
                "key_file": str(certs / f"{node_id}.key"),
                "ca_file": str(certs / "ca.crt"),
            },
        },
        "grpc": {"listen": f"127.0.0.1:{grpc_port}"},
        "agent_api": {"socket": str(agent_socket)},
        "log": {"level": "info"},
    }
    for key, value in (config or {}).items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    if agents:
        data["agents"] = [dict(a) for a in agents]
    if manager_addresses:
        data["manager"]["address"] = list(manager_addresses)
    config_path = base / "daemon.toml"
    config_path.write_text(to_toml(data))
    argv = [
        console_script("fleet-daemon"),
        "--config",
        str(config_path),
        # Flags beat FLEET_* variables a developer may have exported for fleetctl.
        "--node-id",
        node_id,
        "--manager",
        ",".join(manager_addresses) or data["manager"]["address"],
        *extra_args,
    ]
    return _launch(
        argv, base / "daemon.log", node_id, grpc_port, state_dir, config_path, agent_socket, timeout
    )


def daemon_channel(
    certs: Path, daemon_port: int, node_id: str, cert_name: str = "manager"
) -> Channel:
    """A grpclib channel to a Daemon's DaemonService using ``certs/<cert_name>.crt``,
    checking the server is ``node/<node_id>``. Create it inside a running event loop."""
    files = TLSFiles(certs / f"{cert_name}.crt", certs / f"{cert_name}.key", certs / "ca.crt")
    ctx = client_context(files, expect_role="node", expect_name=node_id)
    return Channel("127.0.0.1", daemon_port, ssl=ctx)


def cleanup_socket_dir(proc: DaemonProc) -> None:
    """Remove the temporary socket directory made by ``start_daemon`` (after a stop)."""
    tmp_dir = proc.agent_socket.parent.parent
    if tmp_dir.name.startswith("fleet-sock-"):
        shutil.rmtree(tmp_dir, ignore_errors=True)


__all__ = [
    "AGENTS_DIR",
    "DaemonProc",
    "agent",
    "agent_script",
    "call_agent_api",
    "call_daemon",
    "cleanup_socket_dir",
    "daemon_channel",
    "list_agents",
    "read_config",
    "scrape_metrics",
    "start_daemon",
    "start_daemon_without_config",
    "write_config",
]


def read_config(daemon: DaemonProc) -> dict[str, Any]:
    """The Daemon's config file as data (to change it and write it back)."""
    return tomllib.loads(daemon.config_path.read_text())


def write_config(daemon: DaemonProc, data: Mapping[str, Any]) -> str:
    """Replace the Daemon's config file (takes effect on reload); returns its text."""
    text = to_toml(data)
    tmp = daemon.config_path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, daemon.config_path)
    return text


def call_daemon(
    certs: Path,
    daemon: DaemonProc,
    method: str,
    request: Any,
    *,
    cert_name: str = "manager",
    timeout: float = 30.0,
) -> Any:
    """One DaemonService call (``method`` as in the stub, e.g. ``"list_agents"``), sync."""
    import asyncio

    from schema import daemon_pb

    async def go() -> Any:
        channel = daemon_channel(certs, daemon.grpc_port, daemon.node_id, cert_name)
        try:
            stub = daemon_pb.DaemonServiceStub(channel)
            return await getattr(stub, method)(request, timeout=timeout)
        finally:
            channel.close()

    return asyncio.run(go())


def call_agent_api(socket_path: Path, method: str, request: Any, timeout: float = 10.0) -> Any:
    """One agent-facing call over the Daemon's Unix socket, sync."""
    import asyncio

    from schema import daemon_pb

    async def go() -> Any:
        channel = Channel(path=str(socket_path))
        try:
            stub = daemon_pb.DaemonServiceStub(channel)
            return await getattr(stub, method)(request, timeout=timeout)
        finally:
            channel.close()

    return asyncio.run(go())


def list_agents(certs: Path, daemon: DaemonProc) -> dict[str, Any]:
    """The Daemon's ListAgents as {agent id: AgentInfo}."""
    from schema import daemon_pb

    reply = call_daemon(certs, daemon, "list_agents", daemon_pb.ListAgentsRequest())
    return {a.id: a for a in reply.agents}


@contextlib.contextmanager
def lone_daemon(
    tmp_path: Path,
    certs: Path | None,
    *,
    node_id: str = "node-a",
    **settings: Any,
) -> Iterator[DaemonProc]:
    """``start_daemon`` for a Daemon tested on its own — its Manager address is a free
    port nobody listens on (it keeps retrying) — stopped when the block ends.

        with lone_daemon(tmp_path, certs, agents=[agent("a", "sleeper")]) as daemon: ...
    """
    daemon = start_daemon(tmp_path, certs, node_id=node_id, manager_port=free_port(), **settings)
    try:
        yield daemon
    finally:
        daemon.stop()


def all_running(certs: Path, daemon: DaemonProc, *, what: str = "") -> dict[str, Any]:
    """Wait until every agent of ``daemon`` is RUNNING; then its ListAgents, by agent id."""
    return wait_until(
        lambda: (
            (x := list_agents(certs, daemon))
            and all(a.status == "RUNNING" for a in x.values())
            and x
        ),
        what=what or "every agent RUNNING",
    )


def scrape_metrics(http_port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """A Daemon's ``/metrics`` (``http.listen``) as ``{"name{labels}": value}``, e.g.
    ``m["fleet_daemon_manager_connected"]``,
    ``m['fleet_daemon_manager_info{address="127.0.0.1:5",configured="127.0.0.1:5"}']``."""
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{http_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples
