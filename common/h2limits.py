"""HTTP/2 limits for every Fleet gRPC server: buffered bodies, floods, abusive peers.

grpclib's server accepts whatever its peer sends: request bodies are acknowledged (so
the peer may send more) as fast as they are read, whatever they add up to; a peer may
reset, ping or re-send SETTINGS as often as it likes, each costing the event loop the
full h2 state machine (HTTP/2 rapid reset, CVE-2023-44487). :func:`make_server` builds
a grpclib ``Server`` whose connections are bounded by an :class:`H2Limits`:

* **what a connection may make the server hold.** The SETTINGS the server sends cap
  concurrent streams and the flow-control windows (bytes a peer may send ahead of the
  server reading them). Request bytes received on a connection's open streams are
  charged to the connection, to the peer (its certificate identity, or its address
  without TLS) and to the server; a stream that would take any of them over its budget
  is refused — ``RESOURCE_EXHAUSTED`` from its length prefix when the guard
  (:mod:`common.rpc`) reads it, else ``RST_STREAM(ENHANCE_YOUR_CALM)`` — and its bytes
  are dropped. The charge is given back when the stream ends.
* **stalled bodies.** The guard gives up on a request body that makes no progress for
  ``body_stall_timeout`` seconds (``DEADLINE_EXCEEDED``; its stream is reset).
* **floods.** Stream resets, PINGs, SETTINGS and other frames that carry no request
  data (WINDOW_UPDATE, PRIORITY, empty DATA, unknown types) are counted per connection
  over ``flood_window`` seconds; past a limit the connection gets GOAWAY with
  ENHANCE_YOUR_CALM and is closed, as nginx, Go and grpc-go do, one rate-limited log
  line names the peer and the reason, and that peer's new connections are turned away
  the same way for ``abuse_cooldown`` seconds. Bytes are fed to h2 in slices, so a
  burst of tiny frames is cut off within a slice of the limit rather than parsed whole,
  and a stream reset in the same read as its HEADERS never gets a handler task.
* **connections and their fds** (:mod:`common.conns`). At most ``max_connections``
  connections are open at once (0: three quarters of the file descriptors left after a
  reserve) and ``max_connections_per_peer`` from one address; a connection past a cap is
  closed as soon as it is accepted, before any TLS handshake (the server does the
  handshake itself, after admission, when given a :class:`~common.conns.TLSAcceptor`). A
  connection that has not sent its HTTP/2 preface and SETTINGS within
  ``preface_timeout`` seconds is closed; one with no open stream for ``idle_timeout``
  seconds gets GOAWAY(NO_ERROR) and is closed — grpclib's (and grpcio's) channels dial
  again on their next call.
* **early refusals.** A handler may name, per method path, a check to make when a call's
  HEADERS arrive (:meth:`common.rpc.GuardedService.early_refusals`: the admission
  budgets of :mod:`common.overload`). When it refuses, the call is answered there with a
  trailers-only gRPC response — the same status and message the handler would send —
  and its stream is reset (``NO_ERROR``) if its body is still coming, without a grpclib
  stream, handler task or deadline timer; what of its body still arrives is
  acknowledged and dropped, charged to no budget. Under overload most calls are
  refused, and this makes each refusal several times cheaper (counted as
  ``refused_early``).

The seam is grpclib's per-server protocol factory: :class:`HardenedServer` subclasses
``grpclib.server.Server`` and returns its own ``H2Protocol`` for each connection;
nothing global is patched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import Any

import grpclib.protocol
import grpclib.server
from grpclib.config import Configuration
from grpclib.exceptions import GRPCError
from grpclib.metadata import decode_timeout, encode_grpc_message
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    Event,
    PingAckReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamReset,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from .conns import ConnGate, TLSAcceptor, gated_factory
from .h2shield import Shield
from .tls import identity_from_cert

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
_MIN_WINDOW, _MAX_WINDOW = 65_535, 2**31 - 1
# Bytes handed to h2 at a time: how far past a flood limit parsing may run (~1,000 tiny
# frames), while a 16 KiB DATA frame still costs one or two calls.
_FEED_SLICE = 16 * 1024
# Bytes fed per connection per event loop turn (see _ShieldedProtocol._feed).
_FEED_PER_TURN = 64 * 1024
# Seconds between a GOAWAY for abuse and closing the socket (see _ShieldedProcessor.calm);
# shorter for a connection turned away while its peer cools down, so that a peer
# redialling in a loop does not keep dozens of lingering connections (and their TLS
# buffers) open.
_LINGER = 1.0
_LINGER_TURNED_AWAY = 0.2

# A check made when a call's HEADERS arrive (see the module doc): given the connection,
# the call's timeout in seconds (None without one) and its headers, the refusal to
# answer, or None.
EarlyRefusal = Callable[["ShieldedConnection", float | None, dict[str, str]], GRPCError | None]
# Request content types grpclib's server (with its proto codec) accepts; others get its
# own answer.
_GRPC_CONTENT_TYPES = frozenset({"application/grpc", "application/grpc+proto"})


@dataclass(frozen=True)
class H2Limits:
    """Per-server HTTP/2 bounds (the apps' ``[grpc.limits]`` table). Defaults are safe for
    a Manager serving thousands of Daemons; each is a plain number so it can be a
    configuration key."""

    # SETTINGS_MAX_CONCURRENT_STREAMS: streams one connection may have open at once.
    max_concurrent_streams: int = 100
    # Flow-control windows: bytes a peer may send ahead of the server reading them, on
    # one stream and on the whole connection.
    stream_window: int = 1 * _MIB
    connection_window: int = 2 * _MIB
    # Request bytes held for open streams: per connection, per peer, per server. A
    # connection must hold at least one request of the largest size allowed.
    buffer_per_connection: int = 8 * _MIB
    buffer_per_peer: int = 16 * _MIB
    buffer_total: int = 64 * _MIB
    # A request body that receives nothing for this long is dropped.
    body_stall_timeout: float = 10.0
    # Flood limits, per connection per flood_window seconds: RST_STREAM received (or
    # streams h2 reset for the peer's errors); PINGs; SETTINGS frames; WINDOW_UPDATE,
    # PRIORITY, PING ACK, empty DATA and unknown frames together. Each HEADERS or DATA
    # frame the server sends lets one PING and one control frame through uncounted
    # (clients measure and open the link as answers arrive: ShieldedConnection.free).
    flood_window: float = 10.0
    max_resets: int = 200
    max_pings: int = 100
    max_settings: int = 100
    max_control_frames: int = 2000
    # A peer whose connection was closed for a flood is turned away this long (0: never).
    abuse_cooldown: float = 10.0
    # Connections open at once on this server (0: automatic, from the open file limit:
    # common.conns.auto_max_connections) and from one peer address (a NAT or a load
    # balancer may front hundreds of Daemons).
    max_connections: int = 0
    max_connections_per_peer: int = 512
    # Seconds a connection may take to send its HTTP/2 preface and SETTINGS (after TLS),
    # and may stay open without any stream (Daemons heartbeat every 10 s; the Manager's
    # pooled channels to Daemons dial again when needed).
    preface_timeout: float = 10.0
    idle_timeout: float = 600.0
    # TLS handshakes in progress at once on this server; more admitted connections wait
    # for a turn (within the handshake timeout) holding only their socket. A handshake is
    # CPU-bound, so more at once would not finish sooner, but each holds ~45 KiB of TLS
    # state: a burst of a thousand would hold ~45 MiB.
    max_handshakes: int = 64
    # Connections one node certificate may hold open at once on this server. A Daemon
    # needs one (two for a moment when it renews or fails over); each costs up to ~300 KiB
    # once it has sent data (uvloop's 256 KiB TLS read buffer, OpenSSL). Other roles (the
    # Manager's workers and replicas, operators' scripts) are not capped by this.
    max_connections_per_node: int = 32

    def __post_init__(self) -> None:
        for name in ("stream_window", "connection_window"):
            value = getattr(self, name)
            if not _MIN_WINDOW <= value <= _MAX_WINDOW:
                raise ValueError(f"{name} must be within {_MIN_WINDOW}..{_MAX_WINDOW}, not {value}")
        for f in fields(self):
            if getattr(self, f.name) < 0 or (
                f.name not in ("abuse_cooldown", "max_connections") and not getattr(self, f.name)
            ):
                raise ValueError(f"{f.name} must be positive, not {getattr(self, f.name)}")
        if not self.buffer_per_connection <= self.buffer_per_peer <= self.buffer_total:
            raise ValueError(
                "buffer_per_connection <= buffer_per_peer <= buffer_total must hold, not "
                f"{self.buffer_per_connection}, {self.buffer_per_peer}, {self.buffer_total}"
            )


def make_server(
    handlers: Collection[Any],
    *,
    limits: H2Limits | None = None,
    tls: TLSAcceptor | None = None,
    name: str = "gRPC server",
    on_refused: Callable[[str], None] | None = None,
) -> HardenedServer:
    """A grpclib ``Server`` for ``handlers`` whose connections obey ``limits``; with
    ``tls``, start it without ``ssl=``: the acceptor does the handshakes."""
    return HardenedServer(
        handlers, limits=limits or H2Limits(), tls=tls, name=name, on_refused=on_refused
    )


class HardenedServer(grpclib.server.Server):
    """``grpclib.server.Server`` whose connections are :class:`ShieldedConnection`.

    A handler with an ``early_refusals()`` method (``GuardedService``) has its checks made
    when a call's HEADERS arrive (module doc: early refusals)."""

    def __init__(
        self,
        handlers: Collection[Any],
        *,
        limits: H2Limits,
        tls: TLSAcceptor | None = None,
        name: str = "gRPC server",
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        # GuardedService handlers say how large a request they accept: one must always
        # fit beside what the flow-control window lets other streams send meanwhile.
        largest = max([0, *(getattr(h, "max_message_bytes", 0) for h in handlers)])
        if largest + 5 + limits.connection_window > limits.buffer_per_connection:
            raise ValueError(
                f"buffer_per_connection ({limits.buffer_per_connection}) must hold one "
                f"request of the largest size accepted ({largest} bytes + 5) and a "
                f"connection window ({limits.connection_window})"
            )
        super().__init__(
            handlers,
            config=Configuration(
                http2_connection_window_size=limits.connection_window,
                http2_stream_window_size=limits.stream_window,
            ),
        )
        self.shield = Shield(limits)
        # Counted and capped before anything else happens on a connection (common.conns).
        self.conns = ConnGate(
            name=name,
            max_connections=limits.max_connections,
            max_per_peer=limits.max_connections_per_peer,
            observer=on_refused,
        )
        self.tls = tls
        if tls is not None:
            tls.limit_handshakes(limits.max_handshakes)
        self.early_refusals: dict[str, EarlyRefusal] = {}
        for h in handlers:
            early = getattr(h, "early_refusals", None)
            if early is not None:
                self.early_refusals.update(early())

    def _protocol_factory(self) -> grpclib.protocol.H2Protocol:
        # grpclib hands this to loop.create_server: each accepted socket is admitted (and
        # upgraded to TLS) first; only then is grpclib's handler made for it.
        gated: Any = gated_factory(self._h2_protocol, gate=self.conns, tls=self.tls)()
        return gated

    def _h2_protocol(self) -> grpclib.protocol.H2Protocol:
        base = super()._protocol_factory()  # registers its handler with the server
        return _ShieldedProtocol(
            base.handler,
            base.config,
            base.h2_config,
            shield=self.shield,
            early_refusals=self.early_refusals,
        )


class ShieldedConnection(grpclib.protocol.Connection):
    """A grpclib connection that charges its streams' request bytes to its budget.

    :class:`common.rpc.GuardedService` finds it as ``stream._stream.connection`` and
    reserves a request's announced length with :meth:`admit` before reading the body.
    """

    def __init__(
        self, connection: H2Connection, transport: Any, *, config: Configuration,
        shield: Shield, peer: str, label: str,
    ) -> None:  # fmt: skip
        transport = _CorkedTransport(transport)
        super().__init__(connection, transport, config=config)
        self.h2 = connection
        self.transport = transport
        self.shield = shield
        self.peer = peer  # the budget and cool-down key
        self.label = label  # for log lines: address and identity
        self.held = 0
        self.greeted = False  # the peer's SETTINGS arrived (its preface was complete)
        self._charges: dict[int, list[int]] = {}  # stream id -> [charge, bytes received]
        self._credits = [0, 0, 0, 0]  # per flood kind, frames a send made free (see free())

    def headers_send_process(self) -> None:
        super().headers_send_process()
        self._sent()

    def data_send_process(self) -> None:
        super().data_send_process()
        self._sent()

    def _sent(self) -> None:
        credits = self._credits
        credits[1] = min(credits[1] + 1, _FREE_CAP[1])
        credits[3] = min(credits[3] + 1, _FREE_CAP[3])

    def free(self, kind: int) -> bool:
        """Whether a frame of flood ``kind`` answers what the server sent, and so does not
        count: each HEADERS or DATA frame the server sends lets one PING and one control
        frame (WINDOW_UPDATE...) through uncounted (at most 4 and 256 banked). That is how
        clients measure and open the link while calls are answered — gRPC's BDP pings,
        grpcio's two WINDOW_UPDATEs per answer; grpc-go likewise counts only pings
        "without data"."""
        credits = self._credits
        if credits[kind]:
            credits[kind] -= 1
            return True
        return False

    @property
    def stall_timeout(self) -> float:
        return self.shield.limits.body_stall_timeout

    def admit(self, stream_id: int, nbytes: int) -> str | None:
        """Reserve ``nbytes`` for a stream's request; the refusal reason if over budget."""
        entry = self._charges.setdefault(stream_id, [0, 0])
        reason = self._raise(entry, nbytes)
        if reason is not None:
            self.shield.count("buffer")
            self.shield.note(
                "buffer",
                self.peer,
                f"refused a request of {nbytes} bytes from {self.label}: {reason}",
            )
        return reason

    def received(self, stream_id: int, nbytes: int) -> bool:
        """Charge bytes that arrived for an open stream; False if over budget."""
        entry = self._charges.setdefault(stream_id, [0, 0])
        entry[1] += nbytes
        if entry[1] <= entry[0]:
            return True
        reason = self._raise(entry, entry[1])
        if reason is None:
            return True
        self.shield.count("buffer")
        self.shield.note("buffer", self.peer, f"reset a stream from {self.label}: {reason}")
        return False

    def release(self, stream_id: int) -> None:
        entry = self._charges.pop(stream_id, None)
        if entry is not None and entry[0]:
            self.held -= entry[0]
            self.shield.give(self.peer, entry[0])

    def release_all(self) -> None:
        for stream_id in list(self._charges):
            self.release(stream_id)

    def _raise(self, entry: list[int], charge: int) -> str | None:
        delta = charge - entry[0]
        if delta <= 0:
            return None
        limit = self.shield.limits.buffer_per_connection
        if self.held + delta > limit:
            return (
                f"the connection already has {self.held} request bytes in progress (limit {limit})"
            )
        reason = self.shield.take(self.peer, delta)
        if reason is None:
            self.held += delta
            entry[0] = charge
        return reason


class _CorkedTransport:
    """A connection's transport whose writes within one event loop turn go out as one.

    grpclib writes each frame it sends by itself: a served unary call's HEADERS, DATA
    and trailers are three writes, each its own TLS record and ``send`` system call
    (on loopback the sender's call also pays for the receiving side), and the
    frames h2 queues while a read is parsed (acknowledgements, early refusals) one more
    per slice. Here writes are gathered and handed to the transport together at the end
    of the turn (``call_soon``), in the order they were made. ``close()`` writes what is
    gathered first, so a GOAWAY still goes out; ``abort()`` drops it. Everything else
    is the transport's own.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._uncork)
        self._pending.append(data)

    def _uncork(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._uncork()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return int(self._transport.get_write_buffer_size()) + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


# Event class -> flood counter: 0 resets, 1 pings, 2 settings, 3 other control frames.
_COUNTED: dict[type[Event], int] = {
    StreamReset: 0,
    PingReceived: 1,
    RemoteSettingsChanged: 2,
    PingAckReceived: 3,
    PriorityUpdated: 3,
    WindowUpdated: 3,
    UnknownFrameReceived: 3,
}
_FLOODS = ("stream resets", "PINGs", "SETTINGS frames", "control frames")
_FREE_CAP = (0, 4, 0, 256)  # per flood kind, the most uncounted frames sends can bank
_KEYS = ("resets", "pings", "settings", "control")
_GOAWAY_DATA = (b"too_many_resets", b"too_many_pings", b"too_many_settings", b"too_many_frames")


class _ShieldedProcessor(grpclib.protocol.EventsProcessor):
    """grpclib's event dispatch plus flood counting and the byte budget."""

    connection: ShieldedConnection

    def __init__(
        self,
        handler: Any,
        connection: ShieldedConnection,
        *,
        early_refusals: dict[str, EarlyRefusal] | None = None,
    ) -> None:
        super().__init__(handler, connection)
        self._early = early_refusals or {}
        limits = connection.shield.limits
        self._caps = (
            limits.max_resets, limits.max_pings, limits.max_settings, limits.max_control_frames
        )  # fmt: skip
        self._counts = [0, 0, 0, 0]
        self._window_start = time.monotonic()
        self.abused = False
        self._skip: set[int] = set()
        self.last_active = time.monotonic()  # when a stream last opened or ended

    def register(self, stream: grpclib.protocol.Stream) -> Callable[[], None]:
        release = super().register(stream)
        stream_id, connection = stream.id, self.connection
        assert stream_id is not None
        self.last_active = time.monotonic()

        def release_stream() -> None:
            connection.release(stream_id)
            release()
            self.last_active = time.monotonic()

        return release_stream

    def process_batch(self, events: list[Event]) -> None:
        """Process one slice's events; streams reset within it get no handler at all."""
        self._skip = {e.stream_id for e in events if type(e) is StreamReset and e.stream_id}
        for event in events:
            if self.abused:
                return
            self.process(event)
        self._skip = set()

    def process(self, event: Event) -> None:
        kind = _COUNTED.get(type(event))
        if kind == 2:
            self.connection.greeted = True
        if kind is not None and not self.connection.free(kind) and self._flooded(kind):
            return
        if type(event) is UnknownFrameReceived:
            return  # grpclib has no processor for it (it would raise NotImplementedError)
        super().process(event)

    def process_request_received(self, event: RequestReceived) -> None:
        if event.stream_id in self._skip:
            return  # rapid reset: HEADERS and RST_STREAM in one read, nothing to serve
        if self._early and self._refused_early(event):
            return
        super().process_request_received(event)

    def _refused_early(self, event: RequestReceived) -> bool:
        """Answer the call from its HEADERS if its method's check refuses it (module doc:
        early refusals). Anything unusual — not a gRPC request grpclib would take, a bad
        ``grpc-timeout``, a peer not reading what it is sent — is left to grpclib, which
        answers it as before (and waits for a peer that does not read)."""
        # grpclib's server decodes header names and values (header_encoding="ascii").
        headers: dict[str, str] = dict(event.headers)  # type: ignore[arg-type]
        check = self._early.get(headers.get(":path", ""))
        connection = self.connection
        if (
            check is None
            or headers.get(":method") != "POST"
            or headers.get("content-type") not in _GRPC_CONTENT_TYPES
            or headers.get("te") != "trailers"
            or not connection.write_ready.is_set()
        ):
            return False
        timeout = headers.get("grpc-timeout")
        try:
            deadline_left = None if timeout is None else decode_timeout(timeout)
        except ValueError:
            return False
        refusal = check(connection, deadline_left, headers)
        if refusal is None:
            return False
        stream_id = event.stream_id
        assert stream_id is not None
        h2 = connection.h2
        with contextlib.suppress(ProtocolError):
            # grpclib's trailers-only answer, as its handler path sends it.
            h2.send_headers(
                stream_id,
                [
                    (":status", "200"),
                    ("content-type", "application/grpc+proto"),
                    ("grpc-status", str(refusal.status.value)),
                    ("grpc-message", encode_grpc_message(refusal.message or "")),
                ],
                end_stream=True,
            )
            stream = h2.streams.get(stream_id)
            if stream is not None and not stream.closed:
                # The body is still coming: ask the peer to stop sending it (what grpclib
                # does after an error); what was in flight is acknowledged by h2.
                h2.reset_stream(stream_id, error_code=ErrorCodes.NO_ERROR)
        connection.headers_send_process()  # _feed flushes once per slice
        connection.shield.count("refused_early")
        return True

    def process_data_received(self, event: DataReceived) -> None:
        size = len(event.data)
        if not size and event.stream_ended is None:
            # Nothing to deliver (grpclib would even take it for the end of the body).
            if not self._flooded(3) and event.flow_controlled_length:
                self.connection.ack(event.stream_id, event.flow_controlled_length)
            return
        stream = self.streams.get(event.stream_id)
        if stream is not None and size and not self.connection.received(event.stream_id, size):
            self._refuse(stream)
            self.connection.ack(event.stream_id, event.flow_controlled_length)
            return
        super().process_data_received(event)

    def _refuse(self, stream: grpclib.protocol.Stream) -> None:
        """Reset a stream over its byte budget and cancel its handler."""
        assert stream.id is not None
        with contextlib.suppress(ProtocolError):
            self.connection.h2.reset_stream(stream.id, error_code=ErrorCodes.ENHANCE_YOUR_CALM)
        self.connection.flush()
        # Cancel the handler quietly: grpclib logs every "terminated" stream at INFO,
        # which would be one line per refused stream of an attack (the shield logs one).
        with contextlib.suppress(KeyError):  # already cancelled (reset by the peer)
            self.handler.cancel(stream)

    def _flooded(self, kind: int) -> bool:
        now = time.monotonic()
        if now - self._window_start >= self.connection.shield.limits.flood_window:
            self._window_start, self._counts = now, [0, 0, 0, 0]
        self._counts[kind] += 1
        if self._counts[kind] <= self._caps[kind]:
            return False
        window = self.connection.shield.limits.flood_window
        self.calm(
            _KEYS[kind],
            f"{self._counts[kind]} {_FLOODS[kind]} within {window:g} s (limit {self._caps[kind]})",
            _GOAWAY_DATA[kind],
        )
        return True

    def calm(self, key: str, reason: str, debug: bytes) -> None:
        """GOAWAY(ENHANCE_YOUR_CALM), stop serving and reading, log; close a moment later.

        The pause before closing is a lingering close: a peer still sending when the
        socket closed would get a TCP reset, and with it lose the GOAWAY that tells it
        (and its operator) why. Its handlers are cancelled and its charges returned at
        once; reading is paused, so what it sends meanwhile costs nothing.
        """
        if self.abused:
            return
        self.abused = True
        connection = self.connection
        with contextlib.suppress(ProtocolError):
            connection.h2.close_connection(
                error_code=ErrorCodes.ENHANCE_YOUR_CALM, additional_data=debug
            )
        connection.shield.offended(key, connection.peer, connection.label, reason)
        if connection.is_closing():
            self.close(f"closed for abuse: {reason}")
            return
        connection.flush()
        connection.transport.pause_reading()
        self.handler.close()  # cancels every handler task of this connection
        connection.release_all()
        linger = _LINGER_TURNED_AWAY if key == "cooling" else _LINGER
        asyncio.get_running_loop().call_later(linger, self._drop, f"closed for abuse: {reason}")

    def _drop(self, reason: str) -> None:
        """End an abusive connection after its linger: abort, not close. A TLS close waits
        up to 30 s for the peer's close_notify, holding ~60 KiB of TLS state, and an
        attacker redialling after each GOAWAY never sends one: 800 turned-away
        connections in 3 s held 46 MiB (test_hostile_h2's rapid reset)."""
        with contextlib.suppress(Exception):
            self.connection.transport.abort()
        self.close(reason)

    def close(self, reason: str = "Connection closed") -> None:
        super().close(reason)
        self.connection.release_all()
        _forget_cancellations(self.handler)


def _forget_cancellations(handler: Any) -> None:
    """Let a closed connection's cancelled calls be freed as soon as they end.

    A cancelled task keeps its CancelledError until someone asks for its result, and
    grpclib never asks: the error's traceback holds the call's frames (its stream, the
    body bytes it buffered), which reach the connection's handler, which holds the task
    — a reference cycle only a full garbage collection frees, and an idle server runs
    one rarely (after the Daemon-port attack: ~20,000 objects and their pages kept for
    minutes). Taking the error once drops it, as grpclib drops its own cycles on close.
    """
    tasks = [*getattr(handler, "_cancelled", ()), *getattr(handler, "_tasks", {}).values()]
    for task in tasks:
        task.add_done_callback(_take_cancellation)


def _take_cancellation(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        with contextlib.suppress(asyncio.CancelledError):
            task.exception()


class _ShieldedProtocol(grpclib.protocol.H2Protocol):
    """grpclib's H2Protocol with Fleet's SETTINGS, budget and flood limits."""

    connection: ShieldedConnection
    processor: _ShieldedProcessor

    def __init__(
        self,
        handler: Any,
        config: Any,
        h2_config: Any,
        *,
        shield: Shield,
        early_refusals: dict[str, EarlyRefusal] | None = None,
    ) -> None:
        super().__init__(handler, config, h2_config)
        self.shield = shield
        self.early_refusals = early_refusals or {}
        self._backlog = b""  # received, not yet fed to h2 (see _feed)
        self._timer: asyncio.TimerHandle | None = None  # preface, then idle (see _check)
        self._made = 0.0  # loop time of connection_made
        self._counted: str | None = None  # the node identity this connection counts for

    def connection_made(self, transport: Any) -> None:
        # grpclib's connection_made, with the SETTINGS and classes of this module.
        limits = self.shield.limits
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        h2 = H2Connection(config=self.h2_config)
        h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
                SettingCodes.MAX_HEADER_LIST_SIZE: H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE,
            },
        )
        h2.initiate_connection()
        if limits.connection_window > _MIN_WINDOW:
            h2.increment_flow_control_window(limits.connection_window - _MIN_WINDOW)
        self._transport = transport
        peer, label = _peer_of(transport, self)
        self.connection = ShieldedConnection(
            h2, transport, config=self.config, shield=self.shield, peer=peer, label=label
        )
        self.connection.flush()
        self.connection.initialize()
        self.processor = _ShieldedProcessor(
            self.handler, self.connection, early_refusals=self.early_refusals
        )
        if self.shield.cooling(peer):
            self.processor.calm("cooling", "turned away: cooling down after abuse", b"cooling_down")
            return
        crowded = self.shield.connect(peer)
        if crowded:
            self.processor.calm("crowded", crowded, b"too_many_connections")
            return
        self._counted = peer
        loop = asyncio.get_running_loop()
        self._made = loop.time()
        first = min(limits.preface_timeout, limits.idle_timeout)
        self._timer = loop.call_later(first, self._check)

    def _check(self) -> None:
        """The preface deadline, then the idle deadline, rescheduled while the connection
        is in use (one timer per connection, moved forward rather than reset per stream)."""
        self._timer = None
        processor, connection = self.processor, self.connection
        if processor.abused or connection.is_closing():
            return
        limits = self.shield.limits
        loop = asyncio.get_running_loop()
        if not connection.greeted:
            left = self._made + limits.preface_timeout - loop.time()
            if left > 0:
                self._timer = loop.call_later(left, self._check)
                return
            self._drop(
                "preface",
                f"closed a connection from {connection.label}: no HTTP/2 preface and "
                f"SETTINGS within {limits.preface_timeout:g} s (grpc.limits.preface_timeout)",
                b"no_preface",
            )
            return
        now = time.monotonic()
        due = processor.last_active + limits.idle_timeout
        if processor.streams or now < due:
            wait = limits.idle_timeout if processor.streams else due - now
            self._timer = loop.call_later(wait, self._check)
            return
        self._drop("idle", "", b"idle")

    def _drop(self, key: str, message: str, debug: bytes) -> None:
        """GOAWAY(NO_ERROR) and close: a connection that is idle or never spoke HTTP/2."""
        connection = self.connection
        self.shield.count(key)
        if message:
            self.shield.note(key, connection.peer, message)
        else:
            log.debug("closed idle connection from %s", connection.label)
        with contextlib.suppress(ProtocolError):
            connection.h2.close_connection(error_code=ErrorCodes.NO_ERROR, additional_data=debug)
        connection.flush()
        self.processor.close(f"closed: {key}")

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted is not None:
            self.shield.disconnect(self._counted)
            self._counted = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.shield.received(len(data))
        if self._backlog:  # delivered before the pause took effect: keep the order
            self._backlog += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Hand ``data`` to h2 a slice at a time, at most _FEED_PER_TURN bytes per event
        loop turn: a TLS read can deliver 256 KiB of tiny frames at once, and parsing
        them in one go would keep every other connection waiting. The rest waits, with
        this connection's reading paused, for the next turn."""
        processor = self.processor
        for start in range(0, len(data), _FEED_SLICE):
            if processor.abused:
                return
            if start >= _FEED_PER_TURN:
                self._backlog = data[start:]
                self._transport.pause_reading()
                asyncio.get_running_loop().call_soon(self._feed_backlog)
                return
            try:
                events = self.connection.feed(data[start : start + _FEED_SLICE])
            except ProtocolError:
                log.debug("protocol error from %s", self.connection.label, exc_info=True)
                processor.close("Protocol error")
                return
            self.connection.flush()
            processor.process_batch(events)
            if processor.abused:
                return
            self.connection.flush()

    def _feed_backlog(self) -> None:
        data, self._backlog = self._backlog, b""
        if self.processor.abused or self._transport.is_closing():
            return
        self._feed(data)
        if not self._backlog:
            self._transport.resume_reading()


def _peer_of(transport: Any, protocol: object) -> tuple[str, str]:
    """(budget key, log label): the certificate identity, else the address, else the
    connection itself (a Unix socket, whose callers are told apart later by token)."""
    addr = transport.get_extra_info("peername")
    where = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else "local"
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is not None:
        identity = identity_from_cert(ssl_object.getpeercert())
        if identity is not None:
            return str(identity), f"{where} ({identity})"
    if isinstance(addr, tuple) and addr:
        return f"addr:{addr[0]}", where
    return f"conn:{id(protocol)}", where
