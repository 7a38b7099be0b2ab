"""``fleetctl nodes list -o json`` against a real Manager that holds N nodes.

    python -m bench.fleetctl_list [--nodes 10000] [--runs 10]

Seeds a fresh SQLite database with N node rows through the Manager's own store models
(registering 10,000 nodes over RPC would measure registration, not listing), starts a
real ``fleet-manager`` on it with fresh dev certificates, and times N cold runs of the
real ``fleetctl`` (interpreter start, imports, mTLS handshake, ListNodes with N nodes,
JSON rendering). Prints the median and range; target: ≤ 1 s for 10,000 nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path

from bench._common import console_script, emit_json, spawn_manager
from bench.fleetctl_startup import measure


async def seed(db_url: str, count: int) -> None:
    """Create the schema (migrations) and insert ``count`` online nodes."""
    from manager.store import Database
    from manager.store.models import ONLINE, Node

    db = Database(url=db_url)
    await db.start()
    try:
        now = time.time()
        await Node.bulk_create(
            [
                Node(
                    node_id=f"sim-{i:05d}",
                    hostname=f"host-{i:05d}.example.net",
                    ip=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                    os="linux",
                    arch="x86_64",
                    labels={"env": "prod", "rack": f"r{i % 40}"},
                    daemon_version="0.1.0",
                    agent_version="0.1.0",
                    daemon_address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:50052",
                    heartbeat_interval=10,
                    status=ONLINE,
                    registered_at=now,
                    updated_at=now,
                    last_heartbeat=now,
                    status_since=now,
                    offline_after=now + 3600,
                    grace=30,
                )
                for i in range(count)
            ],
            batch_size=1000,
        )
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fleet-bench-list-") as tmp:
        work = Path(tmp)
        db_url = f"sqlite://{work / 'manager.db'}"
        asyncio.run(seed(db_url, args.nodes))
        certs = work / "certs"
        with spawn_manager(cert_dir=certs, db_url=db_url, work_dir=work) as manager:
            argv = [
                console_script("fleetctl"),
                "--manager",
                manager.address,
                "--ca",
                str(certs / "ca.crt"),
                "--cert",
                str(certs / "admin.crt"),
                "--key",
                str(certs / "admin.key"),
                "nodes",
                "list",
                "-o",
                "json",
            ]
            listed = json.loads(subprocess.run(argv, capture_output=True, check=True).stdout)
            assert len(listed) == args.nodes, len(listed)
            median, low, high = measure(argv, args.runs)
    result = {
        "nodes": args.nodes,
        "runs": args.runs,
        "median_ms": round(median * 1000, 1),
        "min_ms": round(low * 1000, 1),
        "max_ms": round(high * 1000, 1),
        "target_ms": 1000,
    }
    if args.json:
        emit_json(result)
        return
    print(
        f"fleetctl nodes list -o json, {args.nodes:,} nodes: median {result['median_ms']} ms "
        f"(min {result['min_ms']}, max {result['max_ms']}, {args.runs} runs; target ≤ 1000 ms)"
    )


if __name__ == "__main__":
    main()
