"""Issue 14 item 3, the Daemon's side: several Managers in ``manager.address``.

* the forms the key takes (TOML list, comma-separated in the file, ``FLEET_MANAGER`` and
  ``--manager``) and the lists refused as config errors, by a real ``fleet-daemon`` too;
* names: ``localhost`` through the real resolver, and a name with several records through
  a stand-in for a DNS server (the real resolver cannot be made to answer that here),
  with the Daemon's real Manager link against a real Manager: the next record is tried,
  and names are resolved again after failures;
* the Manager's certificate is checked at every address: a server with another role's
  certificate is passed over and never sees a request;
* the real thing (slow, PostgreSQL): two ``fleet-manager`` processes on one database and
  a ``fleet-daemon`` given both. The Manager it talks to is killed with SIGKILL while a
  metrics report is on its way to it — then restarted, and the other one killed. The node never goes
  offline, heartbeats go on, every metric report the Daemon queued is stored exactly
  once, it registers once, and each switch is logged once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from grpclib.server import Server
from harness import console_script, free_port, run_cli, wait_until
from harness.daemon import scrape_metrics, start_daemon
from harness.manager import ManagerProc, start_manager, write_manager_config

from common.rpc import GuardedService
from common.tls import TLSFiles, client_context, server_context
from daemon.config import (
    ConfigError,
    ManagerSettings,
    TLSSettings,
    build_config,
    from_mapping,
    load_config_file,
)
from daemon.hostinfo import HostFacts, HostMetrics
from daemon.manager_addresses import ManagerAddresses, start_index
from daemon.manager_client import ManagerClient, NodeIdentity
from daemon.outbox import Outbox
from schema import manager_pb

TLS = {"cert_file": "/c.crt", "key_file": "/c.key", "ca_file": "/ca.crt"}


# ---- configuration ----------------------------------------------------------------


def test_every_form_of_the_address_list_means_the_same(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(
        'node_id = "n1"\n[manager]\naddress = ["10.0.0.5:50051", "mgr.example.net:50051"]\n'
        '[manager.tls]\ncert_file = "/c.crt"\nkey_file = "/c.key"\nca_file = "/ca.crt"\n'
    )
    wanted = ("10.0.0.5:50051", "mgr.example.net:50051")
    assert load_config_file(path, {}, {}).manager.addresses == wanted
    text = "10.0.0.5:50051, mgr.example.net:50051"
    in_file = from_mapping({"node_id": "n1", "manager": {"address": text, "tls": TLS}})
    assert in_file.manager.addresses == wanted
    env = build_config({"node_id": "n1", "manager": {"tls": TLS}}, {"FLEET_MANAGER": text}, {})
    assert env.manager.addresses == wanted
    flag = build_config(
        {"node_id": "n1", "manager": {"address": "x:1", "tls": TLS}},
        {"FLEET_MANAGER": "y:2"},
        {("manager", "address"): "10.0.0.5:50051,mgr.example.net:50051"},
    )
    assert flag.manager.addresses == wanted
    one = from_mapping({"node_id": "n1", "manager": {"tls": TLS}})
    assert one.manager.addresses == ("127.0.0.1:50051",)
    v6 = from_mapping({"node_id": "n1", "manager": {"address": ["[::1]:50051"], "tls": TLS}})
    assert v6.manager.addresses == ("[::1]:50051",)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ([], "key 'manager.address' is an empty list"),
        ("", "key 'manager.address' is empty"),
        (["10.0.0.5:50051", 7], "key 'manager.address' must be a HOST:PORT string or a list"),
        (["10.0.0.5:50051", "mgr.example.net"], "'mgr.example.net' is not HOST:PORT"),
        ("10.0.0.5:50051,,10.0.0.6:50051", "has an empty entry"),
        (["10.0.0.5:50051", "10.0.0.5:50051"], "lists '10.0.0.5:50051' twice"),
        (["10.0.0.5:0"], "'10.0.0.5:0': the port must be 1-65535"),
        (["https://mgr.example.net:50051"], "is not HOST:PORT"),
        ({"host": "mgr"}, "must be a HOST:PORT string or a list"),
        ([f"10.0.0.{i}:50051" for i in range(40)], "lists 40 addresses (at most 32)"),
    ],
)
def test_bad_address_lists_are_refused(address: Any, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_mapping({"node_id": "n1", "manager": {"address": address, "tls": TLS}})
    assert message in str(exc.value)


def test_a_bad_address_list_in_daemon_toml_stops_the_daemon_with_one_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(
        'node_id = "n1"\n'
        "[manager]\n"
        'timeout = "5s"\n'
        'address = ["10.0.0.5:50051", "mgr.example.net"]\n'
        "[manager.tls]\n"
        "enabled = false\n"
    )
    result = run_cli([console_script("fleet-daemon"), "--config", str(path)], timeout=30)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"fleet-daemon: config error: {path} line 4: key 'manager.address': "
        "'mgr.example.net' is not HOST:PORT"
    ], result.stderr


# ---- names ------------------------------------------------------------------------


def test_localhost_is_resolved_on_the_event_loop_into_its_addresses() -> None:
    wanted = {
        info[4][0]
        for info in socket.getaddrinfo("localhost", 50051, type=socket.SOCK_STREAM)
        if info[0] in (socket.AF_INET, socket.AF_INET6)
    }
    addresses = ManagerAddresses(
        configured=["localhost:50051", "127.0.0.1:50051", "10.0.0.6:50052"],
        start_key="node-a",
        timeout=10,
    )
    assert addresses.needs_lookup

    async def resolve() -> None:
        await addresses.resolve()

    asyncio.run(resolve())
    found = addresses.endpoints
    assert addresses.lookups == 1  # IP addresses are not looked up
    assert {e.host for e in found if e.source == "localhost:50051"} == wanted
    assert "127.0.0.1" in wanted
    # 127.0.0.1:50051 twice (the name's record and the address): dialled once per round.
    assert [e.address for e in found].count("127.0.0.1:50051") == 1
    assert found[-1].address == "10.0.0.6:50052"
    by_name = next(e for e in found if e.source == "localhost:50051")
    assert str(by_name) == f"{by_name.address} (localhost)"
    if "::1" in wanted:
        assert any(e.address == "[::1]:50051" for e in found)


class StandInDNS:
    """Answers the event loop's ``getaddrinfo`` for one name the way a DNS server with
    several A records would; each lookup takes the next answer (the last one repeats)."""

    def __init__(self, name: str, answers: Sequence[Sequence[str]]) -> None:
        self.name = name
        self.answers = [list(a) for a in answers]
        self.lookups = 0

    async def __call__(self, host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        if host != self.name:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = self.answers[min(self.lookups, len(self.answers) - 1)]
        self.lookups += 1
        await asyncio.sleep(0)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answer]


def _link(
    tmp_path: Path,
    certs: Path,
    address: str,
    *,
    node_id: str = "node-a",
    resolve: Callable[..., Awaitable[list[tuple[Any, ...]]]] | None = None,
    timeout: float = 5.0,
) -> ManagerClient:
    """The Daemon's real Manager link (as in test_faults_outage), quick to give up."""
    files = TLSFiles(certs / f"{node_id}.crt", certs / f"{node_id}.key", certs / "ca.crt")
    settings = ManagerSettings(
        address=address,
        timeout=timeout,
        heartbeat_interval=1.0,
        reconnect_interval=1.0,
        metrics_interval=3600.0,
        sync_interval=60.0,
        tls=TLSSettings(True, str(files.cert_file), str(files.key_file), str(files.ca_file)),
    )
    return ManagerClient(
        settings=settings,
        node=NodeIdentity(
            node_id=node_id,
            labels={},
            facts=HostFacts(node_id, "127.0.0.1", "linux", "x86_64", "test"),
            daemon_address="127.0.0.1:1",
        ),
        ssl_context=client_context(files, expect_role="manager"),
        outbox=Outbox(directory=tmp_path / f"outbox-{node_id}", max_reports=100),
        host_metrics=HostMetrics(),
        agent_states=lambda: [],
        resolve=resolve,
    )


async def _until(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def _switch_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "switching to" in r.getMessage()]


def test_a_name_with_several_records_fails_over_to_the_record_that_answers(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mgr = start_manager(tmp_path, certs)
    port = mgr.grpc_port
    # 127.0.0.3 is on the loopback but nothing listens there: a Manager that is down.
    # It is put where node-a starts in a list of two, so the live one is the *next*.
    dead, live = "127.0.0.3", "127.0.0.1"
    records = [live, live]
    records[start_index("node-a", 2)] = dead
    dns = StandInDNS("managers.fleet.test", [records])
    caplog.set_level(logging.INFO, logger="daemon.manager_client")

    async def scenario() -> None:
        async with _link(tmp_path, certs, f"managers.fleet.test:{port}", resolve=dns) as link:
            await _until(lambda: link.connected, "connected through the second record")
            assert link.endpoint is not None
            assert link.endpoint.address == f"{live}:{port}"
            assert link.endpoint.source == f"managers.fleet.test:{port}"
            assert link.switches == 1 and link.registrations == 1

    try:
        asyncio.run(scenario())
    finally:
        mgr.stop()
    (line,) = _switch_lines(caplog)
    assert line.startswith(f"Manager {dead}:{port} (managers.fleet.test) unavailable ("), line
    assert f"; switching to {live}:{port} (managers.fleet.test) in " in line, line
    assert dns.lookups == 1  # the live record answered before a round of failures


def test_a_name_is_resolved_again_after_failures(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The Manager moved: the name first still answers the old address (nothing there),
    then the new one. The Daemon looks it up again after each round of failures."""
    mgr = start_manager(tmp_path, certs)
    port = mgr.grpc_port
    dns = StandInDNS("manager.fleet.test", [["127.0.0.3"], ["127.0.0.3"], ["127.0.0.1"]])
    caplog.set_level(logging.INFO, logger="daemon.manager_client")

    async def scenario() -> None:
        async with _link(tmp_path, certs, f"manager.fleet.test:{port}", resolve=dns) as link:
            await _until(lambda: link.connected, "connected at the new address")
            assert link.endpoint is not None
            assert link.endpoint.address == f"127.0.0.1:{port}"
            assert link.registrations == 1

    try:
        asyncio.run(scenario())
    finally:
        mgr.stop()
    assert dns.lookups == 3
    # The same address again after the second lookup: a retry, not a switch.
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 1 and retries[0].startswith(
        f"Manager at 127.0.0.3:{port} (manager.fleet.test) unreachable ("
    ), retries
    (line,) = _switch_lines(caplog)
    assert line.startswith(f"Manager 127.0.0.3:{port} (manager.fleet.test) unavailable ("), line
    assert f"switching to 127.0.0.1:{port} (manager.fleet.test) in " in line, line


def test_a_name_that_does_not_resolve_leaves_the_other_addresses(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mgr = start_manager(tmp_path, certs)
    dns = StandInDNS("managers.fleet.test", [["127.0.0.1"]])  # knows no other name
    caplog.set_level(logging.INFO, logger="daemon.manager_client")
    address = f"gone.fleet.test:{mgr.grpc_port},{mgr.address}"

    async def scenario() -> None:
        async with _link(tmp_path, certs, address, resolve=dns) as link:
            await _until(lambda: link.connected, "connected to the address that resolves")
            assert link.endpoint is not None and link.endpoint.address == mgr.address
            assert link.registrations == 1

    try:
        asyncio.run(scenario())
    finally:
        mgr.stop()
    warnings = [r.getMessage() for r in caplog.records if "cannot resolve" in r.getMessage()]
    assert warnings == [
        "manager.address: cannot resolve gone.fleet.test: Name or service not known "
        "(trying the other addresses)"
    ], warnings


def test_an_address_without_a_manager_certificate_is_passed_over(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The handshake check (``expect_role="manager"``) holds at every address: a server
    presenting node-b's certificate is left for the next address, and is never asked
    anything."""
    seen: list[str] = []

    class Trap(manager_pb.ManagerServiceBase):
        async def register_node(
            self, request: manager_pb.RegisterNodeRequest
        ) -> manager_pb.RegisterNodeResponse:
            seen.append(request.node_id)
            return manager_pb.RegisterNodeResponse(success=True)

        async def heartbeat(
            self, request: manager_pb.HeartbeatRequest
        ) -> manager_pb.HeartbeatResponse:
            seen.append(request.node_id)
            return manager_pb.HeartbeatResponse(success=True)

    mgr = start_manager(tmp_path, certs)
    impostor_port = free_port()
    addresses = [f"127.0.0.1:{mgr.grpc_port}"] * 2
    addresses[start_index("node-a", 2)] = f"127.0.0.1:{impostor_port}"
    caplog.set_level(logging.INFO, logger="daemon.manager_client")

    async def scenario() -> None:
        impostor = Server(
            [GuardedService(Trap(), policy={"RegisterNode": {"node"}, "Heartbeat": {"node"}})]
        )
        files = TLSFiles(certs / "node-b.crt", certs / "node-b.key", certs / "ca.crt")
        await impostor.start("127.0.0.1", impostor_port, ssl=server_context(files))
        try:
            async with _link(tmp_path, certs, ",".join(addresses)) as link:
                await _until(lambda: link.connected, "connected to the real Manager")
                assert link.endpoint is not None
                assert link.endpoint.port == mgr.grpc_port
        finally:
            impostor.close()
            await impostor.wait_closed()

    try:
        asyncio.run(scenario())
    finally:
        mgr.stop()
    assert seen == []
    (line,) = _switch_lines(caplog)
    assert line.startswith(f"Manager 127.0.0.1:{impostor_port} unavailable ("), line
    assert "expected manager" in line, line


def test_a_dead_connection_is_left_and_a_manager_that_does_not_know_the_node_gets_it(
    tmp_path: Path, certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The Manager in use stops answering without closing anything (SIGSTOP: the kernel
    still accepts; no reset ever comes): its heartbeat ends by its deadline and the link
    moves on. The next Manager has a database of its own, so it answers NOT_FOUND and the
    node registers there — the one case where moving brings a RegisterNode."""
    first = start_manager(tmp_path / "first", certs)
    second = start_manager(tmp_path / "second", certs)
    addresses = [second.address, second.address]
    addresses[start_index("node-a", 2)] = first.address
    caplog.set_level(logging.INFO, logger="daemon.manager_client")

    async def scenario() -> None:
        async with _link(tmp_path, certs, ",".join(addresses), timeout=2.0) as link:
            await _until(lambda: link.connected and link.registrations == 1, "registered")
            assert link.endpoint is not None and link.endpoint.address == first.address
            first.signal(signal.SIGSTOP)
            stopped = time.monotonic()
            await _until(
                lambda: link.connected and link.registrations == 2, "registered at the second"
            )
            took = time.monotonic() - stopped
            print(f"SIGSTOP -> registered at the next Manager: {took:.1f} s")
            assert link.endpoint is not None and link.endpoint.address == second.address
            # heartbeat_interval (1 s) + deadline (2 s) + backoff (<= 1.2 s), with room.
            assert took < 10, took
            assert link.switches == 1

    try:
        asyncio.run(scenario())
    finally:
        first.signal(signal.SIGCONT)
        first.stop()
        second.stop()
    (line,) = _switch_lines(caplog)
    # grpclib ends a call past its deadline with TimeoutError("Deadline exceeded").
    assert line.startswith(f"Manager {first.address} unavailable ("), line
    assert "Deadline exceeded" in line or "DEADLINE_EXCEEDED" in line, line
    messages = [r.getMessage() for r in caplog.records]
    assert f"the Manager at {second.address} does not know node node-a: registering again" in (
        messages
    )


# ---- two real Managers on one PostgreSQL, a real Daemon, kill -9 -------------------

HEARTBEAT = 3.0  # the Manager's grace is 3 x this: 9 s
GRACE = 3 * HEARTBEAT
METRICS = 1.0  # one report a second (each with its own timestamp: see the assertions)
TYPES = ("cpu", "disk", "memory", "network")
_QUEUED = re.compile(r"queued metrics report (\d+): (\d+) samples at (\d+)")
_SENT = re.compile(r"sent metrics report (\d+) to (\S+)")
_SWITCH = re.compile(r"Manager (\S+) unavailable \((.*)\); switching to (\S+) in ([\d.]+)s")
_REACHED = re.compile(r"now talking to the Manager at (\S+), ([\d.]+)s after losing (\S+)")


def _sql(db_url: str, query: str, *args: object) -> list[Any]:
    import asyncpg

    async def go() -> list[Any]:
        conn = await asyncpg.connect(db_url.replace("postgres://", "postgresql://", 1))
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def _in_use(http_port: int) -> tuple[str, bool]:
    """(the Manager address the Daemon talks to or tries, whether it answers)."""
    metrics = scrape_metrics(http_port)
    (key,) = [k for k in metrics if k.startswith("fleet_daemon_manager_info{")]
    found = re.search(r'address="([^"]+)"', key)
    assert found is not None, key
    return found.group(1), metrics["fleet_daemon_manager_connected"] == 1


def _wait_in_use(http_port: int, address: str = "", *, what: str) -> str:
    """Wait until the Daemon talks to ``address`` (any Manager if "") and it answers."""

    def check() -> str:
        in_use, connected = _in_use(http_port)
        return in_use if connected and address in ("", in_use) else ""

    return str(wait_until(check, timeout=30, what=what))


def _sent_to(log: str, address: str) -> int:
    return sum(1 for m in _SENT.finditer(log) if m.group(2) == address)


def _unacknowledged(log: str) -> bool:
    """Whether a report was queued after the last one a Manager acknowledged."""
    sent = [int(m.group(1)) for m in _SENT.finditer(log)]
    return any(int(m.group(1)) > max(sent, default=0) for m in _QUEUED.finditer(log))


def _wait_sent(daemon: Any, address: str, count: int) -> None:
    wait_until(
        lambda: _sent_to(daemon.output(), address) >= count,
        timeout=30,
        what=f"{count} reports acknowledged by {address}",
    )


def _last_heartbeat(db_url: str) -> float:
    rows = _sql(db_url, "SELECT last_heartbeat FROM fleet_node WHERE node_id = $1", "node-a")
    return float(rows[0]["last_heartbeat"] or 0) if rows else 0.0


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_the_manager_in_use_and_the_daemon_carries_on_with_the_other(
    tmp_path: Path, certs: Path
) -> None:
    base = os.environ.get("FLEET_TEST_POSTGRES")  # what conftest's db_url reads
    if not base:
        pytest.skip(
            "needs two Managers on one PostgreSQL: set "
            "FLEET_TEST_POSTGRES=postgres://user@host:port/db (CI does)"
        )
    from harness.pg import throwaway_database

    with throwaway_database(base) as db_url:
        _kill_9_scenario(tmp_path, certs, db_url)


def _kill_9_scenario(tmp_path: Path, certs: Path, db_url: str) -> None:
    cfg = write_manager_config(
        tmp_path / "manager.toml",
        {"heartbeats": {"flush_interval": 0.2}, "liveness": {"sweep_interval": 0.2}},
    )
    args = ["--config", str(cfg)]
    managers: dict[str, ManagerProc] = {}
    for name in ("one", "two"):
        mgr = start_manager(tmp_path / name, certs, db_url=db_url, extra_args=args)
        managers[mgr.address] = mgr
    http_port = free_port()
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=0,
        manager_addresses=list(managers),
        heartbeat_interval=HEARTBEAT,
        metrics_interval=METRICS,
        config={"http": {"listen": f"127.0.0.1:{http_port}"}, "log": {"level": "debug"}},
    )
    kills: list[tuple[str, str, float]] = []  # (address killed, the other, wall time)
    try:
        # Twice: kill the Manager in use; wait until the Daemon talks to the other one and
        # has drained what it queued meanwhile; restart the killed one (it rejoins).
        for round_ in (1, 2):
            victim = _wait_in_use(http_port, what="the Daemon talking to a Manager")
            _wait_sent(daemon, victim, 3)
            (survivor,) = [a for a in managers if a != victim]
            # Kill it while a report is on its way: stop it, wait until the Daemon queued
            # (and sent) a report it cannot have answered, then SIGKILL.
            managers[victim].signal(signal.SIGSTOP)
            wait_until(
                lambda: _unacknowledged(daemon.output()),
                timeout=10,
                what="a report queued while the Manager is stopped",
            )
            managers[victim].kill()
            kills.append((victim, survivor, time.time()))
            assert _wait_in_use(http_port, survivor, what=f"round {round_}: moved") == survivor
            _wait_sent(daemon, survivor, _sent_to(daemon.output(), survivor) + 3)
            wait_until(
                lambda: scrape_metrics(http_port)["fleet_daemon_outbox_reports"] == 0,
                timeout=30,
                what=f"round {round_}: the queue drained into {survivor}",
            )
            killed = managers.pop(victim)
            managers[victim] = start_manager(
                killed.data_dir.parent,
                certs,
                db_url=db_url,
                extra_args=args,
                grpc_port=int(victim.rsplit(":", 1)[1]),
                log_name=f"manager-restarted-{round_}.log",
            )
        # Heartbeats go on past a whole grace after the last kill.
        last_kill = kills[-1][2]
        wait_until(
            lambda: _last_heartbeat(db_url) > last_kill + GRACE,
            timeout=GRACE + 30,
            what="heartbeats stored a grace after the last kill",
        )
        final = scrape_metrics(http_port)
    finally:
        code = daemon.stop()
        for mgr in managers.values():
            mgr.stop()
    assert code == 0
    log = daemon.log_path.read_text()
    _check_the_node_stayed_online(db_url)
    _check_every_report_stored_exactly_once(db_url, log, daemon.state_dir / "outbox")
    _check_one_registration_and_one_line_per_switch(log, kills, final)


def _check_the_node_stayed_online(db_url: str) -> None:
    events = _sql(
        db_url,
        "SELECT timestamp, new_status, reason FROM fleet_node_event WHERE node_id = $1 "
        "ORDER BY timestamp",
        "node-a",
    )
    assert [e["new_status"] for e in events if e["new_status"] == "offline"] == [], events
    # Online throughout; "stopped" only at the very end, when the Daemon stopped cleanly.
    assert [e["new_status"] for e in events][-1] == "stopped", events
    assert [e["new_status"] for e in events].count("stopped") == 1, events
    (node,) = _sql(db_url, "SELECT status FROM fleet_node WHERE node_id = $1", "node-a")
    assert node["status"] == "stopped"


def _check_every_report_stored_exactly_once(db_url: str, log: str, outbox: Path) -> None:
    queued = {int(m.group(1)): int(m.group(3)) for m in _QUEUED.finditer(log)}
    assert all(int(m.group(2)) == len(TYPES) for m in _QUEUED.finditer(log))
    assert len(set(queued.values())) == len(queued), "two reports with one timestamp"
    # Still queued when the Daemon stopped (the next Daemon would send them).
    left = {int(p.stem) for p in outbox.glob("*.pb")}
    acknowledged = {int(m.group(1)) for m in _SENT.finditer(log)}
    assert acknowledged.isdisjoint(left)
    assert set(queued) == acknowledged | left, set(queued) ^ (acknowledged | left)
    rows = _sql(
        db_url,
        "SELECT type, timestamp, count(*) AS n FROM fleet_metric_sample WHERE node_id = $1 "
        "GROUP BY type, timestamp",
        "node-a",
    )
    assert all(r["n"] == 1 for r in rows)
    stored = {(r["type"], r["timestamp"]) for r in rows}
    delivered = {(kind, queued[seq]) for seq in acknowledged for kind in TYPES}
    assert delivered <= stored, sorted(delivered - stored)
    # Nothing that was not queued; a report left in the outbox may have been stored (its
    # answer lost when the Daemon stopped) but once at most, as checked above.
    possible = {(kind, ts) for ts in queued.values() for kind in TYPES}
    assert stored <= possible, sorted(stored - possible)
    # The reports of each switch: queued (or in flight) after the last one the old Manager
    # acknowledged and before the next Manager answered. Delivered, all of them.
    windows = _reports_while_switching(log)
    assert len(windows) == 2 and all(windows), windows
    for window in windows:
        assert window <= acknowledged, (window, acknowledged)
        assert {(kind, queued[seq]) for seq in window for kind in TYPES} <= stored
    print(f"reports queued while switching: {[sorted(w) for w in windows]}")


def _reports_while_switching(log: str) -> list[set[int]]:
    lines = log.splitlines()
    windows = []
    for i, line in enumerate(lines):
        reached = _REACHED.search(line)
        if reached is None:
            continue
        old, j = reached.group(3), i
        while j > 0 and not ((m := _SENT.search(lines[j])) and m.group(2) == old):
            j -= 1
        windows.append({int(m.group(1)) for text in lines[j:i] if (m := _QUEUED.search(text))})
    return windows


def _check_one_registration_and_one_line_per_switch(
    log: str, kills: list[tuple[str, str, float]], final: dict[str, float]
) -> None:
    assert log.count("registered node node-a with the Manager at") == 1, log[-3000:]
    assert "registering again" not in log
    assert final["fleet_daemon_registrations_total"] == 1
    switches = _SWITCH.findall(log)
    assert [(old, new) for old, _why, new, _delay in switches] == [
        (victim, survivor) for victim, survivor, _t in kills
    ], switches
    assert final["fleet_daemon_manager_switches_total"] == 2
    reached = _REACHED.findall(log)
    assert len(reached) == 2, reached
    took = [float(seconds) for _at, seconds, _from in reached]
    # From the SIGKILL (test clock) to the log line of the next Manager's first answer.
    answered = [
        _log_time(line) for line in log.splitlines() if "now talking to the Manager" in line
    ]
    from_kill = [
        round(at - killed_at, 2) for at, (_v, _s, killed_at) in zip(answered, kills, strict=True)
    ]
    print(f"switch: loss noticed -> next Manager answered {took} s; SIGKILL -> {from_kill} s")
    assert all(t < 10 for t in took), took
    assert all(0 < t < GRACE for t in from_kill), from_kill


def _log_time(line: str) -> float:
    """The wall time of a Daemon log line (``2026-11-30 07:57:32,718 INFO ...``)."""
    import datetime

    stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()
