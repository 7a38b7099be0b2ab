"""``fleet-daemon`` / ``python -m daemon``: build the config, run the Daemon, handle signals.

Configuration comes from the TOML file, then ``FLEET_*`` environment variables, then
flags (see ``docs/daemon.md``). The first SIGINT/SIGTERM shuts down gracefully (agents
are stopped unless ``stop_agents_on_exit = false``); a second one exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from .app import DaemonApp, StartupError
from .config import ConfigError, DaemonConfig, build_config, load_toml

log = logging.getLogger("daemon")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet-daemon", description="Fleet Daemon: supervises this host's agents."
    )
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument("--node-id", help="node id (default: hostname)")
    p.add_argument("--manager", help="Manager address HOST:PORT (manager.address)")
    p.add_argument("--listen", help="DaemonService listener HOST:PORT (grpc.listen)")
    p.add_argument("--advertise", help="address the Manager should dial (grpc.advertise)")
    p.add_argument("--state-dir", help="state directory (default ./.fleet/daemon-<node_id>)")
    p.add_argument("--agent-socket", help="agent API Unix socket path (agent_api.socket)")
    p.add_argument("--cert", help="node certificate (manager.tls.cert_file)")
    p.add_argument("--key", help="node key (manager.tls.key_file)")
    p.add_argument("--ca", help="CA certificate (manager.tls.ca_file)")
    p.add_argument("--insecure", action="store_true", help="no TLS (development only)")
    p.add_argument("--heartbeat-interval", help="seconds between heartbeats to the Manager")
    p.add_argument("--metrics-interval", help="seconds between host-metric reports")
    p.add_argument("--http-listen", help="serve Prometheus /metrics on HOST:PORT")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p


def _flags(args: argparse.Namespace) -> dict[tuple[str, ...], Any]:
    return {
        ("node_id",): args.node_id,
        ("manager", "address"): args.manager,
        ("grpc", "listen"): args.listen,
        ("grpc", "advertise"): args.advertise,
        ("state_dir",): args.state_dir,
        ("agent_api", "socket"): args.agent_socket,
        ("manager", "tls", "cert_file"): args.cert,
        ("manager", "tls", "key_file"): args.key,
        ("manager", "tls", "ca_file"): args.ca,
        ("manager", "tls", "enabled"): False if args.insecure else None,
        ("manager", "heartbeat_interval"): args.heartbeat_interval,
        ("manager", "metrics_interval"): args.metrics_interval,
        ("http", "listen"): args.http_listen,
        ("log", "level"): args.log_level,
    }


def load(argv: list[str] | None = None) -> DaemonConfig:
    """The validated config from file, environment and flags (ConfigError if wrong)."""
    args = _parser().parse_args(argv)
    file_data = load_toml(args.config) if args.config else {}
    return build_config(file_data, os.environ, _flags(args))


async def _serve(config: DaemonConfig) -> int:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info(
                "received %s: shutting down (send again to force)", signal.Signals(signum).name
            )
            stopping.set()
        else:
            log.warning("received %s again: exiting now", signal.Signals(signum).name)
            os._exit(1)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    app = DaemonApp(config=config, base_env=dict(os.environ))
    try:
        await app.start()
    except (StartupError, OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        app.close()
        await app.wait_closed()
        return 1
    await stopping.wait()
    app.close()
    await app.wait_closed()
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        config = load(argv)
    except ConfigError as exc:
        print(f"fleet-daemon: config error: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(asyncio.run(_serve(config)))


if __name__ == "__main__":
    main()
