"""Fault battery, items 8 and 9: silent network loss, and a Manager restarting on a stale fleet.

Both directions between a real Manager and a real Daemon go through
:class:`harness.faults.TcpProxy` (the Daemon dials the Manager through one; it advertises
the other as its address, so the Manager dials it back through it). ``blackhole()`` makes
the path drop everything silently — no RST, no FIN — which is what a pulled cable, a
crashed NAT or a firewall DROP rule looks like, and what a client without deadlines
hangs on forever.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grpclib.const import Status
from harness import free_port, wait_until
from harness.daemon import DaemonProc, agent, list_agents, start_daemon
from harness.faults import TcpProxy
from harness.manager import (
    ManagerProc,
    manager_rpc,
    manager_rpc_error,
    start_manager,
    stored_nodes,
    write_manager_config,
)

from schema import admin_pb, manager_pb

GRACE = 3.0
CALL_TIMEOUT = 2.0
DAEMON_TIMEOUT = 2.0
HEARTBEAT = 1.0


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def _status(certs: Path, port: int, node_id: str) -> str:
    reply = manager_rpc(certs, port, "admin", "get_node", admin_pb.GetNodeRequest(node_id=node_id))
    return reply.node.status


@dataclass
class Link:
    mgr: ManagerProc
    daemon: DaemonProc
    to_manager: TcpProxy
    to_daemon: TcpProxy
    daemon_http: int
    manager_args: list[str]


def _manager_config(tmp_path: Path) -> list[str]:
    cfg = write_manager_config(
        tmp_path / "m.toml",
        {
            "liveness": {"sweep_interval": 0.2},
            "heartbeats": {"flush_interval": 0.2},
            "daemons": {
                "call_timeout": CALL_TIMEOUT,
                "connect_timeout": 1.0,
                "connect_attempts": 2,
                "backoff_initial": 0.1,
                "backoff_max": 0.5,
            },
        },
    )
    return ["--config", str(cfg)]


@pytest.fixture
def link(tmp_path: Path, certs: Path) -> Iterator[Link]:
    args = _manager_config(tmp_path)
    mgr = start_manager(tmp_path, certs, grace=GRACE, extra_args=args)
    to_manager = TcpProxy(("127.0.0.1", mgr.grpc_port)).start()
    daemon_port = free_port()
    to_daemon = TcpProxy(("127.0.0.1", daemon_port)).start()
    http = free_port()
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=to_manager.port,
        agents=[agent("sleepy", "sleeper", start_seconds=0.2)],
        heartbeat_interval=HEARTBEAT,
        config={
            "manager": {"timeout": DAEMON_TIMEOUT, "reconnect_interval": 1.0},
            "grpc": {"listen": f"127.0.0.1:{daemon_port}", "advertise": to_daemon.address},
            "http": {"listen": f"127.0.0.1:{http}"},
        },
    )
    daemon.grpc_port, daemon.address = daemon_port, f"127.0.0.1:{daemon_port}"  # listen override
    try:
        wait_until(
            lambda: any(
                a.id == "sleepy" and a.status == "RUNNING"
                for a in manager_rpc(
                    certs, mgr.grpc_port, "admin", "list_agents", admin_pb.ListAgentsRequest()
                ).agents
            ),
            timeout=20,
            what="node-a registered and synced",
        )
        state = Link(mgr, daemon, to_manager, to_daemon, http, args)
        yield state
    finally:
        to_manager.heal()
        to_daemon.heal()
        daemon.stop()
        to_manager.stop()
        to_daemon.stop()
        (state.mgr if "state" in locals() else mgr).stop()


def test_silent_loss_no_hang_offline_within_grace_back_without_duplicate(
    link: Link, certs: Path
) -> None:
    port = link.mgr.grpc_port
    before = stored_nodes(link.mgr.db_url)["node-a"]
    pid = list_agents(certs, link.daemon)["sleepy"].pid
    # The Manager -> Daemon path works through the proxy before the fault.
    live = manager_rpc(
        certs,
        port,
        "admin",
        "get_agent_config",
        admin_pb.GetAgentConfigRequest(node_id="node-a", agent_id="sleepy"),
    )
    assert live.config.agent_id == "sleepy"

    link.to_manager.blackhole()
    link.to_daemon.blackhole()
    cut = time.monotonic()

    # 1) Manager -> Daemon: a proxied call ends by its deadline, with the node named.
    started = time.monotonic()
    status, message = manager_rpc_error(
        certs,
        port,
        "admin",
        "get_agent_config",
        admin_pb.GetAgentConfigRequest(node_id="node-a", agent_id="sleepy"),
    )
    took = time.monotonic() - started
    assert status in (Status.DEADLINE_EXCEEDED, Status.UNAVAILABLE), (status, message)
    assert "node-a" in message
    assert took < CALL_TIMEOUT + 3.0, took
    # The fleet-wide live listing reports the node as an error instead of hanging.
    started = time.monotonic()
    reply = manager_rpc(
        certs, port, "admin", "list_agents", admin_pb.ListAgentsRequest(node_id="node-a", live=True)
    )
    assert time.monotonic() - started < CALL_TIMEOUT + 3.0
    assert [e.node_id for e in reply.errors] == ["node-a"] and not reply.agents

    # 2) Daemon -> Manager: its calls end by manager.timeout; it knows it is cut off.
    wait_until(
        lambda: _scrape(link.daemon_http)["fleet_daemon_manager_connected"] == 0,
        timeout=HEARTBEAT + DAEMON_TIMEOUT + 3.0,
        what="the Daemon noticing the Manager is gone",
    )
    assert time.monotonic() - cut < HEARTBEAT + DAEMON_TIMEOUT + 3.0

    # 3) The Manager declares the node offline within its grace period.
    wait_until(
        lambda: _status(certs, port, "node-a") == "offline",
        timeout=GRACE + HEARTBEAT + 3.0,
        what="node-a offline",
    )
    offline_after = time.monotonic() - cut
    assert GRACE - HEARTBEAT - 0.5 <= offline_after <= GRACE + HEARTBEAT + 2.0, offline_after

    # 4) Heal: back online by itself, same node row, no duplicate Daemon flagged.
    link.to_manager.heal()
    link.to_daemon.heal()
    wait_until(
        lambda: _status(certs, port, "node-a") == "online",
        timeout=15,
        what="node-a back online",
    )
    rows = stored_nodes(link.mgr.db_url)
    assert list(rows) == ["node-a"]
    after = rows["node-a"]
    assert after["instance_id"] == before["instance_id"]
    assert after["registered_at"] == before["registered_at"]
    events = manager_rpc(
        certs, port, "admin", "get_node", admin_pb.GetNodeRequest(node_id="node-a")
    ).events
    reasons = [e.reason for e in events]
    assert reasons.count("registered") == 1, reasons
    assert not any("duplicate" in r for r in reasons), reasons
    assert any(r.startswith("no heartbeat for") for r in reasons), reasons
    # The agent was never touched by any of it.
    info = list_agents(certs, link.daemon)["sleepy"]
    assert info.pid == pid and info.restart_count == 0
    # And the Manager -> Daemon path works again.
    wait_until(
        lambda: (
            manager_rpc(
                certs,
                port,
                "admin",
                "get_agent_config",
                admin_pb.GetAgentConfigRequest(node_id="node-a", agent_id="sleepy"),
            ).config.agent_id
            == "sleepy"
        ),
        timeout=15,
        what="proxied calls work again",
    )


def test_manager_restart_on_a_stale_fleet_touches_nothing_inside_grace(
    tmp_path: Path, link: Link, certs: Path
) -> None:
    """Item 9 with a real Daemon and agent (the Manager-only variant is
    ``test_manager_liveness.py::test_no_mass_offline_after_restart``): the Manager goes
    down, the fleet goes stale (its Daemon cannot reach the new Manager either), the
    Manager comes back on the same database — nothing is declared offline and no agent
    is touched until a full grace period after start."""
    port = link.mgr.grpc_port
    for node_id in ("node-b", "node-c"):  # two more nodes that will never beat again
        manager_rpc(
            certs,
            port,
            node_id,
            "register_node",
            manager_pb.RegisterNodeRequest(
                node_id=node_id, daemon_address="127.0.0.1:1", heartbeat_interval_seconds=1
            ),
        )
    agent_before = list_agents(certs, link.daemon)["sleepy"]
    assert link.mgr.stop() == 0
    link.to_manager.blackhole()  # the Daemon stays cut off from the Manager that returns
    down = time.monotonic()
    wait_until(lambda: time.monotonic() - down > GRACE + 1, timeout=GRACE + 5, what="stale")
    mgr = start_manager(
        tmp_path,
        certs,
        grace=GRACE,
        extra_args=link.manager_args,
        grpc_port=port,
        log_name="manager2.log",
    )
    link.mgr = mgr  # the fixture stops this one
    ready = time.monotonic()
    seen: list[dict[str, str]] = []
    while time.monotonic() - ready < GRACE - 0.7:
        nodes = manager_rpc(certs, port, "admin", "list_nodes", admin_pb.ListNodesRequest()).nodes
        seen.append({n.node_id: n.status for n in nodes})
        time.sleep(0.2)
    assert len(seen) >= 5
    for snapshot in seen:
        assert snapshot == dict.fromkeys(("node-a", "node-b", "node-c"), "online"), snapshot
    # After the guard, the silent nodes go offline (the guard is not a blanket pardon).
    wait_until(
        lambda: _status(certs, port, "node-b") == "offline",
        timeout=GRACE + 5,
        what="node-b offline after the guard",
    )
    assert time.monotonic() - ready >= GRACE - 0.5
    # No agent was touched by the restart: same process, no restart, no operation logged.
    agent_after = list_agents(certs, link.daemon)["sleepy"]
    assert agent_after.pid == agent_before.pid
    assert agent_after.restart_count == agent_before.restart_count
    assert "stopped by request" not in link.daemon.output()
    assert "OperateAgent" not in mgr.output()
    link.to_manager.heal()
    wait_until(lambda: _status(certs, port, "node-a") == "online", timeout=15, what="healed")


def test_proxy_is_transparent_when_healthy(certs: Path) -> None:
    """Sanity of the fault harness itself: bytes pass unchanged both ways."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    with (
        TcpProxy(server.getsockname()) as proxy,
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c,
    ):
        payload = bytes(range(256)) * 1000
        c.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += c.recv(65536)
        assert got == payload
        proxy.blackhole()
        c.sendall(b"lost?")
        c.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.recv(10)
        proxy.heal()
        c.settimeout(5)
        assert c.recv(10) == b"lost?"  # delayed, not lost: TCP semantics
    server.close()
