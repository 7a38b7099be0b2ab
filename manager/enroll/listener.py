"""The enrollment listener: EnrollService alone, on its own port, with server-only TLS.

A joining host has no certificate yet, so this port asks for none: it presents the
Manager's certificate (the host verifies it against the root it pinned with
``--ca-hash``) and treats every caller as ``anonymous``. That is all it serves, behind
the same guarded, hardened HTTP/2 server as the main port but with small bounds: 64 KiB
requests (a CSR is under 1 KiB), few streams per connection, handshakes that must finish
within ``grpc.tls.handshake_timeout`` and whose refusals are logged
(:class:`manager.handshakes.TLSGate`).
"""

from __future__ import annotations

import ssl

from common.h2limits import H2Limits
from common.rpc import GuardedService, Transport, wait_server_closed
from common.tls import TLSFiles

from ..config import split_host_port
from ..handshakes import GatedServer, TLSGate
from ..metrics import ManagerMetrics
from .service import EnrollService

MAX_MESSAGE_BYTES = 64 * 1024
# Joins signing at once (each one ECDSA signature and a short transaction); more wait
# for UNAVAILABLE and retry.
MAX_JOINS_IN_FLIGHT = 64
POLICY = {"GetCA": {"anonymous"}, "Join": {"anonymous"}}
LIMITS = H2Limits(
    max_concurrent_streams=8,
    stream_window=128 * 1024,
    connection_window=256 * 1024,
    buffer_per_connection=512 * 1024,
    buffer_per_peer=2 * 1024 * 1024,
    buffer_total=16 * 1024 * 1024,
)


def server_only_context(files: TLSFiles) -> ssl.SSLContext:
    """TLS ≥ 1.2 with the Manager's certificate, asking the client for none; ALPN h2."""
    files.check_readable()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(certfile=str(files.cert_file), keyfile=str(files.key_file))
    ctx.set_alpn_protocols(["h2"])
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


class EnrollListener:
    """Serves ``service`` on ``listen``; ``address`` is the bound ``host:port``.

    ``ssl_context`` is the live context: loading a new certificate chain into it (a
    SIGHUP reload) applies to the next handshakes.
    """

    def __init__(
        self,
        *,
        service: EnrollService,
        listen: str,
        tls_files: TLSFiles,
        handshake_timeout: float,
        metrics: ManagerMetrics,
        reuse_port: bool = False,
    ) -> None:
        self._listen = listen
        self._reuse_port = reuse_port  # several Manager workers share the port
        self.ssl_context = server_only_context(tls_files)
        self._gate = TLSGate(
            ssl_context=self.ssl_context, metrics=metrics, timeout=handshake_timeout
        )
        guarded = GuardedService(
            service,
            policy=POLICY,
            transport=Transport.ANONYMOUS,
            max_message_bytes=MAX_MESSAGE_BYTES,
            observer=metrics.observe_rpc,
            max_in_flight={"Join": MAX_JOINS_IN_FLIGHT},
        )
        self._server = GatedServer(
            [guarded], limits=LIMITS, gate=self._gate, name="enrollment port"
        )
        self.address = ""
        self._started = False
        self._closed = False

    async def start(self) -> None:
        if self._started:
            raise RuntimeError("enrollment listener already started")
        self._started = True
        host, port = split_host_port(self._listen, "enroll.listen")
        try:
            await self._server.start(host, port, reuse_address=True, reuse_port=self._reuse_port)
        except OSError as exc:
            raise OSError(
                f"cannot serve enrollment on {host}:{port} (enroll.listen): {exc.strerror or exc}"
            ) from None
        sockets = getattr(self._server._server, "sockets", None) or ()
        bound = sockets[0].getsockname()[1] if sockets else port
        self.address = f"{host}:{bound}"

    def close(self) -> None:
        """Stop accepting (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._gate.close()
        if self.address:
            self._server.close()

    async def wait_closed(self) -> None:
        await self._gate.wait_closed()
        if self.address:
            await wait_server_closed(self._server)
