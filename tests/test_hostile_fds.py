"""File descriptors under attack (issue 11, item 9): connection caps per server and per
peer address before the TLS handshake, idle and half-sent connection timeouts on the
gRPC and HTTP ports, and SO_REUSEPORT on the Manager's HTTP port.

Each attack runs against a real Manager or Daemon whose open file limit is lowered to a
few hundred once it is up (``prlimit``), so that a few hundred sockets from this test
would exhaust it without the bounds. Attackers connect from 127.0.0.2 and up (all of
127/8 is loopback on Linux); honest clients from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from grpclib.exceptions import GRPCError, StreamTerminatedError
from harness import free_port, wait_until
from harness.daemon import call_daemon, daemon_channel, lone_daemon, scrape_metrics
from harness.manager import (
    http_get,
    manager_rpc,
    metric_value,
    node_channel,
    start_manager,
    write_manager_config,
)

from manager.http import HttpServer
from schema import admin_pb, daemon_pb, manager_pb

# Low enough that 1,100 idle connections would exhaust it. (asyncio accepts up to 100
# sockets per loop turn before their protocols run, so a burst briefly holds up to ~300
# fds above the caps: 256 would be too tight for a flood of 1,100 at once.)
FD_LIMIT = 512


def limit_fds(pid: int, n: int = FD_LIMIT) -> None:
    """Lower a running server's open file limit (soft and hard) to ``n``."""
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (n, n))


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def held(pid: int, *sources: str) -> int:
    """TCP connections the server process holds from ``sources`` (its side: a client
    socket may look connected while the server never accepted it)."""
    return sum(
        1
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.ip in sources
    )


class Flood:
    """``n`` TCP connections to ``port`` from ``source``, each sending ``payload``
    (nothing by default) and then nothing more.

    They are opened 50 at a time, each batch once the server (process ``pid``) has
    either taken or closed the one before: a burst beyond the listen backlog would leave
    connections the kernel completed for the client but the server never saw, which
    prove nothing either way."""

    def __init__(self, port: int, n: int, *, source: str, pid: int, payload: bytes = b"") -> None:
        self.socks: list[socket.socket] = []
        while len(self.socks) < n:
            for _ in range(min(50, n - len(self.socks))):
                s = socket.socket()
                s.bind((source, 0))
                s.settimeout(10)
                s.connect(("127.0.0.1", port))
                with contextlib.suppress(OSError):  # it may be closed already
                    s.sendall(payload)
                s.setblocking(False)
                self.socks.append(s)
            wait_until(
                lambda: self.refused() + held(pid, source) >= len(self.socks),
                timeout=30,
                what="the server to take or close every connection",
            )

    def refused(self) -> int:
        """Connections the server has closed (reset, or end of stream)."""
        closed = 0
        for s in self.socks:
            try:
                data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                closed += 1  # reset
                continue
            closed += not data
        return closed

    def close(self) -> None:
        for s in self.socks:
            s.close()


@contextlib.contextmanager
def flood(port: int, n: int, *, source: str, pid: int, payload: bytes = b"") -> Iterator[Flood]:
    attack = Flood(port, n, source=source, pid=pid, payload=payload)
    try:
        yield attack
    finally:
        attack.close()


def count_lines(text: str, needle: str) -> int:
    return sum(1 for line in text.splitlines() if needle in line)


def test_daemon_survives_idle_tcp_floods_and_stays_quiet(tmp_path: Path, certs: Path) -> None:
    """1,100 idle TCP connections (no certificate) against a Daemon limited to 512 fds:
    one address gets its per-peer cap and the rest are closed at once while the Manager's
    calls are served; many addresses fill the server cap, which keeps the Daemon clear of
    its fd limit; idle ones are closed after the handshake timeout; a few log lines, not
    thousands."""
    http_port = free_port()
    settings = {
        "grpc": {
            "limits": {
                "max_connections": 150,
                "max_connections_per_peer": 50,
                "preface_timeout": 3.0,
            }
        },
        "http": {"listen": f"127.0.0.1:{http_port}"},
    }
    with lone_daemon(tmp_path, certs, config=settings) as daemon:
        limit_fds(daemon.pid)
        port = daemon.grpc_port
        with flood(port, 1100, source="127.0.0.2", pid=daemon.pid) as attack:
            assert held(daemon.pid, "127.0.0.2") <= 50
            assert attack.refused() >= 1050
            reply = call_daemon(certs, daemon, "list_agents", daemon_pb.ListAgentsRequest())
            assert reply is not None
            # The idle ones go after the handshake timeout.
            wait_until(lambda: attack.refused() == 1100, timeout=30, what="idle ones closed")
        # Many addresses: the server cap, not EMFILE, turns the rest away.
        sources = [f"127.0.0.{i}" for i in range(3, 9)]
        floods: list[Flood] = []
        try:
            for source in sources:
                floods.append(Flood(port, 100, source=source, pid=daemon.pid))
            assert sum(f.refused() for f in floods) >= 450
            assert held(daemon.pid, *sources) <= 150
            assert open_fds(daemon.pid) < FD_LIMIT - 200
            wait_until(lambda: sum(f.refused() for f in floods) == 600, timeout=30, what="gone")
        finally:
            for f in floods:
                f.close()
        reply = call_daemon(certs, daemon, "list_agents", daemon_pb.ListAgentsRequest())
        assert reply is not None
        metrics = scrape_metrics(http_port)
        refused = 'fleet_daemon_connections_refused_total{port="grpc.listen",reason="%s"}'
        assert metrics[refused % "peer_full"] >= 1000
        assert metrics[refused % "server_full"] >= 300
        log = daemon.output()
        assert count_lines(log, "closed a new connection") < 20, log[-3000:]
        assert "out of system resource" not in log
        assert "cannot accept connections" not in log


def test_manager_http_half_sent_requests(tmp_path: Path, certs: Path) -> None:
    """1,100 half-sent requests on the Manager's HTTP port (fd limit 512): the sender
    gets 64 connections, the rest are closed at once; /readyz, /metrics and an admin gRPC
    call still answer; the half-sent ones are closed after the header timeout."""
    mgr = start_manager(tmp_path, certs)
    try:
        limit_fds(mgr.pid)
        port = int(mgr.http_url.rsplit(":", 1)[1])
        half = b"GET /metrics HTTP/1.1\r\n"
        with flood(port, 1100, source="127.0.0.2", pid=mgr.pid, payload=half) as a:
            assert held(mgr.pid, "127.0.0.2") <= 64
            assert a.refused() >= 1100 - 64
            assert http_get(f"{mgr.http_url}/readyz")[0] == 200
            status, text = http_get(f"{mgr.http_url}/metrics")
            assert status == 200
            refused = metric_value(
                text,
                "fleet_manager_connections_refused_total",
                port="server.listen",
                reason="peer_full",
            )
            # Counted once manager/app.py passes on_refused to HttpServer; logged anyway.
            assert refused is None or refused >= 1000
            manager_rpc(certs, mgr.grpc_port, "admin", "list_nodes", admin_pb.ListNodesRequest())
            wait_until(lambda: a.refused() == 1100, timeout=40, what="half-sent closed")
        log = mgr.output()
        assert count_lines(log, "closed a new connection") < 20, log[-3000:]
        assert count_lines(log, "request headers not received") < 20, log[-3000:]
        assert "request headers not received within 10 s" in log
    finally:
        mgr.stop()


def test_manager_grpc_port_caps_idle_tcp_before_the_handshake(tmp_path: Path, certs: Path) -> None:
    """Idle TCP connections on the Manager's gRPC port: capped per address before any TLS
    handshake, counted in fleet_manager_connections_refused_total; admin calls from
    another address go on."""
    config = write_manager_config(
        tmp_path / "manager.toml", {"grpc.limits": {"max_connections_per_peer": 40}}
    )
    mgr = start_manager(tmp_path, certs, extra_args=["--config", str(config)])
    try:
        limit_fds(mgr.pid)
        with flood(mgr.grpc_port, 1100, source="127.0.0.2", pid=mgr.pid) as attack:
            assert held(mgr.pid, "127.0.0.2") <= 40
            assert attack.refused() >= 1100 - 40
            manager_rpc(certs, mgr.grpc_port, "admin", "list_nodes", admin_pb.ListNodesRequest())
            text = http_get(f"{mgr.http_url}/metrics")[1]
            refused = metric_value(
                text,
                "fleet_manager_connections_refused_total",
                port="gRPC port",
                reason="peer_full",
            )
            assert refused is not None and refused >= 1000
        log = mgr.output()
        assert count_lines(log, "closed a new connection") < 20, log[-3000:]
    finally:
        mgr.stop()


@pytest.mark.asyncio
async def test_idle_grpc_connection_closed_active_one_kept(tmp_path: Path, certs: Path) -> None:
    """An authenticated connection with no stream for idle_timeout gets GOAWAY and is
    closed; one in use stays; the idle channel's next call dials again transparently."""
    settings = {"grpc": {"limits": {"idle_timeout": 2.0}}}
    with lone_daemon(tmp_path, certs, config=settings) as daemon:
        idle = daemon_channel(certs, daemon.grpc_port, daemon.node_id)
        busy = daemon_channel(certs, daemon.grpc_port, daemon.node_id)
        try:
            idle_stub = daemon_pb.DaemonServiceStub(idle)
            busy_stub = daemon_pb.DaemonServiceStub(busy)
            await idle_stub.list_agents(daemon_pb.ListAgentsRequest(), timeout=10)
            await busy_stub.list_agents(daemon_pb.ListAgentsRequest(), timeout=10)
            idle_conn, busy_conn = idle._protocol, busy._protocol
            assert idle_conn is not None and busy_conn is not None
            deadline = time.monotonic() + 30
            while not _lost(idle_conn):
                assert time.monotonic() < deadline, "idle connection not closed"
                await busy_stub.list_agents(daemon_pb.ListAgentsRequest(), timeout=10)
                await asyncio.sleep(0.5)
            assert busy._protocol is busy_conn and not _lost(busy_conn)
            await idle_stub.list_agents(daemon_pb.ListAgentsRequest(), timeout=10)
            assert idle._protocol is not idle_conn
        finally:
            idle.close()
            busy.close()


@pytest.mark.asyncio
async def test_half_sent_headers_time_out_but_slow_keepalive_is_uvicorns(
    tmp_path: Path,
) -> None:
    """The HTTP header timeout: a connection sending nothing, or a request's headers a
    byte at a time, is closed after header_timeout; a complete request is answered and
    its kept-alive connection left to uvicorn's keep-alive timeout."""
    server = HttpServer(
        listen="127.0.0.1:0",
        ready=_ready,
        render_metrics=_metrics,
        header_timeout=1.0,
        read_timeout=30.0,
    )
    await server.start()
    try:
        host, port = server.address.rsplit(":", 1)
        silent_r, silent_w = await asyncio.open_connection(host, int(port))
        slow_r, slow_w = await asyncio.open_connection(host, int(port))
        kept_r, kept_w = await asyncio.open_connection(host, int(port))
        kept_w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(kept_r.readuntil(b"ok\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        slow_w.write(b"GET /healthz HTTP/1.1\r\n")
        closed_silent = asyncio.ensure_future(asyncio.wait_for(silent_r.read(), 15))
        for byte in b"Host: x\r\n":
            slow_w.write(bytes([byte]))
            await asyncio.sleep(0.05)
        assert await asyncio.wait_for(slow_r.read(), 15) == b""
        assert await closed_silent == b""
        assert time.monotonic() - started < 10
        # The kept-alive connection is still served: idle it was, not half-sent.
        kept_w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(kept_r.readuntil(b"ok\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        assert server.conns.counts.get("header_timeout") == 2
        for w in (silent_w, slow_w, kept_w):
            w.close()
    finally:
        server.close()
        await server.wait_closed()


def _lost(protocol: Any) -> bool:
    """Whether a grpclib channel's connection is gone (its handler says so)."""
    return bool(protocol.handler.connection_lost)


async def _ready() -> str:
    return ""


async def _metrics() -> bytes:
    return b"up 1\n"


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(r.status)


@pytest.mark.asyncio
async def test_http_reuse_port_lets_two_servers_share_the_port() -> None:
    first = HttpServer(listen="127.0.0.1:0", ready=_ready, render_metrics=_metrics, reuse_port=True)
    await first.start()
    try:
        port = first.address.rsplit(":", 1)[1]
        second = HttpServer(
            listen=f"127.0.0.1:{port}", ready=_ready, render_metrics=_metrics, reuse_port=True
        )
        await second.start()
        try:
            assert second.address == first.address
            status = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
            assert status == 200
        finally:
            second.close()
            await second.wait_closed()
    finally:
        first.close()
        await first.wait_closed()


def test_accept_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio reports EMFILE in accept once per pending connection; the filter logs one
    line per 10 s and passes every other report on."""
    from common.conns import quiet_accept_errors

    now = [0.0]
    seen: list[str] = []
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx["message"]))
        quiet_accept_errors(loop, clock=lambda: now[0])
        emfile = OSError(errno.EMFILE, "Too many open files")
        with caplog.at_level("ERROR", logger="common.conns"):
            for i in range(300):
                now[0] = i * 0.1  # 30 s of a flood
                loop.call_exception_handler(
                    {"message": "socket.accept() out of system resource", "exception": emfile}
                )
            loop.call_exception_handler({"message": "something else"})
        lines = [r for r in caplog.records if "cannot accept connections" in r.message]
        assert len(lines) == 3
        assert "more since the last such line" in lines[1].message
        assert seen == ["something else"]
    finally:
        loop.close()


@pytest.mark.asyncio
async def test_a_node_certificate_holds_at_most_max_connections_per_node(
    tmp_path: Path, certs: Path
) -> None:
    """One node certificate on an address of its own could otherwise hold the whole
    per-address cap; each connection costs up to ~300 KiB once it has sent data."""
    cfg = write_manager_config(
        tmp_path / "manager.toml", {"grpc.limits": {"max_connections_per_node": 3}}
    )
    manager = start_manager(tmp_path, certs, extra_args=["--config", str(cfg)])
    channels = [node_channel(certs, manager.grpc_port, "node-a") for _ in range(4)]
    other = node_channel(certs, manager.grpc_port, "node-b")

    async def call(channel: Any) -> None:
        await manager_pb.ManagerServiceStub(channel).get_revocations(
            manager_pb.GetRevocationsRequest(), timeout=10
        )

    try:
        served, refused = 0, []
        for channel in channels:
            try:
                await call(channel)
                served += 1
            except (StreamTerminatedError, GRPCError, ConnectionError) as exc:
                refused.append(exc)
        assert served == 3 and len(refused) == 1, refused
        await call(other)  # another node is not affected
        assert "max_connections_per_node" in manager.output()
        # One of node-a's connections gone: it may open another.
        channels[0].close()
        deadline = time.monotonic() + 30
        while True:
            again = node_channel(certs, manager.grpc_port, "node-a")
            try:
                await call(again)
                channels.append(again)
                break
            except (StreamTerminatedError, GRPCError, ConnectionError):
                again.close()
                assert time.monotonic() < deadline, "node-a never got a connection back"
                await asyncio.sleep(0.5)
        # Not counted as abuse: no cool-down for the node.
        assert "cooling down" not in manager.output()
    finally:
        for channel in [*channels, other]:
            channel.close()
        manager.stop()
