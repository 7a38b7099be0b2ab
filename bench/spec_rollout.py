"""``fleetctl apply`` of one spec to N simulated Daemons: how long until every node runs it.

Each simulated Daemon (``bench/_fakefleet.py``) is a real DaemonService server with its
own node certificate that answers ApplySpecs the way a Daemon does before it starts
processes: it verifies every signed spec against the fleet CA (``common.specdoc.verify``:
the real cost), refuses a revision older than one it has seen, then reports its agents
RUNNING at that revision through a real SyncAgentStates, as a Daemon does after it
reconciled. Agent processes are not started: that is the Daemon's own local cost (see
``bench/agent_restart.py``), the same on 1 or 1,000 hosts.

Three applies are timed with the real ``fleetctl apply`` (which signs and then waits for
the rollout to finish): the first revision to every node at once, a changed command rolled
out with ``--max-unavailable 100%``, and one with the default waves (25 %). For each:
fleetctl's wall time (until the Manager saw every node converge) and the time until the
last simulated Daemon had applied the revision.

    python -m bench.spec_rollout --nodes 1000
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grpclib.client import Channel

from bench._common import (
    DEFAULT_CACHE,
    console_script,
    emit_json,
    ensure_node_certs,
    fleetctl_env,
    fresh_postgres,
    latency_summary,
    machine_info,
    print_profile,
    print_table,
    process_cpu_seconds,
    profile_summary,
    py_spy,
    raise_fd_limit,
    spawn_manager,
)
from bench._fakefleet import manager_channel, node_files, serve_in_thread
from common.specdoc import SpecDoc, SpecError, load_ca_certs, verify
from schema import daemon_pb, manager_pb

SPEC = "bench-web"
POLICY = {"ApplySpecs": {"manager"}}


class SpecDaemon(daemon_pb.DaemonServiceBase):
    """Answers ApplySpecs like a Daemon (verify, revision order, report), without processes."""

    def __init__(self, node_id: str, *, address: str, cert_dir: Path) -> None:
        self.node_id = node_id
        self._address = address
        self._files = node_files(cert_dir, node_id)
        self._ca = load_ca_certs(cert_dir / "ca.crt")
        self.running: dict[str, SpecDoc] = {}
        self.highest: dict[str, int] = {}
        self.first_seen: dict[int, float] = {}  # revision -> perf_counter when first applied
        self.refused = 0
        self.sync_seconds: list[float] = []  # how long the Manager took to take each sync
        self._channel: Channel | None = None

    def states(self) -> list[manager_pb.AgentState]:
        return [
            manager_pb.AgentState(
                agent_id=agent.id, status="RUNNING", pid=4242, type=agent.type,
                start_time=int(time.time()) - 60, spec=doc.name, spec_revision=doc.revision,
            )
            for doc in self.running.values()
            for agent in doc.agents
        ]  # fmt: skip

    async def apply_specs(
        self, message: daemon_pb.ApplySpecsRequest
    ) -> daemon_pb.ApplySpecsResponse:
        reports = []
        offered = set()
        for signed in message.specs:
            try:
                doc, _signer = verify(signed, ca_certs=self._ca)
            except SpecError as exc:
                self.refused += 1
                reports.append(manager_pb.SpecState(name="?", status="REFUSED", reason=str(exc)))
                continue
            offered.add(doc.name)
            held = self.running.get(doc.name)
            if doc.revision < self.highest.get(doc.name, 0):
                self.refused += 1
                reports.append(
                    manager_pb.SpecState(
                        name=doc.name, revision=doc.revision, status="REFUSED",
                        reason="older than a revision already seen",
                        running_revision=held.revision if held else 0,
                    )
                )  # fmt: skip
                continue
            self.highest[doc.name] = doc.revision
            self.running[doc.name] = doc
            self.first_seen.setdefault(doc.revision, time.perf_counter())
            reports.append(
                manager_pb.SpecState(
                    name=doc.name, revision=doc.revision, status="APPLIED",
                    running_revision=doc.revision,
                )
            )  # fmt: skip
        for name in set(self.running) - offered:
            del self.running[name]
        await self.sync(reports)
        return daemon_pb.ApplySpecsResponse(specs=reports)

    async def sync(self, reports: list[manager_pb.SpecState]) -> None:
        """Tell the Manager what runs now, as a Daemon does after every reconcile."""
        if self._channel is None:
            self._channel = manager_channel(self._address, self._files)
        stub = manager_pb.ManagerServiceStub(self._channel, timeout=60)
        t0 = time.perf_counter()
        await stub.sync_agent_states(
            manager_pb.SyncAgentStatesRequest(
                node_id=self.node_id, full=True, states=self.states(), specs=reports
            )
        )
        self.sync_seconds.append(time.perf_counter() - t0)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()


def spec_file(directory: Path, revision_tag: str) -> Path:
    path = directory / f"{SPEC}.toml"
    path.write_text(
        f'name = "{SPEC}"\n'
        "[target]\n"
        'labels = { role = "web" }\n'
        "[[agents]]\n"
        'id = "web"\n'
        'type = "web"\n'
        f'command = ["/usr/bin/env", "WEB_BUILD={revision_tag}", "sleep", "infinity"]\n'
        'start_seconds = "1s"\n'
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spec_rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument(
        "--db",
        help="database for the Manager (default: SQLite; a PostgreSQL URL gets a fresh "
        "database next to the one named, dropped afterwards)",
    )
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--profile-manager", type=Path, help="py-spy the Manager during the first apply (raw)"
    )
    parser.add_argument("--manager-log", type=Path, help="keep the Manager's log here")
    args = parser.parse_args(argv)
    raise_fd_limit()
    cert_dir = args.cache_dir / "ca"
    names = [f"spec-{i:05d}" for i in range(args.nodes)]
    rows: list[list[Any]] = []
    runs: list[dict[str, Any]] = []
    applies = [
        ("first revision, every node at once", "1", []),
        ("changed command, --max-unavailable 100%", "2", ["--max-unavailable", "100%"]),
        ("changed command, default waves (25%)", "3", []),
    ]

    async def close_all(daemons: list[SpecDaemon]) -> None:
        for d in daemons:
            d.close()

    with contextlib.ExitStack() as stack:
        db = args.db
        if db and db.startswith("postgres"):
            db = stack.enter_context(fresh_postgres(db))
        manager = stack.enter_context(spawn_manager(cert_dir=cert_dir, db_url=db))
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="fleet-bench-spec-"))
        node_dir = ensure_node_certs(cert_dir, names, cache_dir=args.cache_dir)
        t = time.perf_counter()
        fleet = serve_in_thread(
            address=manager.address,
            cert_dir=node_dir,
            names=names,
            make=lambda name: SpecDaemon(name, address=manager.address, cert_dir=node_dir),
            policy=POLICY,
            labels=lambda _name: {"role": "web", "bench": "spec"},
            states=lambda _daemon: [],
            on_stop=close_all,
        )
        setup = time.perf_counter() - t
        print(f"{args.nodes} simulated daemons up and registered in {setup:.1f}s", file=sys.stderr)
        env = fleetctl_env(manager.address, cert_dir)
        try:
            for index, (label, tag, flags) in enumerate(applies):
                path = spec_file(Path(tmp), tag)
                for d in fleet.daemons:
                    d.sync_seconds.clear()
                cpu0 = process_cpu_seconds(manager.pid)
                own0 = time.process_time()
                kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                profile = args.profile_manager if index == 0 else None
                with py_spy(manager.pid, profile, delay=1.0, duration=20.0):
                    proc = subprocess.run(
                        [console_script("fleetctl"), "--timeout", "60s", "apply", "-f", str(path),
                         "--healthy-deadline", "5m", *flags],
                        capture_output=True, text=True, env=env, timeout=1800,
                        stdin=subprocess.DEVNULL,
                    )  # fmt: skip
                wall = time.perf_counter() - t0
                kids = resource.getrusage(resource.RUSAGE_CHILDREN)
                ctl_cpu = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
                sim_cpu = time.process_time() - own0
                revision = max(max(d.highest.values(), default=0) for d in fleet.daemons)
                seen = [d.first_seen.get(revision) for d in fleet.daemons]
                reached = sum(1 for s in seen if s is not None)
                last = max((s for s in seen if s is not None), default=t0) - t0
                syncs = latency_summary([x for d in fleet.daemons for x in d.sync_seconds])
                rows.append([
                    label, revision, reached, proc.returncode, wall, last,
                    syncs["p50_ms"], syncs["p99_ms"],
                    100 * (process_cpu_seconds(manager.pid) - cpu0) / wall,
                    100 * ctl_cpu / wall, 100 * sim_cpu / wall,
                ])  # fmt: skip
                runs.append({"apply": label, "revision": revision, "nodes_reached": reached,
                             "exit_code": proc.returncode, "fleetctl_wall_s": wall,
                             "last_daemon_s": last, "stderr_tail": proc.stderr[-500:]})  # fmt: skip
                if proc.returncode != 0:
                    print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        finally:
            fleet.close()
            if args.manager_log is not None:
                args.manager_log.write_text(manager.output())
    out = sys.stderr if args.json else sys.stdout
    print(f"fleetctl apply of one spec across {args.nodes:,} simulated Daemons", file=out)
    print_table(
        ["apply", "rev", "nodes", "exit", "fleetctl s", "last daemon s", "sync p50 ms",
         "sync p99 ms", "mgr cpu %",
         "fleetctl cpu %", "daemons cpu %"],
        rows,
        file=out,
    )  # fmt: skip
    if args.profile_manager is not None and args.profile_manager.exists():
        print_profile(profile_summary(args.profile_manager), file=out, title="manager profile")
    if args.json:
        emit_json({"nodes": args.nodes, "runs": runs, "setup_s": setup, "machine": machine_info()})
    return 0 if all(r["exit_code"] == 0 and r["nodes_reached"] == args.nodes for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
