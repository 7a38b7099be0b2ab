"""Onboarding on the Manager: join tokens, the enrollment listener, node certificates.

* :mod:`.tokens` — the token format, its hashed secret, its status;
* :mod:`.issuer` — the issuing CA, and joins and renewals (check, sign, record);
* :mod:`.labels` — the labels a node joined with, for RegisterNode (cached);
* :mod:`.service` / :mod:`.listener` — EnrollService on its own server-only-TLS port;
* :mod:`.admin` — the AdminService token and certificate RPCs.

:class:`Enrollment` owns them for :class:`manager.app.ManagerApp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from common.pki import ca_hash, load_pem_certs

from ..config import ManagerConfig, split_host_port
from ..metrics import ManagerMetrics
from ..periodic import Periodic
from ..store import Database
from ..store.enroll import EnrollStore
from .admin import EnrollAdmin
from .issuer import IssuingCAError, NodeIssuer, describe_ca, load_issuing_ca, merge_labels
from .labels import EnrollmentLabels
from .listener import EnrollListener
from .service import EnrollService

__all__ = [
    "EnrollAdmin",
    "Enrollment",
    "EnrollmentLabels",
    "IssuingCAError",
    "NodeIssuer",
    "merge_labels",
]

log = logging.getLogger(__name__)

# Stopped tokens are looked for this often (they are deleted 7 days after stopping).
PURGE_INTERVAL = 3600.0
_WILDCARDS = ("0.0.0.0", "::", "")


class Enrollment:
    """Everything onboarding needs on one Manager, with the house lifecycle.

    ``load_ca()`` at start (a bad issuing CA raises :class:`IssuingCAError`, one line),
    then the services are built with ``issuer``, ``labels`` and ``admin``, then
    ``start(grpc_address=…)`` opens the enrollment listener once the main port is bound.
    """

    def __init__(
        self,
        *,
        config: ManagerConfig,
        database: Database,
        metrics: ManagerMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self.store = EnrollStore(database=database)
        self.labels = EnrollmentLabels(store=self.store)
        self.issuer = NodeIssuer(
            store=self.store,
            ca=None,
            lifetime=config.node_cert_lifetime,
            labels=self.labels,
            clock=clock,
        )
        self.ca_hash = ""
        self.roots_pem = b""
        # Where hosts are told to join (enroll.advertise, else the bound listener).
        self.advertised = config.enroll_advertise
        self.admin = EnrollAdmin(
            store=self.store,
            issuer=self.issuer,
            ca_hash=lambda: self.ca_hash,
            enroll_address=lambda: self.advertised,
            default_ttl=config.join_token_ttl,
            max_ttl=config.join_token_max_ttl,
            clock=clock,
        )
        self.listener: EnrollListener | None = None
        self._purge = Periodic(name="join-token-purge", interval=PURGE_INTERVAL, step=self._sweep)
        self._started = False

    def load_ca(self) -> None:
        """Read the fleet root(s) and the issuing CA; log which signing mode this is."""
        cfg = self._config
        if cfg.tls_enabled:
            try:
                roots = load_pem_certs(Path(cfg.ca_file).read_bytes())
            except (OSError, ValueError) as exc:
                raise IssuingCAError(f"grpc.tls.ca_file {cfg.ca_file}: {exc}") from None
            self.ca_hash = ca_hash(roots[0])
            self.roots_pem = b"".join(r.public_bytes(Encoding.PEM) for r in roots)
        self.issuer.ca = load_issuing_ca(cfg)
        log.info("enrollment: %s", describe_ca(self.issuer.ca, cfg))

    async def start(self, *, grpc_address: str, reuse_port: bool = False) -> None:
        if self._started:
            raise RuntimeError("enrollment already started")
        self._started = True
        cfg = self._config
        await self._purge.start()
        if not cfg.enroll_listen or not cfg.tls_enabled:
            why = "enroll.listen is empty" if cfg.tls_enabled else "TLS is off"
            log.info("enrollment listener disabled (%s)", why)
            return
        service = EnrollService(
            issuer=self.issuer,
            roots_pem=self.roots_pem,
            manager_addresses=await self._manager_addresses(grpc_address),
            joins_per_minute=cfg.join_rate_per_minute,
        )
        listener = EnrollListener(
            service=service,
            listen=cfg.enroll_listen,
            tls_files=cfg.tls_files,
            handshake_timeout=cfg.tls_handshake_timeout,
            metrics=self._metrics,
            reuse_port=reuse_port,
        )
        await listener.start()
        self.listener = listener
        if not self.advertised:
            self.advertised = await _reachable(listener.address)
        log.info(
            "enrollment ready: listen=%s advertise=%s ca-hash=%s",
            listener.address,
            self.advertised,
            self.ca_hash,
        )

    async def _manager_addresses(self, grpc_address: str) -> list[str]:
        configured = self._config.enroll_manager_addresses
        if configured:
            return [a.strip() for a in configured.split(",") if a.strip()]
        return [await _reachable(grpc_address)]

    async def _sweep(self) -> None:
        await self.admin.purge_stopped_tokens()

    def close(self) -> None:
        self._purge.close()
        if self.listener is not None:
            self.listener.close()

    async def wait_closed(self) -> None:
        await self._purge.wait_closed()
        if self.listener is not None:
            await self.listener.wait_closed()


async def _reachable(address: str) -> str:
    """``address`` with a wildcard host replaced by this host's name (FQDN if known)."""
    host, port = split_host_port(address, "address")
    if host not in _WILDCARDS:
        return address
    name = ""
    with contextlib.suppress(OSError, TimeoutError):
        name = await asyncio.wait_for(asyncio.to_thread(socket.getfqdn), 5.0)
    if not name or name == "localhost" or name.startswith("localhost."):
        name = socket.gethostname()
    return f"{name}:{port}"
