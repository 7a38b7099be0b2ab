"""What one admission refusal costs the server: CPU per refused call, nothing else running.

The overload benchmark (``bench/overload.py``) shows the end result; on a shared machine
its goodput moves with whatever else runs. This one isolates the refusal: a server built
like the Manager's (``GuardedService`` with a ReportMetrics budget of 1, a revocation
list, ``make_server`` with default limits, mTLS, uvloop) runs in a child process; one
ReportMetrics call holds the budget for the whole run, and grpcio callers (``--nodes``
certificates, each identified by a Heartbeat first, as a Daemon's open channel is) send
ReportMetrics calls of the overload benchmark's size (100 samples × 10 values) at
``--rate`` a second for ``--seconds``; every one is refused. The server's CPU seconds
divided by the refusals is the cost of one; its inverse, how many refusals one core
answers a second.

    python -m bench.refusal_cost
    python -m bench.refusal_cost --rate 1500 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    DEFAULT_CACHE,
    dev_certs,
    emit_json,
    ensure_node_certs,
    print_table,
    process_cpu_seconds,
    raise_fd_limit,
)

METHOD = "/fleet.manager.v1.ManagerService/"


async def _serve(certs: Path) -> None:
    """The child: serve until stdin closes; print the port once listening."""
    from common.overload import MethodLimit
    from common.revocation import RevocationList
    from common.rpc import GuardedService, make_server
    from common.tls import TLSFiles, server_context
    from schema import manager_pb

    class Held(manager_pb.ManagerServiceBase):
        async def heartbeat(
            self, request: manager_pb.HeartbeatRequest
        ) -> manager_pb.HeartbeatResponse:
            return manager_pb.HeartbeatResponse(success=True)

        async def report_metrics(
            self, request: manager_pb.ReportMetricsRequest
        ) -> manager_pb.ReportMetricsResponse:
            await asyncio.Event().wait()  # holds the budget until the server stops
            raise AssertionError("unreachable")

    guarded = GuardedService(
        Held(),
        policy={"Heartbeat": {"node"}, "ReportMetrics": {"node"}},
        max_in_flight={"ReportMetrics": MethodLimit(1)},
        revocations=RevocationList(),
        shed_observer=lambda _method, _reason: None,
        observer=lambda _method, _code, _seconds: None,
    )
    server = make_server([guarded])
    files = TLSFiles(certs / "manager.crt", certs / "manager.key", certs / "ca.crt")
    await server.start("127.0.0.1", 0, ssl=server_context(files))
    print(server._server.sockets[0].getsockname()[1], flush=True)  # type: ignore[union-attr]
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


def _channel(certs: Path, node: str, port: int) -> Any:
    import grpc

    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=(certs / f"{node}.key").read_bytes(),
        certificate_chain=(certs / f"{node}.crt").read_bytes(),
    )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


async def _drive(args: argparse.Namespace, certs: Path, port: int, pid: int) -> dict[str, Any]:
    import grpc

    from bench.overload import Node

    names = [f"ovl-{i:04d}" for i in range(args.nodes)]
    node_certs = ensure_node_certs(certs, names, cache_dir=DEFAULT_CACHE)
    nodes = [Node(n, _channel(node_certs, n, port)) for n in names]
    heartbeat = [
        node.channel.unary_unary(METHOD + "Heartbeat", lambda b: b, lambda b: b) for node in nodes
    ]
    try:
        await asyncio.gather(*(call(b"", timeout=10) for call in heartbeat))
        holder = asyncio.ensure_future(nodes[0].report(nodes[0].payload(), timeout=3600))
        await asyncio.sleep(0.5)
        outcomes: dict[str, int] = {}

        async def one(node: Node) -> None:
            try:
                await node.report(node.payload(), timeout=10)
                key = "OK"
            except grpc.aio.AioRpcError as exc:
                key = exc.code().name
            outcomes[key] = outcomes.get(key, 0) + 1

        cpu = process_cpu_seconds(pid)
        started = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        total = int(args.rate * args.seconds)
        for i in range(total):
            due = started + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(nodes[1 + i % (len(nodes) - 1)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        cpu = process_cpu_seconds(pid) - cpu
        holder.cancel()
        refused = outcomes.get("RESOURCE_EXHAUSTED", 0)
        return {
            "offered_per_s": total / elapsed,
            "refused": refused,
            "other": {k: v for k, v in outcomes.items() if k != "RESOURCE_EXHAUSTED"},
            "server_cpu_percent": 100.0 * cpu / elapsed,
            "cpu_ms_per_refusal": 1000.0 * cpu / refused if refused else 0.0,
            "refusals_per_core_s": refused / cpu if cpu else 0.0,
        }
    finally:
        for node in nodes:
            await node.channel.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--rate", type=float, default=1000.0, help="refused calls offered a second")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve", type=Path, help=argparse.SUPPRESS)  # the child's mode
    args = p.parse_args(argv)
    if args.serve is not None:
        import uvloop

        uvloop.run(_serve(args.serve))
        return 0
    raise_fd_limit()
    certs = dev_certs(DEFAULT_CACHE / "overload-ca")
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.refusal_cost", "--serve", str(certs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
        env=os.environ,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        results = [asyncio.run(_drive(args, certs, port, child.pid)) for _ in range(args.runs)]
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    if args.json:
        emit_json({"runs": results})
    else:
        print_table(
            [
                "run",
                "offered/s",
                "refused",
                "other",
                "server CPU %",
                "ms/refusal",
                "refusals/core-s",
            ],
            [
                [
                    i + 1,
                    r["offered_per_s"],
                    r["refused"],
                    sum(r["other"].values()),
                    r["server_cpu_percent"],
                    r["cpu_ms_per_refusal"],
                    r["refusals_per_core_s"],
                ]
                for i, r in enumerate(results)
            ],
        )
        for r in results:
            if r["other"]:
                print(f"other outcomes: {r['other']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
