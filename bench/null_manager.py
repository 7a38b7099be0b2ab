"""A ManagerService that answers at once and stores nothing: the transport's ceiling.

Same stack as the real Manager up to the handlers (grpclib, mutual TLS, GuardedService
with its role check and bounded reads, betterproto with the rust codec), none of the
store. Running the fleet simulator against it separates what the transport costs from
what the Manager's own work costs:

    python -m bench.null_manager --listen 127.0.0.1:50061 --cert-dir ~/.cache/fleet-bench/ca
    python -m bench.fleetsim --manager 127.0.0.1:50061 --ca-dir ~/.cache/fleet-bench/ca \
        --manager-pid <pid> --nodes 10000 --ramp 60 --duration 180
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpclib.server import Server

from bench._common import DEFAULT_CACHE, dev_certs, raise_fd_limit
from common.rpc import GuardedService
from common.tls import TLSFiles, server_context
from schema import manager_pb


class NullManager(manager_pb.ManagerServiceBase):
    """Acknowledges every call; counts them."""

    def __init__(self) -> None:
        self.calls = 0

    async def register_node(
        self, message: manager_pb.RegisterNodeRequest
    ) -> manager_pb.RegisterNodeResponse:
        self.calls += 1
        return manager_pb.RegisterNodeResponse(success=True)

    async def heartbeat(self, message: manager_pb.HeartbeatRequest) -> manager_pb.HeartbeatResponse:
        self.calls += 1
        return manager_pb.HeartbeatResponse(success=True)

    async def report_metrics(
        self, message: manager_pb.ReportMetricsRequest
    ) -> manager_pb.ReportMetricsResponse:
        self.calls += 1
        return manager_pb.ReportMetricsResponse(success=True, accepted=len(message.metrics))

    async def sync_agent_states(
        self, message: manager_pb.SyncAgentStatesRequest
    ) -> manager_pb.SyncAgentStatesResponse:
        self.calls += 1
        return manager_pb.SyncAgentStatesResponse(success=True)


POLICY = {name: {"node"} for name in ("RegisterNode", "Heartbeat", "ReportMetrics",
                                       "SyncAgentStates")}  # fmt: skip


async def serve(host: str, port: int, cert_dir: Path, *, max_seconds: float) -> None:
    files = TLSFiles(cert_dir / "manager.crt", cert_dir / "manager.key", cert_dir / "ca.crt")
    server = Server([GuardedService(NullManager(), policy=POLICY)])
    await server.start(host, port, ssl=server_context(files))
    print(f"null manager ready on {host}:{port} pid {os.getpid()}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_seconds)
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="null_manager", description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:50061")
    parser.add_argument("--cert-dir", type=Path, default=DEFAULT_CACHE / "ca")
    parser.add_argument("--max-seconds", type=float, default=3600, help="exit after this long")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if host != "127.0.0.1":
        parser.error("listen on 127.0.0.1 only")
    raise_fd_limit()
    dev_certs(args.cert_dir)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(host, int(port), args.cert_dir, max_seconds=args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
