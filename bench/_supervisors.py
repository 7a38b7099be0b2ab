"""A real ``fleet-daemon`` and a real ``supervisord`` side by side, on the same programs.

Both are started from generated configs in a temp directory and always stopped when the
``with`` block ends; supervisord's XML-RPC listens on a Unix socket only.
"""

from __future__ import annotations

import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from bench._common import console_script, ensure_node_certs, free_port, stop_process

# The program both supervise: no start-up cost of its own, so what is measured is the
# supervisor's work.
SLEEPER = ("/bin/sleep", "1000000")


def toml_dumps(data: Mapping[str, Any]) -> str:
    """A Daemon config as TOML text."""
    return tomli_w.dumps(data)


@dataclass
class DaemonHandle:
    node_id: str
    pid: int
    grpc_port: int
    cert_dir: Path  # holds ca.crt and the admin cert (to call DaemonService)
    log_path: Path
    popen: subprocess.Popen[bytes]


@contextmanager
def fleet_daemon(
    work: Path,
    *,
    ca_dir: Path,
    cache_dir: Path,
    node_id: str,
    agents: Sequence[Mapping[str, Any]],
    manager_address: str | None = None,
    history_interval: float = 10.0,
    ready_timeout: float = 60.0,
) -> Iterator[DaemonHandle]:
    """Run ``fleet-daemon`` with ``agents`` until the block ends (agents stopped with it).

    Without ``manager_address`` it points at a closed port: the Daemon supervises alone
    and keeps retrying the Manager in the background, as it would during an outage.
    """
    node_dir = ensure_node_certs(ca_dir, [node_id], cache_dir=cache_dir)
    port = free_port()
    config = {
        "node_id": node_id,
        "state_dir": str(work / "state"),
        "stop_agents_on_exit": True,
        "manager": {
            "address": manager_address or f"127.0.0.1:{free_port()}",
            "heartbeat_interval": 10.0,
            "metrics_interval": 30.0,
            "tls": {
                "enabled": True,
                "cert_file": str(node_dir / f"{node_id}.crt"),
                "key_file": str(node_dir / f"{node_id}.key"),
                "ca_file": str(node_dir / "ca.crt"),
            },
        },
        "grpc": {"listen": f"127.0.0.1:{port}"},
        "agent_api": {"socket": str(work / "agent.sock")},
        "history": {"interval": history_interval, "retention": 86400.0},
        "log": {"level": "warning"},
        "agents": list(agents),
    }
    config_path = work / "daemon.toml"
    config_path.write_text(toml_dumps(config))
    log_path = work / "daemon.log"
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            [console_script("fleet-daemon"), "--config", str(config_path), "--log-level", "info"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + ready_timeout
        while "daemon ready" not in log_path.read_text(errors="replace"):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"fleet-daemon did not start:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.05)
        yield DaemonHandle(node_id, popen.pid, port, ca_dir, log_path, popen)
    finally:
        stop_process(popen, timeout=30)


def daemon_agent(agent_id: str, **settings: Any) -> dict[str, Any]:
    return {"id": agent_id, "command": list(SLEEPER), "autorestart": "always", **settings}


@dataclass
class SupervisordHandle:
    pid: int
    socket: Path
    proxy: Any  # xmlrpc ServerProxy over the Unix socket


@contextmanager
def supervisord(
    work: Path, programs: Mapping[str, Mapping[str, Any]], *, ready_timeout: float = 30.0
) -> Iterator[SupervisordHandle]:
    """Run supervisord (foreground, XML-RPC on a Unix socket) with ``programs``."""
    from supervisor.xmlrpc import SupervisorTransport

    sock = work / "supervisor.sock"
    sections = [
        "[unix_http_server]", f"file={sock}", "chmod=0700", "",
        "[supervisord]", f"logfile={work / 'supervisord.log'}", f"pidfile={work / 'sd.pid'}",
        "nodaemon=true", f"childlogdir={work}", "loglevel=warn", "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
        "[supervisorctl]", f"serverurl=unix://{sock}", "",
    ]  # fmt: skip
    for name, settings in programs.items():
        sections.append(f"[program:{name}]")
        sections.append(f"command={' '.join(SLEEPER)}")
        sections.append(f"stdout_logfile={work / (name + '.out')}")
        sections.append(f"stderr_logfile={work / (name + '.err')}")
        sections.extend(f"{k}={v}" for k, v in settings.items())
        sections.append("")
    conf = work / "supervisord.conf"
    conf.write_text("\n".join(sections))
    exe = Path(sys.executable).with_name("supervisord")
    popen = subprocess.Popen(
        [str(exe) if exe.exists() else "supervisord", "-c", str(conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip

    def connect() -> Any:
        return xmlrpc.client.ServerProxy(
            "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{sock}")
        )

    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            proxy = connect()  # a failed request leaves a transport unusable
            try:
                if proxy.supervisor.getState()["statename"] == "RUNNING":
                    break
            except OSError:
                pass
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"supervisord did not start (see {work})")
            time.sleep(0.05)
        yield SupervisordHandle(popen.pid, sock, proxy)
    finally:
        stop_process(popen, timeout=30)
