"""fleetctl given several Managers (issue 14, item 3): FLEET_MANAGER="a:50051,b:50051".

Against real Managers (each on its own SQLite database: the read-only checks tell them
apart by the node registered on each) and, for a call whose connection dies after the
request was sent, a stand-in Manager that reads the request and hangs up without answering.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import clean_fleetctl_env, console_script, free_port, one_line, run_cli
from harness.manager import ManagerProc, manager_rpc, start_manager
from typer.testing import CliRunner

from common.addresses import AddressError, parse_address_list, split_hostport
from fleetctl.app import app
from fleetctl.client import Connection
from fleetctl.errors import CliError, ExitCode
from fleetctl.failover import CONNECT_TIMEOUT, Router, Target, is_read_only
from fleetctl.settings import Address, AddressList, Settings, parse_addresses, resolve

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_fleetctl_env(monkeypatch, tmp_path)


def admin_env(certs: Path, managers: str, **extra: str) -> dict[str, str]:
    return {
        "FLEET_MANAGER": managers,
        "FLEET_CA": str(certs / "ca.crt"),
        "FLEET_CERT": str(certs / "admin.crt"),
        "FLEET_KEY": str(certs / "admin.key"),
        "FLEET_TIMEOUT": "30s",
        **extra,
    }


def fleetctl(env: dict[str, str], *argv: str, timeout: float = 60) -> Any:
    return run_cli([console_script("fleetctl"), *argv], env=env, timeout=timeout)


def listed_nodes(proc: Any) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [n["node_id"] for n in json.loads(proc.stdout)]


# ---- parsing --------------------------------------------------------------------------------


def test_address_lists_are_parsed_and_each_entry_checked() -> None:
    assert parse_address_list("a:1, b:2,[::1]:3") == ("a:1", "b:2", "[::1]:3")
    assert parse_address_list("mgr, ::1", default_port=50051) == ("mgr:50051", "[::1]:50051")
    assert split_hostport("[fe80::1]:7") == ("fe80::1", 7)
    bad = {
        "a:1,,b:2": ("a:1,,b:2", "has an empty entry"),
        "a:1,b:99999": ("b:99999", "the port must be a number from 1 to 65535"),
        "a:1,b:0": ("b:0", "the port must be a number from 1 to 65535"),
        "a:1,https://b:2": ("https://b:2", "expected HOST:PORT"),
        "a:1,b c:2": ("b c:2", "expected HOST:PORT"),
        "a:1,[::1:2": ("[::1:2", "unclosed '['"),
        "a:1,[mgr]:2": ("[mgr]:2", "'mgr' in brackets is not an IPv6 address"),
        "a:1,a:1": ("a:1", "listed twice"),
        "a:1,b": ("b", "expected HOST:PORT (the port is missing)"),
        " ": (" ", "empty: give HOST:PORT, or a list of them"),
        ",".join(f"h{i}:1" for i in range(33)): (None, "lists 33 addresses (at most 32)"),
    }
    for text, (entry, reason) in bad.items():
        with pytest.raises(AddressError) as exc:
            parse_address_list(text)
        assert exc.value.reason == reason, text
        assert exc.value.entry == (text if entry is None else entry), text

    managers = parse_addresses("10.0.0.5, mgr.example.net:6000", default_port=50051)
    assert managers.addresses == (Address("10.0.0.5", 50051), Address("mgr.example.net", 6000))
    assert str(managers) == "10.0.0.5:50051,mgr.example.net:6000"
    with pytest.raises(CliError) as err:
        parse_addresses("a:1,b:x", default_port=50051, what="manager address", source="env X")
    assert err.value.code is ExitCode.USAGE
    assert err.value.message == (
        "invalid manager address 'b:x' in 'a:1,b:x' (env X): "
        "the port must be a number from 1 to 65535"
    )


def test_the_config_file_takes_a_toml_list(tmp_path: Path) -> None:
    cfg = tmp_path / "fleetctl.toml"
    cfg.write_text('manager = ["10.0.0.5:50051", "10.0.0.6"]\n')
    s = resolve({}, environ={}, home=tmp_path, config_flag=str(cfg))
    assert s.manager == AddressList((Address("10.0.0.5", 50051), Address("10.0.0.6", 50051)))
    assert s.sources["manager"] == f"config {cfg}"
    flag = resolve({"manager": "h:1,h:2"}, environ={"FLEET_MANAGER": "x:1"}, home=tmp_path)
    assert str(flag.manager) == "h:1,h:2" and flag.sources["manager"] == "flag --manager"

    shown = runner.invoke(app, ["config", "show", "-o", "json"], env={"FLEET_CONFIG": str(cfg)})
    assert shown.exit_code == 0, shown.output
    value = json.loads(shown.stdout)["settings"]["manager"]["value"]
    assert value == "10.0.0.5:50051,10.0.0.6:50051"


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("env", "invalid manager address 'nope:' in '127.0.0.1:1,nope:' (env FLEET_MANAGER)"),
        ("flag", "invalid manager address 'nope:' in '127.0.0.1:1,nope:' (flag --manager)"),
        ("config", "invalid manager address 'nope:' in '127.0.0.1:1,nope:' (config "),
        ("config-type", "manager must be a HOST:PORT or a list of them"),
    ],
)
def test_a_malformed_entry_is_one_line_exit_2(
    certs: Path, tmp_path: Path, how: str, message: str
) -> None:
    text = "127.0.0.1:1,nope:"
    env = admin_env(certs, "")
    argv = ["nodes", "list"]
    if how == "env":
        env["FLEET_MANAGER"] = text
    elif how == "flag":
        argv += ["--manager", text]
    else:
        cfg = tmp_path / "fleetctl.toml"
        cfg.write_text(f"manager = {json.dumps(text.split(','))}\n")
        if how == "config-type":
            cfg.write_text('manager = ["127.0.0.1:1", 7]\n')
        env["FLEET_CONFIG"] = str(cfg)
    proc = fleetctl(env, *argv)
    assert proc.returncode == ExitCode.USAGE, proc
    line = one_line(proc.stderr)
    assert line.startswith("fleetctl: ") and message in line, line
    if how != "config-type":
        assert line.endswith("the port must be a number from 1 to 65535"), line


def test_only_list_get_query_calls_are_read_only() -> None:
    for name in ("ListNodes", "GetNode", "QueryNodeMetrics", "GetAgentLog", "ListEvents"):
        assert is_read_only(f"/fleet.admin.v1.AdminService/{name}")
    for name in (
        "OperateAgent",
        "PushUpdate",
        "ApplySpec",
        "RemoveNode",
        "RevokeCertificate",
        "CreateJoinToken",
        "DeleteSpec",
        "SetRolloutState",
        "ReloadDaemon",
        "RevokeJoinToken",
    ):
        assert not is_read_only(f"/fleet.admin.v1.AdminService/{name}")


# ---- two real Managers ------------------------------------------------------------------------


@dataclass
class Pair:
    """Two real Managers, each with one registered node of its own (read-only checks tell
    them apart by it)."""

    first: ManagerProc
    second: ManagerProc
    nodes: dict[str, str] = field(default_factory=dict)  # manager address -> its node


@pytest.fixture
def pair(tmp_path: Path, certs: Path) -> Iterator[Pair]:
    from schema import manager_pb

    started: list[ManagerProc] = []
    try:
        for name in ("one", "two"):
            started.append(start_manager(tmp_path / name, certs))
        result = Pair(first=started[0], second=started[1])
        for manager, node in zip(started, ("node-a", "node-b"), strict=True):
            manager_rpc(
                certs,
                manager.grpc_port,
                node,
                "register_node",
                manager_pb.RegisterNodeRequest(node_id=node, daemon_address="127.0.0.1:1"),
            )
            result.nodes[manager.address] = node
        yield result
    finally:
        for manager in started:
            manager.kill()


def test_a_refused_first_address_is_skipped_at_once(pair: Pair, certs: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    env = admin_env(certs, f"{dead},{pair.first.address}")
    began = time.monotonic()
    proc = fleetctl(env, "nodes", "list", "-o", "json")
    took = time.monotonic() - began
    assert listed_nodes(proc) == ["node-a"]
    assert proc.stderr == ""  # which Manager answered is not news outside --debug
    # Refused: moved on without waiting for the connect timeout.
    assert took < CONNECT_TIMEOUT, took

    debug = fleetctl(env, "--debug", "nodes", "list", "-o", "json")
    assert listed_nodes(debug) == ["node-a"]
    assert f"manager at {dead} not reached (connection refused)" in debug.stderr
    assert f"answered by manager at {pair.first.address}" in debug.stderr


def test_every_address_dead_is_one_line_exit_5(certs: Path) -> None:
    one, two = free_port(), free_port()
    proc = fleetctl(admin_env(certs, f"127.0.0.1:{one},127.0.0.1:{two}"), "nodes", "list")
    assert proc.returncode == ExitCode.UNAVAILABLE, proc
    assert one_line(proc.stderr) == (
        f"fleetctl: no Manager reachable: 127.0.0.1:{one} (connection refused), "
        f"127.0.0.1:{two} (connection refused)"
    )


def settings_for(certs: Path, tmp_path: Path, managers: str) -> Settings:
    return resolve(
        {
            "manager": managers,
            "ca": str(certs / "ca.crt"),
            "cert": str(certs / "admin.crt"),
            "key": str(certs / "admin.key"),
            "timeout": "30s",
        },
        environ={},
        home=tmp_path,
    )


def test_a_manager_killed_mid_session_is_left_for_the_next(
    pair: Pair, certs: Path, tmp_path: Path
) -> None:
    """One fleetctl session (one Connection, as a fleet-wide command holds it): the first
    Manager answers until it is killed; then every call, reads and writes alike (nothing
    was sent to the dead one), goes to the second, which is tried first from then on."""
    from schema import admin_pb2

    settings = settings_for(certs, tmp_path, f"{pair.first.address},{pair.second.address}")

    async def session() -> None:
        async with Connection(settings, Target("manager", settings.manager)) as conn:
            stub = conn.admin()

            async def nodes() -> list[str]:
                reply = await conn.call(
                    stub.ListNodes(admin_pb2.ListNodesRequest(), timeout=conn.timeout)
                )
                return [n.node_id for n in reply.nodes]

            assert await nodes() == ["node-a"]
            assert await nodes() == ["node-a"]  # sticks with the one that answered
            pair.first.kill()
            assert await nodes() == ["node-b"]
            assert str(conn.router.current()) == f"manager at {pair.second.address}"
            # A write after the switch goes straight to the second Manager: it answers.
            with pytest.raises(CliError) as exc:
                await conn.call(
                    stub.RemoveNode(
                        admin_pb2.RemoveNodeRequest(node_id="node-a"), timeout=conn.timeout
                    )
                )
            assert exc.value.code is ExitCode.NOT_FOUND, exc.value
            assert await nodes() == ["node-b"]

    asyncio.run(session())

    # A new invocation given the same list: the dead first one is skipped.
    env = admin_env(certs, f"{pair.first.address},{pair.second.address}")
    assert listed_nodes(fleetctl(env, "nodes", "list", "-o", "json")) == ["node-b"]


def test_a_name_with_several_records_is_several_managers(
    pair: Pair, certs: Path, tmp_path: Path
) -> None:
    """``managers.test`` answers 127.0.0.2 (nothing listens there) then 127.0.0.1: the
    first is refused, the second is the Manager."""
    from schema import admin_pb2

    port = pair.first.grpc_port
    lookups: list[str] = []

    async def dns(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        lookups.append(host)
        if host != "managers.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in ("127.0.0.2", "127.0.0.1")
        ]

    settings = settings_for(certs, tmp_path, f"managers.test:{port}")
    target = Target("manager", settings.manager)

    async def session() -> None:
        async with Connection(settings, target) as conn:
            conn._router = Router(  # the same router, asking a stand-in DNS server
                target=target,
                settings=settings,
                ssl_context=conn._ssl,
                explain=conn._explain_at,
                resolve=dns,
            )
            reply = await conn.call(
                conn.admin().ListNodes(admin_pb2.ListNodesRequest(), timeout=conn.timeout)
            )
            assert [n.node_id for n in reply.nodes] == ["node-a"]
            assert str(conn.router.current()) == f"manager at 127.0.0.1:{port} (managers.test)"
            endpoints = await conn.router.endpoints()
            assert [e.address for e in endpoints] == [f"127.0.0.2:{port}", f"127.0.0.1:{port}"]

    asyncio.run(session())
    assert lookups == ["managers.test"]  # once per invocation


# ---- a Manager that hangs up after the request ------------------------------------------------


@dataclass
class HangUp:
    """A stand-in Manager: TLS and HTTP/2 like a real one; it reads each request in full,
    then closes the connection without answering."""

    port: int
    requests: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def hang_up_manager(certs: Path) -> Iterator[HangUp]:
    import h2.config
    import h2.connection
    import h2.events

    from common.tls import TLSFiles, server_context

    files = TLSFiles(certs / "manager.crt", certs / "manager.key", certs / "ca.crt")
    info = HangUp(port=free_port())
    loop = asyncio.new_event_loop()
    started = threading.Event()

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            self.h2.initiate_connection()
            self.paths: dict[int, str] = {}
            transport.write(self.h2.data_to_send())

        def data_received(self, data: bytes) -> None:
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = {bytes(k): bytes(v) for k, v in event.headers}
                    self.paths[event.stream_id] = headers[b":path"].decode()
                elif isinstance(event, h2.events.StreamEnded):
                    info.requests.append(self.paths[event.stream_id].rsplit("/", 1)[-1])
                    self.transport.close()  # the request is in: hang up, no answer
                    return
            self.transport.write(self.h2.data_to_send())

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            loop.create_server(Protocol, "127.0.0.1", info.port, ssl=server_context(files))
        )
        started.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield info
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_a_write_whose_connection_dies_after_sending_is_not_sent_again(
    pair: Pair, certs: Path
) -> None:
    """OperateAgent reached the first Manager, which hung up without answering: it may
    have been applied, so it is not sent to the second one (which would answer NOT_FOUND,
    exit 3): one line, exit 5. A read-only call in the same spot moves on."""
    with hang_up_manager(certs) as stand_in:
        env = admin_env(certs, f"{stand_in.address},{pair.first.address}")
        proc = fleetctl(env, "agent", "restart", "node-a", "web")
        assert proc.returncode == ExitCode.UNAVAILABLE, proc
        assert stand_in.requests == ["OperateAgent"]
        assert one_line(proc.stderr) == (
            f"fleetctl: the manager at {stand_in.address} stopped answering (connection "
            "closed) after the request was sent: it may have been applied; check with "
            "'fleetctl agents list node-a'"
        )

        listed = fleetctl(env, "nodes", "list", "-o", "json")
        assert listed_nodes(listed) == ["node-a"]
        assert stand_in.requests == ["OperateAgent", "ListNodes"]
