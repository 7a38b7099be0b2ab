"""Fleet-wide ``fleetctl agent restart AGENT --all`` across N simulated Daemons.

A thousand real ``fleet-daemon`` processes do not fit on a 2-core machine, so each
Daemon is a lightweight but real grpclib DaemonService server in this process: its own
node certificate (the Manager checks it is *that* node's), its own port on 127.0.0.1,
answering ListAgents and OperateAgent at once. Each registers with a real Manager
(RegisterNode with its address, SyncAgentStates with the agent), then the real
``fleetctl`` command is run and timed: ListNodes + ListAgents + one OperateAgent per node
through the Manager, which dials every Daemon over mTLS (first contact: a handshake each).

    python -m bench.fleet_restart --nodes 1000
    python -m bench.fleet_restart --nodes 1000 --parallel 10,50,200
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench._common import (
    DEFAULT_CACHE,
    console_script,
    emit_json,
    ensure_node_certs,
    fleetctl_env,
    machine_info,
    print_table,
    process_cpu_seconds,
    raise_fd_limit,
    spawn_manager,
)
from bench._fakefleet import serve_in_thread
from common.rpc import current_call
from schema import daemon_pb, manager_pb

TARGET_SECONDS = 10.0
AGENT = "web"


class FakeDaemon(daemon_pb.DaemonServiceBase):
    """Answers the Manager's agent calls for one agent, instantly; counts restarts."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.restarts = 0
        self.started = int(time.time())

    def info(self) -> daemon_pb.AgentInfo:
        return daemon_pb.AgentInfo(
            id=AGENT, type="web", status="RUNNING", pid=4242 + self.restarts, version="1.0.0",
            start_time=self.started, restart_count=self.restarts, last_heartbeat=int(time.time()),
        )  # fmt: skip

    async def list_agents(
        self, message: daemon_pb.ListAgentsRequest
    ) -> daemon_pb.ListAgentsResponse:
        return daemon_pb.ListAgentsResponse(agents=[self.info()])

    async def operate_agent(
        self, message: daemon_pb.AgentOperationRequest
    ) -> daemon_pb.AgentOperationResponse:
        assert current_call().identity.role in ("manager", "admin")
        if message.agent_id != AGENT:
            return daemon_pb.AgentOperationResponse(success=False, error_message="no such agent")
        if message.operation == "restart":
            self.restarts += 1
            self.started = int(time.time())
        return daemon_pb.AgentOperationResponse(success=True, agent=self.info())


POLICY = {"ListAgents": {"manager", "admin"}, "OperateAgent": {"manager", "admin"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet_restart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--parallel", default="10,100", help="fleetctl --parallel values to time")
    parser.add_argument("--db", help="database URL for the Manager (default: SQLite)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    raise_fd_limit()
    parallels = [int(p) for p in args.parallel.split(",") if p]
    cert_dir = args.cache_dir / "ca"
    names = [f"rst-{i:05d}" for i in range(args.nodes)]
    rows, runs = [], []
    with spawn_manager(cert_dir=cert_dir, db_url=args.db) as manager:
        node_dir = ensure_node_certs(cert_dir, names, cache_dir=args.cache_dir)
        t = time.perf_counter()
        fleet = serve_in_thread(
            address=manager.address,
            cert_dir=node_dir,
            names=names,
            make=FakeDaemon,
            policy=POLICY,
            labels=lambda _name: {"bench": "restart"},
            states=lambda _daemon: [
                manager_pb.AgentState(
                    agent_id=AGENT, status="RUNNING", pid=4242, type="web", version="1.0.0"
                )
            ],
        )
        daemons = fleet.daemons
        setup = time.perf_counter() - t
        print(f"{args.nodes} simulated daemons up and registered in {setup:.1f}s", file=sys.stderr)
        env = fleetctl_env(manager.address, cert_dir)
        try:
            for attempt, parallel in enumerate(parallels):
                before = sum(d.restarts for d in daemons)
                cpu0 = process_cpu_seconds(manager.pid)
                own0 = time.process_time()
                kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                proc = subprocess.run(
                    [console_script("fleetctl"), "--timeout", "60s", "agent", "restart", AGENT,
                     "--all", "--parallel", str(parallel), "-o", "json"],
                    capture_output=True, text=True, env=env, timeout=600,
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
                wall = time.perf_counter() - t0
                kids = resource.getrusage(resource.RUSAGE_CHILDREN)
                ctl_cpu = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
                # The simulated Daemons share this process (one event loop in a thread):
                # on a real fleet each has a host of its own.
                sim_cpu = time.process_time() - own0
                restarted = sum(d.restarts for d in daemons) - before
                first = attempt == 0
                rows.append([
                    parallel, "first (new channels)" if first else "channels reused",
                    restarted, proc.returncode, wall, TARGET_SECONDS,
                    100 * (process_cpu_seconds(manager.pid) - cpu0) / wall,
                    100 * ctl_cpu / wall, 100 * sim_cpu / wall,
                ])  # fmt: skip
                runs.append({"parallel": parallel, "wall_s": wall, "restarted": restarted,
                             "exit_code": proc.returncode, "first_contact": first,
                             "stderr_tail": proc.stderr[-500:]})  # fmt: skip
                if proc.returncode != 0:
                    print(proc.stderr[-2000:], file=sys.stderr)
        finally:
            fleet.close()
    out = sys.stderr if args.json else sys.stdout
    print(f"fleetctl agent restart {AGENT} --all across {args.nodes:,} simulated Daemons",
          file=out)  # fmt: skip
    print_table(
        ["--parallel", "manager->daemon channels", "restarted", "exit", "wall s", "target s",
         "mgr cpu %", "fleetctl cpu %", "daemons cpu %"],
        rows,
        file=out,
    )  # fmt: skip
    if args.json:
        emit_json({"nodes": args.nodes, "runs": runs, "setup_s": setup, "machine": machine_info()})
    return 0 if all(r["exit_code"] == 0 and r["restarted"] == args.nodes for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
