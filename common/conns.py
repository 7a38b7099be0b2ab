"""Connections as a resource: file descriptors, caps per server and per peer, TLS at the edge.

Every accepted connection costs a file descriptor, and a process has a limit on them
(often 1,024). An attacker needs no certificate to open idle TCP connections: before
this, 1,100 of them made a Daemon unreachable (every ``accept`` failed with EMFILE) and
made asyncio log ~90,000 accept errors in 20 s. So, for every Fleet server:

* :func:`raise_fd_limit` raises the soft ``RLIMIT_NOFILE`` to the hard limit at start;
* a :class:`ConnGate` per server counts open connections in total and per peer address,
  and a connection past either cap is closed at once, *before* any TLS handshake or
  HTTP parsing (one rate-limited log line per peer and reason, counted by reason);
* :class:`TLSAcceptor` does the TLS handshake itself (``loop.start_tls``) after the gate
  has admitted the socket, within a timeout, and reports every refused handshake;
  a server started with ``ssl=`` would let the loop hold the socket, uncounted, for its
  whole handshake timeout;
* :func:`quiet_accept_errors` turns asyncio's report of an ``accept`` out of file
  descriptors — one exception-handler call per pending connection, each a traceback,
  ~100 a second per listener — into one line per 10 s (asyncio already stops accepting
  for a second each time; uvloop's libuv closes pending connections silently instead).

:func:`gated_factory` ties them together for ``loop.create_server``: the protocol it
returns admits, optionally upgrades to TLS, then hands the connection to the real
protocol and gives the slot back when the connection is lost.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
import time
from collections.abc import Callable
from typing import Any

from common.ratelimit import LogLimiter

log = logging.getLogger(__name__)

# Descriptors kept out of any server's automatic cap: the database pool, log and state
# files, agents' pipes, outgoing channels.
FD_RESERVE = 128
# Log lines about refused connections: one per (peer, reason) per interval.
_LOG_INTERVAL = 10.0
# Bytes a peer may send before its TLS handshake starts (a ClientHello is well under this).
_MAX_EARLY = 64 * 1024


def fd_limit() -> int:
    """The soft ``RLIMIT_NOFILE`` of this process."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_fd_limit(*, logger: logging.Logger = log) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (as nginx's
    ``worker_rlimit_nofile`` or systemd's ``LimitNOFILE`` would) and log the figure once;
    return the soft limit now in force. An unlimited hard limit is capped at 1,048,576
    (what Linux allows by default, ``fs.nr_open``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            logger.warning(
                "could not raise the open file limit from %d to %d: %s", soft, target, exc
            )
    logger.info(
        "open file limit: %d (hard limit %s)",
        soft,
        "unlimited" if hard == resource.RLIM_INFINITY else hard,
    )
    return soft


def auto_max_connections() -> int:
    """The default cap of one server: three quarters of the descriptors left after
    :data:`FD_RESERVE` (at least 16), so that one flooded port leaves room for the
    database, the files and the other ports."""
    return max(16, (fd_limit() - FD_RESERVE) * 3 // 4)


class ConnGate:
    """Open connections of one server, in total and per peer address.

    ``max_connections`` 0 means :func:`auto_max_connections` at construction.
    ``observer(reason)`` is told of each refusal (a metric); ``counts`` holds them too.
    """

    def __init__(
        self,
        *,
        name: str,
        max_connections: int = 0,
        max_per_peer: int = 0,
        observer: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_connections < 0 or max_per_peer < 0:
            raise ValueError(f"{name}: connection caps must be >= 0")
        self.name = name
        self.max_connections = max_connections or auto_max_connections()
        self.max_per_peer = max_per_peer or self.max_connections
        self.open = 0
        self.counts: dict[str, int] = {}
        self._per_peer: dict[str, int] = {}
        self._observer = observer
        self._clock = clock
        self._log = LogLimiter(interval=_LOG_INTERVAL)

    def admit(self, peer: str | None) -> Ticket | None:
        """A slot for a new connection from ``peer`` (an address without port; None for a
        Unix socket, only counted in total), or None when a cap is reached (logged)."""
        if self.open >= self.max_connections:
            self.refuse(
                peer or "local",
                "server_full",
                f"{self.open} connections open (limit {self.max_connections}: "
                f"{self.name} max_connections)",
            )
            return None
        if peer is not None:
            held = self._per_peer.get(peer, 0)
            if held >= self.max_per_peer:
                self.refuse(
                    peer,
                    "peer_full",
                    f"{held} connections open from that address (limit {self.max_per_peer}: "
                    f"{self.name} max_connections_per_peer)",
                )
                return None
            self._per_peer[peer] = held + 1
        self.open += 1
        return Ticket(self, peer)

    def _release(self, peer: str | None) -> None:
        self.open -= 1
        if peer is not None:
            left = self._per_peer[peer] - 1
            if left:
                self._per_peer[peer] = left
            else:
                del self._per_peer[peer]

    def refuse(self, peer: str, reason: str, why: str) -> None:
        """Count a refusal and log it: one line per (peer, reason) per 10 s, saying how many
        were left out since."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self._observer is not None:
            self._observer(reason)
        unlogged = self._log.allow((peer, reason), self._clock())
        if unlogged is None:
            return
        more = f" ({unlogged} more like it since the last such line)" if unlogged else ""
        log.warning("%s: closed a new connection from %s at once: %s%s", self.name, peer, why, more)


class Ticket:
    """One admitted connection's slot; :meth:`release` is idempotent."""

    __slots__ = ("_gate", "_peer")

    def __init__(self, gate: ConnGate, peer: str | None) -> None:
        self._gate: ConnGate | None = gate
        self._peer = peer

    def release(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate._release(self._peer)


def peer_host(transport: Any) -> tuple[str | None, str]:
    """(address without port or None on a Unix socket, ``host:port`` for log lines)."""
    addr = transport.get_extra_info("peername")
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), f"{addr[0]}:{addr[1]}"
    return None, "local"


class TLSAcceptor:
    """Upgrades admitted connections to TLS within ``timeout`` and reports refused
    handshakes to :meth:`refused` (subclasses count and log them). Owns the handshake
    tasks: ``close()`` aborts those in progress, ``wait_closed()`` waits for them.

    ``ssl_context`` is used live: a certificate chain loaded into it later (a reload or
    renewal) applies to the next handshakes.
    """

    def __init__(
        self, *, ssl_context: ssl.SSLContext, timeout: float, max_handshakes: int = 64
    ) -> None:
        self.ssl_context = ssl_context
        self.timeout = timeout
        self._handshakes: set[asyncio.Task[None]] = set()
        self._closing = False
        self.limit_handshakes(max_handshakes)

    def limit_handshakes(self, count: int) -> None:
        """At most ``count`` handshakes in progress at once (``grpc.limits.max_handshakes``);
        the others wait for a turn, holding only their socket, within ``timeout``."""
        if count < 1:
            raise ValueError(f"max_handshakes must be positive, not {count}")
        self.max_handshakes = count
        self.turns = asyncio.Semaphore(count)

    def refused(self, peer: str, exc: BaseException) -> None:
        """A handshake from ``peer`` failed (the base class logs at debug level)."""
        log.debug("refused TLS handshake from %s: %s", peer, exc)

    def upgrade(self, gated: _Gated) -> None:
        if self._closing:
            gated.abort()
            return
        task = asyncio.get_running_loop().create_task(gated.handshake(), name="tls-handshake")
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    def close(self) -> None:
        self._closing = True
        for task in self._handshakes:
            task.cancel()

    async def wait_closed(self) -> None:
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)


def gated_factory(
    make: Callable[[], asyncio.BaseProtocol], *, gate: ConnGate, tls: TLSAcceptor | None = None
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for ``loop.create_server`` (started *without* ``ssl=``): each
    accepted socket is admitted by ``gate`` (else closed at once), upgraded by ``tls`` if
    given, then served by ``make()``; its slot is given back when it is lost."""

    def factory() -> asyncio.Protocol:
        return _Gated(gate, tls, make)

    return factory


class _Gated(asyncio.Protocol):
    """One accepted socket: admission, then (with TLS) the handshake, then the real
    protocol, to which every later event is passed on."""

    def __init__(
        self, gate: ConnGate, tls: TLSAcceptor | None, make: Callable[[], asyncio.BaseProtocol]
    ) -> None:
        self._gate = gate
        self._tls = tls
        self._make = make
        self._ticket: Ticket | None = None
        self._raw: Any = None
        self._peer = "?"
        self._inner: Any = None  # the real protocol, once it has the connection
        self._early = bytearray()  # received before start_tls took over (uvloop)
        self._handed_over = False
        self._plain: list[bytes] = []  # decrypted before the real protocol took over
        self._lost = False

    def connection_made(self, transport: Any) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: duck-typed.
        self._raw = transport
        host, self._peer = peer_host(transport)
        self._ticket = self._gate.admit(host)
        if self._ticket is None:
            transport.abort()  # no FIN handshake to wait for, no TIME_WAIT
            return
        if self._tls is None:
            self._connect(transport)
            return
        # asyncio honours this; uvloop starts reading after connection_made anyway,
        # so bytes may still arrive before start_tls: see data_received.
        transport.pause_reading()
        self._tls.upgrade(self)

    def _connect(self, transport: Any) -> None:
        inner = self._make()
        self._inner = inner
        inner.connection_made(transport)

    def abort(self) -> None:
        # Dropping the transport breaks the cycle transport -> protocol -> this object:
        # a refused handshake's transport never calls connection_lost here, so nothing
        # else would, and the TLS state would wait for a full collection.
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.abort()
        self._release()

    def _release(self) -> None:
        if self._ticket is not None:
            self._ticket.release()
            self._ticket = None

    async def handshake(self) -> None:
        assert self._raw is not None and self._tls is not None
        loop = asyncio.get_running_loop()
        waited = loop.time()
        try:
            async with asyncio.timeout(self._tls.timeout):
                await self._tls.turns.acquire()
        except TimeoutError:
            self.abort()
            self._tls.refused(
                self._peer,
                TimeoutError(
                    f"no handshake turn within {self._tls.timeout:g} s "
                    f"({self._tls.max_handshakes} in progress)"
                ),
            )
            return
        except asyncio.CancelledError:
            self.abort()
            raise
        try:
            left = max(0.1, self._tls.timeout - (loop.time() - waited))
            await self._start_tls(loop, left)
        finally:
            self._tls.turns.release()

    async def _start_tls(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        assert self._tls is not None
        if self._raw is None or self._lost:  # gone while it waited for a turn
            self._release()
            return
        # start_tls() sets its TLS protocol on the socket, then schedules that protocol's
        # connection_made: bytes that came early are fed to it between the two (a TLS
        # protocol not yet connected stores what it is fed in its incoming buffer).
        loop.call_soon(self._hand_over_early)
        try:
            tls = await loop.start_tls(
                self._raw,
                self,
                self._tls.ssl_context,
                server_side=True,
                ssl_handshake_timeout=timeout,
            )
        except asyncio.CancelledError:
            self.abort()
            raise
        except Exception as exc:
            self.abort()
            self._tls.refused(self._peer, exc)
            return
        if tls is None or self._lost or tls.is_closing():
            self._release()
            self._raw = None
            return
        # The TLS transport now reports to this object (connection_lost included), which
        # passes everything on.
        self._connect(tls)
        pending, self._plain = self._plain, []
        for data in pending:
            self._inner.data_received(data)

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
        if self._inner is not None:
            self._inner.data_received(data)
            return
        if self._handed_over:
            self._plain.append(data)  # decrypted, before the real protocol took over
            return
        self._early += data
        if len(self._early) > _MAX_EARLY and self._raw is not None:
            self._raw.abort()

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return False

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._release()
        inner, self._inner, self._raw = self._inner, None, None  # no cycles left (abort)
        if inner is not None:
            inner.connection_lost(exc)


class _AcceptErrors:
    """The loop's exception handler, less asyncio's flood of accept errors (see module)."""

    def __init__(self, previous: Any, clock: Callable[[], float]) -> None:
        self._previous = previous
        self._clock = clock
        self._log = LogLimiter(interval=_LOG_INTERVAL)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != "socket.accept() out of system resource":
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        unlogged = self._log.allow("accept", self._clock())
        if unlogged is None:
            return
        more = f" ({unlogged} more since the last such line)" if unlogged else ""
        exc = context.get("exception")
        log.error(
            "cannot accept connections: %s (open file limit %d); new connections wait and are "
            "retried in 1 s%s",
            getattr(exc, "strerror", None) or exc,
            fd_limit(),
            more,
        )


def quiet_accept_errors(
    loop: asyncio.AbstractEventLoop, *, clock: Callable[[], float] = time.monotonic
) -> None:
    """Install on ``loop`` (from ``__main__``) a filter that logs asyncio's "accept out of
    system resource" errors as one line per 10 s instead of a traceback per pending
    connection; everything else goes to the previous handler."""
    loop.set_exception_handler(_AcceptErrors(loop.get_exception_handler(), clock))
