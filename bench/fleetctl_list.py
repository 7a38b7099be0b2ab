"""``fleetctl nodes list -o json`` against a real Manager that holds N nodes.

    python -m bench.fleetctl_list [--nodes 10000] [--runs 10] [--save-reply FILE]
    python -m bench.fleetctl_list --reply FILE [--runs 10]      # client side only

Seeds a fresh SQLite database with N node rows through the Manager's own store models
(registering 10,000 nodes over RPC would measure registration, not listing), starts a
real ``fleet-manager`` on it with fresh dev certificates, and times N cold runs of the
real ``fleetctl`` (interpreter start, imports, mTLS handshake, ListNodes with N nodes,
JSON rendering). Prints the median and range; target: ≤ 1 s for 10,000 nodes.

Then the phases, each the median of ``--runs`` in this process:

* ``rpc``: one ListNodes call on an open mTLS channel, reply kept as bytes (the Manager's
  work plus the transfer; no client decoding);
* ``decode``: those bytes parsed by upb (what fleetctl uses) and by betterproto (before);
* ``render``: the nodes sorted, turned into fleetctl's JSON objects and dumped, as
  ``fleetctl nodes list -o json`` does, written to /dev/null;
* ``fleetctl version``: a cold fleetctl that does no RPC (interpreter + CLI start-up).

``--reply FILE`` measures only decode and render of a reply saved with ``--save-reply``,
with no Manager: the client side alone, whatever the Manager costs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from bench._common import console_script, emit_json, spawn_manager
from bench.fleetctl_startup import measure

LIST_NODES = "/fleet.admin.v1.AdminService/ListNodes"


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


class _RawReply:
    """A grpclib reply type that keeps the message bytes as they came off the wire."""

    @staticmethod
    def FromString(data: bytes) -> bytes:
        return data


async def rpc_times(address: str, certs: Path, runs: int) -> tuple[list[float], bytes]:
    """Seconds per ListNodes call on one open mTLS channel, and the last reply's bytes."""
    from grpclib.client import Channel
    from grpclib.const import Cardinality

    from common.tls import TLSFiles, client_context
    from schema import admin_pb2

    host, port = address.rsplit(":", 1)
    files = TLSFiles(
        cert_file=certs / "admin.crt", key_file=certs / "admin.key", ca_file=certs / "ca.crt"
    )
    channel = Channel(host, int(port), ssl=client_context(files, expect_role="manager"))
    times, reply = [], b""
    try:
        for _ in range(runs + 1):  # the first call also pays the TLS handshake: not counted
            start = time.perf_counter()
            async with channel.request(
                LIST_NODES, Cardinality.UNARY_UNARY, admin_pb2.ListNodesRequest, _RawReply
            ) as stream:
                await stream.send_message(admin_pb2.ListNodesRequest(), end=True)
                reply = cast(bytes, await stream.recv_message())
            times.append(time.perf_counter() - start)
    finally:
        channel.close()
    return times[1:], reply


def _median_ms(fn: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 1)


def client_phases(reply: bytes, runs: int) -> dict[str, float]:
    """Decode (upb and betterproto) and render medians, in ms, for one ListNodes reply."""
    from fleetctl.render import Output, iso
    from fleetctl.views import node_json
    from schema import admin_pb, admin_pb2

    def render(message: Any) -> None:
        iso.cache_clear()  # each fleetctl run starts with an empty cache
        with open(os.devnull, "w") as sink:
            nodes = sorted(message.nodes, key=lambda n: n.node_id)
            Output(rich=False, stream=sink).json([node_json(n) for n in nodes])

    upb = admin_pb2.ListNodesResponse.FromString(reply)
    betterproto = admin_pb.ListNodesResponse().parse(reply)
    # Same bytes out of both decodings, or the comparison means nothing.
    outputs = []
    for message in (upb, betterproto):
        iso.cache_clear()
        buf = io.StringIO()
        Output(rich=False, stream=buf).json(
            [node_json(n) for n in sorted(message.nodes, key=lambda n: n.node_id)]
        )
        outputs.append(buf.getvalue())
    assert outputs[0] == outputs[1], "upb and betterproto render differently"
    return {
        "reply_bytes": len(reply),
        "decode_upb_ms": _median_ms(lambda: admin_pb2.ListNodesResponse.FromString(reply), runs),
        "decode_betterproto_ms": _median_ms(
            lambda: admin_pb.ListNodesResponse().parse(reply), max(1, runs // 3)
        ),
        "render_json_upb_ms": _median_ms(lambda: render(upb), runs),
        "render_json_betterproto_ms": _median_ms(lambda: render(betterproto), runs),
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save-reply", type=Path, help="write the ListNodes reply bytes here")
    parser.add_argument("--reply", type=Path, help="client side only, on this saved reply")
    args = parser.parse_args()

    result: dict[str, Any] = {"runs": args.runs, "load_average_before": load_average()}
    if args.reply:
        result.update(client_phases(args.reply.read_bytes(), args.runs))
    else:
        result.update(run_against_manager(args))
    result["load_average_after"] = load_average()
    if args.json:
        emit_json(result)
        return
    if "median_ms" in result:
        print(
            f"fleetctl nodes list -o json, {args.nodes:,} nodes: median {result['median_ms']} ms "
            f"(min {result['min_ms']}, max {result['max_ms']}, {args.runs} runs; "
            "target ≤ 1000 ms)"
        )
        print(
            f"  fleetctl version (start-up, no RPC): median {result['version_median_ms']} ms\n"
            f"  ListNodes RPC, reply as bytes (Manager + transfer): median "
            f"{result['rpc_median_ms']} ms"
        )
    print(
        f"  reply {result['reply_bytes']:,} bytes; decode: upb {result['decode_upb_ms']} ms, "
        f"betterproto {result['decode_betterproto_ms']} ms\n"
        f"  render JSON (sort, node_json, dump): from upb {result['render_json_upb_ms']} ms, "
        f"from betterproto {result['render_json_betterproto_ms']} ms\n"
        f"  load average {result['load_average_before']} before, "
        f"{result['load_average_after']} after"
    )


def run_against_manager(args: argparse.Namespace) -> dict[str, Any]:
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
            version = measure([console_script("fleetctl"), "version"], args.runs)[0]
            rpc, reply = asyncio.run(rpc_times(manager.address, certs, args.runs))
    if args.save_reply:
        args.save_reply.write_bytes(reply)
    return {
        "nodes": args.nodes,
        "median_ms": round(median * 1000, 1),
        "min_ms": round(low * 1000, 1),
        "max_ms": round(high * 1000, 1),
        "target_ms": 1000,
        "version_median_ms": round(version * 1000, 1),
        "rpc_median_ms": round(statistics.median(rpc) * 1000, 1),
        **client_phases(reply, args.runs),
    }


if __name__ == "__main__":
    main()
