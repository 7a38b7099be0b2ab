"""Start a real ``fleet-manager`` for tests, and open channels to it.

Used by every tier's tests (daemon, fleetctl, end-to-end): keep the signatures stable.

    mgr = start_manager(tmp_path, certs)          # waits for "manager ready"
    async with admin_channel(certs, mgr.grpc_port) as ch: ...
    mgr.stop()

    signed = sign_spec(certs, spec_document("web", 1, agents, labels={"role": "web"}))
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from common.tls import TLSFiles, client_context

from . import Proc, console_script, free_port, wait_until

_READY = re.compile(r"manager ready: grpc=(\S+):(\d+) http=(\S+)")
# Logged just before "manager ready" when the enrollment listener is on.
_ENROLL = re.compile(r"enrollment ready: listen=(\S+):(\d+) advertise=(\S+) ca-hash=(\S*)")


class ManagerProc(Proc):
    """A running ``fleet-manager`` child process with its bound ports."""

    grpc_port: int
    http_port: int | None
    # The enrollment listener's port (EnrollService), None when it is disabled.
    enroll_port: int | None = None
    data_dir: Path
    db_url: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        assert self.http_port, "HTTP side disabled"
        return f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout: float = 30.0, *, after: int = 0) -> None:
        """Wait for the ``manager ready`` line (the n-th one after offset ``after``)."""

        def ready() -> re.Match[str] | None:
            if not self.alive():
                raise AssertionError(
                    f"fleet-manager exited with {self.popen.returncode}:\n{self.output()[-4000:]}"
                )
            return _READY.search(self.output()[after:])

        try:
            match = wait_until(ready, timeout=timeout, interval=0.05, what="manager ready")
        except AssertionError:
            raise AssertionError(f"manager not ready; log:\n{self.output()[-4000:]}") from None
        self.grpc_port = int(match.group(2))
        enroll = _ENROLL.search(self.output()[after:])
        self.enroll_port = int(enroll.group(2)) if enroll else None
        http = match.group(3)
        self.http_port = None if http == "disabled" else int(http.rsplit(":", 1)[1])


def manager_argv(
    tmp_path: Path,
    certs: Path | None,
    *,
    db_url: str | None = None,
    grace: float | None = None,
    grpc_port: int = 0,
    http_port: int | None = 0,
    extra_args: Sequence[str] = (),
    insecure: bool = False,
    log_level: str = "info",
) -> list[str]:
    """The command line ``start_manager`` runs (handy for restarts with changes)."""
    data_dir = tmp_path / "manager-data"
    argv = [
        console_script("fleet-manager"),
        "--listen",
        f"127.0.0.1:{grpc_port}",
        "--http-listen",
        "" if http_port is None else f"127.0.0.1:{http_port}",
        "--data-dir",
        str(data_dir),
        "--db",
        db_url or f"sqlite://{data_dir / 'manager.sqlite3'}",
        "--log-level",
        log_level,
        # Concurrent test Managers would clash on the default enrollment port.
        "--enroll-listen",
        "127.0.0.1:0",
    ]
    if insecure:
        argv.append("--insecure")
    else:
        assert certs is not None
        argv += [
            "--cert",
            str(certs / "manager.crt"),
            "--key",
            str(certs / "manager.key"),
            "--ca",
            str(certs / "ca.crt"),
        ]
    if grace is not None:
        argv += ["--grace", str(grace)]
    return argv + list(extra_args)


def start_manager(
    tmp_path: Path,
    certs: Path | None,
    *,
    db_url: str | None = None,
    grace: float | None = None,
    extra_args: Sequence[str] = (),
    insecure: bool = False,
    grpc_port: int = 0,
    http_port: int | None = 0,
    log_name: str = "manager.log",
    timeout: float = 30.0,
) -> ManagerProc:
    """Start ``fleet-manager`` on 127.0.0.1 (ports chosen by the OS unless given).

    ``db_url`` defaults to an SQLite file under ``tmp_path/manager-data``. Returns once
    the Manager logged ``manager ready``; ``.grpc_port``, ``.http_port``, ``.address``.
    """
    argv = manager_argv(
        tmp_path,
        certs,
        db_url=db_url,
        grace=grace,
        grpc_port=grpc_port,
        http_port=http_port,
        extra_args=extra_args,
        insecure=insecure,
    )
    data_dir = tmp_path / "manager-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = ManagerProc(argv, log_path=tmp_path / log_name)
    proc.data_dir = data_dir
    proc.db_url = db_url or f"sqlite://{data_dir / 'manager.sqlite3'}"
    try:
        proc.wait_ready(timeout)
    except BaseException:
        proc.kill()
        raise
    return proc


def manager_rpc(
    certs: Path, port: int, cert_name: str, method: str, request: Any, timeout: float = 15.0
) -> Any:
    """One unary call to the Manager as ``cert_name`` (AdminService for admin messages,
    ManagerService otherwise), e.g. ``manager_rpc(certs, p, "admin", "list_nodes", req)``."""
    from schema import admin_pb, manager_pb

    async def call() -> Any:
        channel = _channel(certs, port, cert_name)
        try:
            if type(request).__module__ == admin_pb.__name__:
                stub: Any = admin_pb.AdminServiceStub(channel, timeout=timeout)
            else:
                stub = manager_pb.ManagerServiceStub(channel, timeout=timeout)
            return await getattr(stub, method)(request)
        finally:
            channel.close()

    return asyncio.run(call())


def manager_rpc_error(
    certs: Path, port: int, cert_name: str, method: str, request: Any
) -> tuple[Status, str]:
    """(status, message) of a call that must fail with a gRPC error."""
    try:
        manager_rpc(certs, port, cert_name, method, request)
    except GRPCError as exc:
        return exc.status, exc.message or ""
    raise AssertionError(f"{method} unexpectedly succeeded")


def write_manager_config(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """Write a Manager TOML config (``{"liveness": {"sweep_interval": 0.2}}``)."""
    lines: list[str] = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def stored_nodes(db_url: str) -> dict[str, dict[str, Any]]:
    """The Manager's node rows read straight from its database (the store's own models)."""
    from manager.store import Database
    from manager.store.models import Node

    async def read() -> dict[str, dict[str, Any]]:
        db = Database(url=db_url)
        await db.start()
        try:
            return {row["node_id"]: row for row in await Node.all().values()}
        finally:
            await db.close()

    return asyncio.run(read())


def spec_document(
    name: str,
    revision: int,
    agents: Sequence[Mapping[str, Any]],
    *,
    labels: Mapping[str, str] | None = None,
    nodes: Sequence[str] = (),
    rollback_of: int = 0,
    expires_at: int = 0,
) -> dict[str, Any]:
    """A complete spec document (docs/specs.md) ready to sign, e.g.
    ``spec_document("web", 1, [{"id": "web", "command": ["/bin/sleep", "60"]}],
    labels={"role": "web"})``."""
    from common.specdoc import KIND

    return {
        "kind": KIND,
        "name": name,
        "revision": revision,
        "target": {"labels": dict(labels or {}), "nodes": sorted(nodes)},
        "agents": [dict(a) for a in agents],
        "signed_at": int(time.time()),
        "expires_at": expires_at,
        "rollback_of": rollback_of,
    }


def sign_spec(certs: Path, document: Mapping[str, Any], signer: str = "admin") -> Any:
    """``document`` signed with ``certs/<signer>.key`` as a ``daemon_pb.SignedSpec``
    (what fleetctl apply sends); ``signer`` may be any certificate's name there."""
    from common.specdoc import load_signing_key, sign
    from schema import daemon_pb

    payload, signature = sign(document, load_signing_key(certs / f"{signer}.key"))
    return daemon_pb.SignedSpec(
        payload=payload, signature=signature, signer_cert=(certs / f"{signer}.crt").read_bytes()
    )


def _channel(certs: Path, port: int, name: str, host: str = "127.0.0.1") -> Channel:
    files = TLSFiles(certs / f"{name}.crt", certs / f"{name}.key", certs / "ca.crt")
    return Channel(host, port, ssl=client_context(files, expect_role="manager"))


def admin_channel(certs: Path, manager_port: int, cert_name: str = "admin") -> Channel:
    """A channel to the Manager presenting ``certs/<cert_name>.crt`` (an admin cert).

    Create it inside the coroutine that uses it (grpclib binds it to the running loop),
    and ``close()`` it when done.
    """
    return _channel(certs, manager_port, cert_name)


def node_channel(certs: Path, manager_port: int, node_id: str) -> Channel:
    """A channel to the Manager presenting node ``node_id``'s certificate."""
    return _channel(certs, manager_port, node_id)


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """(status, body) of a GET, whatever the status (the Manager's /readyz, /metrics)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric_value(metrics_text: str, name: str, **labels: str) -> float | None:
    """The value of sample ``name`` (with at least these labels) in Prometheus text, or
    None: ``metric_value(http_get(f"{mgr.http_url}/metrics")[1], "fleet_manager_nodes",
    status="online")``."""
    for line in metrics_text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


def fleet_certs(directory: Path, nodes: Sequence[str]) -> Path:
    """A certificate directory like the ``certs`` fixture's (CA, manager, admin) with a
    node certificate for each of ``nodes``."""
    from . import load_certgen

    load_certgen().dev(directory, list(nodes), echo=lambda _line: None)
    return directory


__all__ = [
    "ManagerProc",
    "admin_channel",
    "fleet_certs",
    "free_port",
    "http_get",
    "manager_argv",
    "manager_rpc",
    "manager_rpc_error",
    "metric_value",
    "node_channel",
    "sign_spec",
    "spec_document",
    "start_manager",
    "stored_nodes",
    "write_manager_config",
]
