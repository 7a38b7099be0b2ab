"""1,000 hosts joining one Manager with one token: how long onboarding a fleet takes.

Each simulated host runs the real client side of ``fleet-daemon join``
(:func:`daemon.join.enroll`): a TLS connection that fetches the root and checks its hash,
then a second one verified against that root that sends the token and a CSR whose key
was generated just before (EC P-256). The Manager is a real ``fleet-manager`` process on
SQLite (or ``--db``) with an issuing CA made by certgen; it checks the token, counts the
use in the database, signs, records the certificate and the node's labels. Nothing is
written to disk on the "host" side: that is the part that does not scale with the fleet.

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

from grpclib.client import Channel

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
from common.certgen import init_ca, intermediate, issue, root_hash
from common.tls import TLSFiles, client_context
from daemon.join import JoinArgs, JoinError, enroll
from schema import admin_pb


async def _create_token(address: str, certs: Path, uses: int) -> str:
    host, port = address.rsplit(":", 1)
    files = TLSFiles(certs / "admin.crt", certs / "admin.key", certs / "ca.crt")
    channel = Channel(host, int(port), ssl=client_context(files, expect_role="manager"))
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


async def _join_all(
    enroll_address: str, token: str, ca_hash: str, hosts: int, parallel: int
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
                await enroll(args, hostname=args.node_id)
            except JoinError as exc:
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
                _join_all(f"127.0.0.1:{enroll_port}", token, root_hash(pki), hosts, parallel)
            )
            wall = time.perf_counter() - started
            cpu_mgr = process_cpu_seconds(mgr.pid) - cpu_mgr0
            cpu_self = process_cpu_seconds() - cpu_self0
    joined = len(latencies)
    return {
        "hosts": hosts,
        "parallel": parallel,
        "joined": joined,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "wall_s": wall,
        "joins_per_s": joined / wall if wall else 0.0,
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
                "wall s",
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
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
