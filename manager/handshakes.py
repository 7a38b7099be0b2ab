"""TLS at the gRPC port's edge: every refused handshake is logged with its peer and why.

A server started with ``ssl=`` hands the handshake to asyncio (or uvloop), which drops
a failed one silently — it is logged only in asyncio's debug mode, and never with the
peer — so a Daemon with an expired certificate, a client of another CA or one without a
certificate got nothing in the Manager's log. It also cost memory: grpclib builds a
connection handler per accepted socket *before* the handshake and only frees it when an
HTTP/2 connection closes, so every refused handshake left one behind (2,000 refused
handshakes: 2,000 handlers kept for the life of the server).

The seam is the one ``common.h2limits.HardenedServer`` already uses, grpclib's
per-server protocol factory, so nothing global is patched: :class:`GatedServer` starts
its listener without ``ssl=`` and gives each accepted socket a :class:`_Handshake`
protocol, which upgrades it with the public ``loop.start_tls()``. That call reports a
failed handshake to its caller, who knows the peer: :class:`TLSGate` counts it
(``fleet_manager_tls_handshake_failures_total{reason}``) and logs one line per peer
address and reason per minute (and at most 20 lines a minute in all), saying how many it
held back. Only a completed handshake gets grpclib's handler and the hardened HTTP/2
protocol. uvloop and asyncio both upgrade this way (tested on both).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Collection
from typing import Any

import grpclib.protocol

from common.h2limits import H2Limits, HardenedServer

from .metrics import ManagerMetrics
from .ratelimit import LogLimiter, TokenBuckets

log = logging.getLogger(__name__)

# Bytes a peer may send before its handshake starts (a ClientHello is well under this).
_MAX_EARLY = 64 * 1024
# Log lines about refused handshakes: one per (address, reason) per minute, 20 a minute
# in all.
_LOG_INTERVAL = 60.0
_LOG_BURST = 20

# X.509 verification results (OpenSSL's X509_V_ERR_*) an operator can act on.
_VERIFY = {
    9: ("not_yet_valid", "client certificate is not valid yet (check the clocks)"),
    10: ("expired", "client certificate has expired"),
    18: ("unknown_ca", "client certificate is self-signed, not issued by the fleet CA"),
    19: ("unknown_ca", "client certificate chain is not from the fleet CA"),
    20: ("unknown_ca", "client certificate was not issued by the fleet CA"),
    21: ("unknown_ca", "client certificate was not issued by the fleet CA"),
    23: ("revoked", "client certificate is revoked"),
    26: ("wrong_purpose", "client certificate is not meant for TLS clients"),
}
_NOT_TLS = {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE"}
_NO_COMMON = {"NO_SHARED_CIPHER", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE"}


def classify(exc: BaseException, timeout: float) -> tuple[str, str]:
    """(metric label, what an operator should read) for a failed server handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        known = _VERIFY.get(exc.verify_code)
        if known is not None:
            return known
        return "bad_certificate", f"client certificate refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no_certificate", "no client certificate"
        if reason in _NOT_TLS:
            return "not_tls", "not TLS (a plaintext client, or not a TLS protocol at all)"
        if reason in _NO_COMMON or "VERSION" in reason:
            return "no_common_protocol", f"no TLS version or cipher in common ({reason})"
        if "ALERT" in reason:
            return "client_refused", f"the client refused the Manager's certificate ({reason})"
        return "tls_error", f"TLS error: {reason or exc}"
    if isinstance(exc, ConnectionAbortedError) and "longer" in str(exc):
        return "timeout", f"handshake not finished within {timeout:g} s"
    if isinstance(exc, ConnectionError | EOFError):
        return "closed", (
            "the client closed the connection during the handshake (it may not trust the "
            "Manager's certificate, or it was a TCP probe)"
        )
    return "error", f"{type(exc).__name__}: {exc}"


class TLSGate:
    """Upgrades accepted connections to TLS and reports refused handshakes (module doc).

    House lifecycle: ``close()`` aborts handshakes still in progress, ``wait_closed()``
    waits for their tasks.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        metrics: ManagerMetrics,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._metrics = metrics
        self._clock = clock
        self._handshakes: set[asyncio.Task[None]] = set()
        self._per_peer = LogLimiter(interval=_LOG_INTERVAL)
        self._lines = TokenBuckets(capacity=_LOG_BURST, window=_LOG_INTERVAL)
        self._unlogged = 0  # refusals not logged because of the overall line budget
        self._closing = False

    def protocol(self, make: Callable[[], grpclib.protocol.H2Protocol]) -> asyncio.Protocol:
        """The protocol of one accepted socket; ``make()`` builds the real one after a
        successful handshake."""
        return _Handshake(self, make)

    def upgrade(self, handshake: _Handshake) -> None:
        if self._closing:
            handshake.abort()
            return
        task = asyncio.get_running_loop().create_task(handshake.run(), name="tls-handshake")
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    def refused(self, peer: str, exc: BaseException) -> None:
        """Count and (rate-limited) log one refused handshake."""
        label, text = classify(exc, self.timeout)
        self._metrics.tls_handshake_failures.labels(label).inc()
        host = peer.rsplit(":", 1)[0]
        now = self._clock()
        held = self._per_peer.allow((host, label), now)
        if held is None:
            return
        if self._lines.take("all", 1, now):
            self._unlogged += 1
            return
        extra = []
        if held:
            extra.append(f"{held} more like it from {host} since the last line")
        if self._unlogged:
            extra.append(f"{self._unlogged} other refusals not logged")
            self._unlogged = 0
        more = f" ({'; '.join(extra)})" if extra else ""
        level = logging.INFO if label == "closed" else logging.WARNING
        log.log(level, "refused TLS handshake from %s: %s%s", peer, text, more)

    def close(self) -> None:
        self._closing = True
        for task in self._handshakes:
            task.cancel()

    async def wait_closed(self) -> None:
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)


class _Handshake(asyncio.Protocol):
    """One accepted socket until its TLS handshake is done; then it hands the connection
    to the real protocol and steps aside."""

    def __init__(self, gate: TLSGate, make: Callable[[], grpclib.protocol.H2Protocol]) -> None:
        self._gate = gate
        self._make = make
        self._raw: Any = None
        self._peer = "?"
        self._early = bytearray()  # received before start_tls took over (uvloop)
        self._handed_over = False
        self._plain: list[bytes] = []  # decrypted before the real protocol took over
        self._lost = False

    def connection_made(self, transport: Any) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: duck-typed.
        self._raw = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peer = f"{peer[0]}:{peer[1]}"
        # asyncio honours this; uvloop starts reading after connection_made anyway,
        # so bytes may still arrive before start_tls: see data_received.
        transport.pause_reading()
        self._gate.upgrade(self)

    def abort(self) -> None:
        if self._raw is not None:
            self._raw.abort()

    async def run(self) -> None:
        assert self._raw is not None
        loop = asyncio.get_running_loop()
        # start_tls() sets its TLS protocol on the socket, then schedules that protocol's
        # connection_made: bytes that came early are fed to it between the two (a TLS
        # protocol not yet connected stores what it is fed in its incoming buffer).
        loop.call_soon(self._hand_over_early)
        try:
            tls = await loop.start_tls(
                self._raw,
                self,
                self._gate.ssl_context,
                server_side=True,
                ssl_handshake_timeout=self._gate.timeout,
            )
        except asyncio.CancelledError:
            self._raw.abort()
            raise
        except Exception as exc:
            self._raw.abort()
            self._gate.refused(self._peer, exc)
            return
        if tls is None or self._lost or tls.is_closing():
            return
        protocol = self._make()
        tls.set_protocol(protocol)
        protocol.connection_made(tls)
        pending, self._plain = self._plain, []
        for data in pending:
            protocol.data_received(data)

    def _hand_over_early(self) -> None:
        self._handed_over = True
        if not self._early or self._raw is None:
            return
        data, self._early = bytes(self._early), bytearray()
        target: Any = self._raw.get_protocol()
        view = memoryview(data)
        while view:  # both loops' TLS protocols are buffered protocols
            buffer = target.get_buffer(len(view))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            target.buffer_updated(n)
            view = view[n:]

    def data_received(self, data: bytes) -> None:
        if self._handed_over:
            self._plain.append(data)  # decrypted, before run() passed the connection on
            return
        self._early += data
        if len(self._early) > _MAX_EARLY and self._raw is not None:
            self._raw.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True


class GatedServer(HardenedServer):
    """``HardenedServer`` whose connections pass a :class:`TLSGate` first. Start it
    without ``ssl=``: the gate holds the TLS context."""

    def __init__(self, handlers: Collection[Any], *, limits: H2Limits, gate: TLSGate) -> None:
        super().__init__(handlers, limits=limits)
        self._gate = gate

    def _protocol_factory(self) -> grpclib.protocol.H2Protocol:
        # The gate's protocol stands in for grpclib's until the handshake is done.
        handshake: Any = self._gate.protocol(super()._protocol_factory)
        return handshake
