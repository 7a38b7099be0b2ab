"""``fleet-daemon`` / ``python -m daemon``: build the config, run the Daemon, handle signals.

Configuration comes from the TOML file, then ``FLEET_*`` environment variables, then
flags (see ``docs/daemon.md``). The first SIGINT/SIGTERM shuts down gracefully (agents
are stopped unless ``stop_agents_on_exit = false``); a second one exits at once.

``fleet-daemon join ...`` joins a fleet with a token first (:mod:`daemon.join`).

SIGHUP reloads: the same file is read again with the environment and flags of the
start (so flags still win) and the difference is applied (:mod:`daemon.desired`). A HUP
never stops the Daemon: one that arrives while it is starting is applied once it is up,
and several in a row coalesce into one reload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from common.conns import quiet_accept_errors, raise_fd_limit

from .app import DaemonApp, StartupError
from .config import ConfigError, DaemonConfig, load_config_file

log = logging.getLogger("daemon")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet-daemon",
        description="Fleet Daemon: supervises this host's agents.",
        epilog="To join a fleet with a token first: fleet-daemon join --help",
    )
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument("--node-id", help="node id (default: hostname)")
    p.add_argument(
        "--manager",
        help="Manager address HOST:PORT, or several comma-separated to fail over between "
        "(manager.address)",
    )
    p.add_argument("--listen", help="DaemonService listener HOST:PORT (grpc.listen)")
    p.add_argument("--advertise", help="address the Manager should dial (grpc.advertise)")
    p.add_argument(
        "--state-dir",
        help="state directory (default /var/lib/fleet/daemon as root, else "
        "$XDG_STATE_HOME/fleet/daemon-<node_id>)",
    )
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


@dataclass(frozen=True)
class Source:
    """Where the config comes from: kept so that a reload reads it the same way."""

    path: Path | None
    env: Mapping[str, str]
    flags: Mapping[tuple[str, ...], Any]

    def load(self) -> DaemonConfig:
        """The validated config (ConfigError naming file, line and key if wrong)."""
        return load_config_file(self.path, self.env, self.flags)


def source(argv: list[str] | None = None) -> Source:
    args = _parser().parse_args(argv)
    return Source(path=args.config, env=dict(os.environ), flags=_flags(args))


def load(argv: list[str] | None = None) -> DaemonConfig:
    """The validated config from file, environment and flags (ConfigError if wrong)."""
    return source(argv).load()


def _set_log_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    log.info("log level is now %s", level)


async def _reloads(app: DaemonApp, wanted: asyncio.Event) -> None:
    """Run a reload for every SIGHUP (coalesced); the outcome is logged by the reload."""
    while True:
        await wanted.wait()
        wanted.clear()
        try:
            await app.reload()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reload failed")


async def _serve(config: DaemonConfig, src: Source, hup_pending: Callable[[], bool]) -> int:
    loop = asyncio.get_running_loop()
    # asyncio reports an accept out of file descriptors with a traceback per pending
    # connection: one line per 10 s instead (common.conns).
    quiet_accept_errors(loop)
    stopping = asyncio.Event()
    reload_wanted = asyncio.Event()
    signals = 0
    stop_reason = "daemon shut down"

    def on_signal(signum: int) -> None:
        nonlocal signals, stop_reason
        signals += 1
        if signals == 1:
            stop_reason = f"daemon shut down ({signal.Signals(signum).name})"
            log.info(
                "received %s: shutting down (send again to force)", signal.Signals(signum).name
            )
            stopping.set()
        else:
            log.warning("received %s again: exiting now", signal.Signals(signum).name)
            os._exit(1)

    def on_hup() -> None:
        if src.path is None:
            log.warning("received SIGHUP: no config file to reload (started without --config)")
            return
        log.info("received SIGHUP: reloading %s", src.path)
        reload_wanted.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    if hup_pending():
        on_hup()
    app = DaemonApp(
        config=config,
        base_env=dict(src.env),
        load_config=src.load if src.path is not None else None,
        config_file=src.path,
        set_log_level=_set_log_level,
    )
    try:
        await app.start()
    except (StartupError, OSError, ValueError) as exc:
        log.error("cannot start: %s", exc)
        app.close()
        await app.wait_closed()
        return 1
    reloader = asyncio.create_task(_reloads(app, reload_wanted), name="sighup-reloads")
    await stopping.wait()
    reloader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reloader
    app.close(stop_reason)
    await app.wait_closed()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["join"]:
        from . import join

        join.main(args[1:])
        return
    # Until the event loop takes SIGHUP over, its default action would kill the Daemon:
    # note it instead and reload once running. (A Python handler, unlike SIG_IGN, is not
    # inherited by the agents we spawn.)
    early_hup = False

    def note_hup(_signum: int, _frame: FrameType | None) -> None:
        nonlocal early_hup
        early_hup = True

    signal.signal(signal.SIGHUP, note_hup)
    src = source(argv)
    try:
        config = src.load()
    except ConfigError as exc:
        print(f"fleet-daemon: config error: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # log.level = debug is the Daemon's own detail, not a line per HTTP/2 header.
    for noisy in ("hpack", "h2"):
        logging.getLogger(noisy).setLevel(logging.INFO)
    # Every connection and agent pipe is a file descriptor: use all the hard limit allows.
    raise_fd_limit()
    sys.exit(asyncio.run(_serve(config, src, lambda: early_hup)))


if __name__ == "__main__":
    main()
