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
its listener without ``ssl=``; each accepted socket is first admitted by the server's
connection caps (:mod:`common.conns`: closed at once past them, before any handshake),
then upgraded with the public ``loop.start_tls()``. That call reports a
failed handshake to its caller, who knows the peer: :class:`TLSGate` counts it
(``fleet_manager_tls_handshake_failures_total{reason}``) and logs one line per peer
address and reason per minute (and at most 20 lines a minute in all), saying how many it
held back. Only a completed handshake gets grpclib's handler and the hardened HTTP/2
protocol. uvloop and asyncio both upgrade this way (tested on both).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Collection
from typing import Any

from common.conns import TLSAcceptor
from common.h2limits import H2Limits, HardenedServer
from common.ratelimit import LogLimiter, TokenBuckets

from .metrics import ManagerMetrics

log = logging.getLogger(__name__)

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


class TLSGate(TLSAcceptor):
    """Upgrades admitted connections to TLS (:class:`common.conns.TLSAcceptor`) and counts
    and logs refused handshakes (module doc).

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
        super().__init__(ssl_context=ssl_context, timeout=timeout)
        self.metrics = metrics
        self._clock = clock
        self._per_peer = LogLimiter(interval=_LOG_INTERVAL)
        self._lines = TokenBuckets(capacity=_LOG_BURST, window=_LOG_INTERVAL)
        self._unlogged = 0  # refusals not logged because of the overall line budget

    def refused(self, peer: str, exc: BaseException) -> None:
        """Count and (rate-limited) log one refused handshake."""
        label, text = classify(exc, self.timeout)
        self.metrics.tls_handshake_failures.labels(label).inc()
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


class GatedServer(HardenedServer):
    """``HardenedServer`` whose admitted connections pass a :class:`TLSGate`; refused
    connections are counted in ``fleet_manager_connections_refused_total{port,reason}``.
    Start it without ``ssl=``: the gate holds the TLS context."""

    def __init__(
        self,
        handlers: Collection[Any],
        *,
        limits: H2Limits,
        gate: TLSGate,
        name: str = "gRPC port",
    ) -> None:
        refused = gate.metrics.connections_refused
        super().__init__(
            handlers,
            limits=limits,
            tls=gate,
            name=name,
            on_refused=lambda reason: refused.labels(name, reason).inc(),
        )
