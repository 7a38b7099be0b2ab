"""How fast fleetctl starts: median wall time of N cold runs.

    python bench/fleetctl_startup.py [--runs 15]
    python bench/fleetctl_startup.py --manager 127.0.0.1:50051 \
        --ca ca.crt --cert admin.crt --key admin.key

Always measures ``fleetctl --help`` (and ``fleetctl version``, which adds Typer's
pydantic-based parameter coercion); with ``--manager`` also ``fleetctl nodes list -o json``
against it, which includes importing grpclib and the protobuf schema, the TLS handshake and
one ListNodes call. Each run is a fresh process (cold start
of the interpreter; the OS page cache stays warm, as it would for an operator).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def fleetctl_path() -> str:
    here = Path(sys.executable).with_name("fleetctl")
    return str(here) if here.exists() else (shutil.which("fleetctl") or "fleetctl")


def measure(argv: list[str], runs: int) -> tuple[float, float, float]:
    """(median, min, max) seconds of ``runs`` runs; fails loudly if the command fails."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return statistics.median(times), min(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--manager", help="HOST:PORT of a running Manager (optional)")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--insecure", action="store_true")
    args = parser.parse_args()

    exe = fleetctl_path()
    cases = [("fleetctl --help", [exe, "--help"]), ("fleetctl version", [exe, "version"])]
    if args.manager:
        conn = ["--manager", args.manager]
        for flag in ("ca", "cert", "key"):
            if getattr(args, flag):
                conn += [f"--{flag}", getattr(args, flag)]
        if args.insecure:
            conn.append("--insecure")
        cases.append(("fleetctl nodes list -o json", [exe, *conn, "nodes", "list", "-o", "json"]))
    baseline = measure([sys.executable, "-c", "pass"], args.runs)
    print(f"{'python -c pass (interpreter floor)':<36} median {baseline[0] * 1000:7.1f} ms")
    for name, argv in cases:
        med, lo, hi = measure(argv, args.runs)
        print(
            f"{name:<36} median {med * 1000:7.1f} ms  "
            f"(min {lo * 1000:.1f}, max {hi * 1000:.1f}, {args.runs} runs)"
        )


if __name__ == "__main__":
    main()
