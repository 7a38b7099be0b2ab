"""1,000 hosts joining one Manager with one token at once: time until all are online.

Each simulated host runs the real client side of ``fleet-daemon join``
(:func:`daemon.join.enroll`): a TLS connection that fetches the root and checks its hash,
then a second one verified against that root that sends the token and a CSR whose key
was generated just before (EC P-256). The Manager is a real ``fleet-manager`` process on
SQLite (or ``--db``) with an issuing CA made by certgen; it checks the token, counts the
use in the database, signs, records the certificate and the node's labels. Then the host
does what its Daemon does first: with the new certificate (written to a temp directory),
RegisterNode and a Heartbeat on the Manager's main port. The clock stops when the
Manager lists every host online (its token's label included).

    python -m bench.join --hosts 1000 --parallel 50

Prints joins per second, latency percentiles, and the CPU each side used (both share the
machine's cores: the simulated hosts' key generation and TLS handshakes are here too).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpclib.exceptions import GRPCError

from bench._common import (
    emit_json,
    free_port,
    latency_summary,
    machine_info,
    print_table,
    process_cpu_seconds,
    raise_fd_limit,
    spawn_manager,
)
from bench._fakefleet import manager_channel, node_files
from common.certgen import init_ca, intermediate, issue, root_hash
from common.tls import TLSFiles
from daemon.join import JoinArgs, JoinError, enroll
from schema import admin_pb, manager_pb


async def _create_token(address: str, certs: Path, uses: int) -> str:
    channel = manager_channel(address, node_files(certs, "admin"))
    try:
        stub = admin_pb.AdminServiceStub(channel, timeout=30)
        reply = await stub.create_join_token(
            admin_pb.CreateJoinTokenRequest(
                ttl_seconds=3600, max_uses=uses, labels={"bench": "join"}
            )
        )
        return reply.token
    finally:
        channel.close()


async def _online(address: str, certs: Path) -> int:
    channel = manager_channel(address, node_files(certs, "admin"))
    try:
        stub = admin_pb.AdminServiceStub(channel, timeout=30)
        reply = await stub.list_nodes(
            admin_pb.ListNodesRequest(status="online", labels={"bench": "join"})
        )
        return len(reply.nodes)
    finally:
        channel.close()


def _host_files(joined: Any, files_dir: Path) -> TLSFiles:
    """The joined host's key, chain and root as files (ssl loads certificates from files);
    three small writes, as `fleet-daemon join` makes on every host."""
    files_dir.mkdir(parents=True)
    files = TLSFiles(files_dir / "node.crt", files_dir / "node.key", files_dir / "ca.crt")
    files.cert_file.write_bytes(joined.cert_pem)
    files.key_file.write_bytes(joined.key_pem)
    files.ca_file.write_bytes(joined.ca_pem)
    return files


async def _come_online(address: str, joined: Any, files_dir: Path) -> None:
    """What a joined Daemon does first: register and heartbeat with its new certificate."""
    channel = manager_channel(address, _host_files(joined, files_dir))
    try:
        stub = manager_pb.ManagerServiceStub(channel, timeout=30)
        await stub.register_node(
            manager_pb.RegisterNodeRequest(
                node_id=joined.node_id,
                hostname=joined.node_id,
                daemon_address="127.0.0.1:1",
                heartbeat_interval_seconds=60,
                instance_id="bench",
            )
        )
        await stub.heartbeat(
            manager_pb.HeartbeatRequest(
                node_id=joined.node_id, timestamp=int(time.time()), instance_id="bench"
            )
        )
    finally:
        channel.close()


async def _join_all(
    manager: str,
    enroll_address: str,
    token: str,
    ca_hash: str,
    hosts: int,
    parallel: int,
    work: Path,
) -> tuple[list[float], list[str]]:
    gate = asyncio.Semaphore(parallel)
    latencies: list[float] = []
    errors: list[str] = []

    async def one(i: int) -> None:
        args = JoinArgs(
            manager=enroll_address,
            token=token,
            ca_hash=ca_hash,
            node_id=f"bench-host-{i:05d}",
            dir=Path("/nonexistent"),  # enroll() writes nothing
            state_dir=Path("/nonexistent"),
            start=False,
            force=False,
        )
        async with gate:
            started = time.perf_counter()
            try:
                joined = await enroll(args, hostname=args.node_id)
                await _come_online(manager, joined, work / args.node_id)
            except (JoinError, GRPCError, OSError) as exc:
                errors.append(str(exc))
                return
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(one(i) for i in range(hosts)))
    return latencies, errors


def run(hosts: int, parallel: int, db_url: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleet-bench-join-") as tmp:
        pki = Path(tmp) / "pki"
        init_ca(pki)
        issue(pki, "manager", "manager", sans=("localhost", "127.0.0.1"))
        issue(pki, "admin", "admin")
        intermediate(pki, "bench-issuer")
        enroll_port = free_port()
        os.environ.update(
            {
                "FLEET_MANAGER_ENROLL_LISTEN": f"127.0.0.1:{enroll_port}",
                "FLEET_MANAGER_ENROLL_CA_CERT": str(pki / "bench-issuer.crt"),
                "FLEET_MANAGER_ENROLL_CA_KEY": str(pki / "bench-issuer.key"),
                "FLEET_MANAGER_ENROLL_JOIN_RATE_PER_MINUTE": str(hosts * 10),
            }
        )
        with spawn_manager(cert_dir=pki, db_url=db_url) as mgr:
            token = asyncio.run(_create_token(mgr.address, pki, hosts))
            cpu_mgr0, cpu_self0 = process_cpu_seconds(mgr.pid), process_cpu_seconds()
            started = time.perf_counter()
            latencies, errors = asyncio.run(
                _join_all(
                    mgr.address,
                    f"127.0.0.1:{enroll_port}",
                    token,
                    root_hash(pki),
                    hosts,
                    parallel,
                    Path(tmp) / "hosts",
                )
            )
            joined_s = time.perf_counter() - started
            online = 0
            while time.perf_counter() - started < joined_s + 60:
                online = asyncio.run(_online(mgr.address, pki))
                if online >= len(latencies):
                    break
                time.sleep(0.2)
            wall = time.perf_counter() - started
            cpu_mgr = process_cpu_seconds(mgr.pid) - cpu_mgr0
            cpu_self = process_cpu_seconds() - cpu_self0
    joined = len(latencies)  # joined and registered
    return {
        "hosts": hosts,
        "parallel": parallel,
        "joined": joined,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "online": online,
        "joined_s": joined_s,
        "wall_s": wall,
        "joins_per_s": joined / joined_s if joined_s else 0.0,
        **latency_summary(latencies),
        "manager_cpu_s": cpu_mgr,
        "manager_cpu_ms_per_join": cpu_mgr / joined * 1000 if joined else 0.0,
        "hosts_cpu_s": cpu_self,
        "db": "postgresql" if db_url else "sqlite",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--parallel", type=int, default=50, help="joins in flight at once")
    p.add_argument("--db", help="Manager database URL (default: SQLite in a temp dir)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    raise_fd_limit()
    result = run(args.hosts, args.parallel, args.db)
    if args.json:
        emit_json({"machine": machine_info(), "result": result})
    else:
        print_table(
            [
                "hosts",
                "parallel",
                "joined",
                "errors",
                "all joined s",
                "all online s",
                "joins/s",
                "p50 ms",
                "p99 ms",
                "max ms",
                "mgr CPU s",
                "mgr ms/join",
                "hosts CPU s",
            ],
            [
                [
                    result["hosts"],
                    result["parallel"],
                    result["joined"],
                    result["errors"],
                    result["joined_s"],
                    result["wall_s"],
                    result["joins_per_s"],
                    result["p50_ms"],
                    result["p99_ms"],
                    result["max_ms"],
                    result["manager_cpu_s"],
                    result["manager_cpu_ms_per_join"],
                    result["hosts_cpu_s"],
                ]
            ],
        )
        if result["first_error"]:
            print(f"first error: {result['first_error']}")
    return 0 if result["errors"] == 0 and result["online"] == result["hosts"] else 1


if __name__ == "__main__":
    sys.exit(main())
