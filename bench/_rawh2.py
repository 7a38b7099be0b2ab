"""A lean unary gRPC client for the fleet simulator: HTTP/2 frames written by hand.

grpclib's client runs the full pure-Python h2 state machine for every call, about as
costly as the Manager's side of the same call, so a simulator built on it needs nearly
a core for 10,000 nodes. A simulated Daemon only ever makes small unary calls one at a
time, so this client does the minimum the protocol requires over the same mutual-TLS
connection (one per node, same certificates and identity check):

* request headers are one constant HPACK block per method (literal fields, no dynamic
  table), followed by one DATA frame with END_STREAM;
* response headers are decoded with ``hpack`` (the server's encoder uses its dynamic
  table); ``grpc-status``/``grpc-message`` come from the trailers;
* flow control: the connection and stream receive windows are opened to the maximum
  once, and the send window is tracked (requests are small; a full window waits);
* SETTINGS and PING are acknowledged, GOAWAY and RST_STREAM fail the calls concerned.

It is a benchmark tool, not a general gRPC client: no streaming, no compression, no
server push, one connection per instance, reconnect on the next call after a loss.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError
from hpack import Decoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9,
)  # fmt: skip
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65_535


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(
        ">I", stream
    ) + payload  # fmt: skip


def _hpack_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2)."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def request_headers(path: str, authority: str, timeout: float | None) -> bytes:
    fields = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", path.encode()),
        (b":authority", authority.encode()),
        (b"content-type", b"application/grpc+proto"),
        (b"te", b"trailers"),
    ]
    if timeout is not None:
        fields.append((b"grpc-timeout", f"{max(1, int(timeout * 1000))}m".encode()))
    return b"".join(_literal(n, v) for n, v in fields)


class _Call:
    __slots__ = ("data", "done", "headers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[None] = loop.create_future()
        self.headers: dict[str, str] = {}
        self.data = bytearray()


class _Protocol(asyncio.Protocol):
    def __init__(self, connection: RawConnection) -> None:
        self.c = connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.c._made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.c._received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.c._lost(exc)


class RawConnection:
    """One HTTP/2 connection to a gRPC server, for unary calls."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext) -> None:
        self.host, self.port, self.ssl = host, port, ssl_context
        self.authority = f"{host}:{port}"
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._calls: dict[int, _Call] = {}
        self._next_stream = 1
        self._buffer = bytearray()
        self._decoder = Decoder()
        self._send_window = DEFAULT_WINDOW
        self._peer_stream_window = DEFAULT_WINDOW
        self._window_open = asyncio.Event()
        self._header_cache: dict[tuple[str, float | None], bytes] = {}
        self._partial: tuple[int, int, bytearray] | None = None  # stream, flags, block

    # ---- connection ----

    async def _ensure(self) -> asyncio.Transport:
        if self._transport is not None and not self._transport.is_closing():
            return self._transport
        if self._connecting is None or self._connecting.done():
            loop = asyncio.get_running_loop()
            self._connecting = loop.create_future()
            fut = self._connecting
            try:
                await loop.create_connection(
                    lambda: _Protocol(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host,
                )  # fmt: skip
            except BaseException as exc:
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()
                self._connecting = None
                raise
            if not fut.done():
                fut.set_result(None)
        else:
            await asyncio.shield(self._connecting)
        assert self._transport is not None
        return self._transport

    def _made(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._buffer.clear()
        self._decoder = Decoder()
        self._next_stream = 1
        self._send_window = DEFAULT_WINDOW
        self._peer_stream_window = DEFAULT_WINDOW
        self._window_open.set()
        settings = struct.pack(">HI", 0x2, 0) + struct.pack(">HI", 0x4, MAX_WINDOW)
        transport.write(
            PREFACE
            + _frame(SETTINGS, 0, 0, settings)
            + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW))
        )

    def _lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail_all(ConnectionResetError(f"connection to {self.authority} lost: {exc}"))

    def _fail_all(self, exc: BaseException) -> None:
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if not call.done.done():
                call.done.set_exception(exc)
                call.done.exception()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # ---- calls ----

    async def unary(
        self, path: str, body: bytes, parse: Callable[[bytes], Any], *, timeout: float | None
    ) -> Any:
        """Send one request message, return ``parse(reply)``; raise GRPCError on a status."""
        transport = await self._ensure()
        size = len(body) + 5
        while self._send_window < size or self._peer_stream_window < size:
            self._window_open.clear()
            await asyncio.wait_for(self._window_open.wait(), timeout)
            transport = await self._ensure()
        key = (path, timeout)
        block = self._header_cache.get(key)
        if block is None:
            block = self._header_cache[key] = request_headers(path, self.authority, timeout)
        stream = self._next_stream
        self._next_stream += 2
        call = _Call(asyncio.get_running_loop())
        self._calls[stream] = call
        self._send_window -= size
        transport.write(
            _frame(HEADERS, END_HEADERS, stream, block)
            + _frame(DATA, END_STREAM, stream, b"\x00" + struct.pack(">I", len(body)) + body)
        )
        try:
            await asyncio.wait_for(asyncio.shield(call.done), timeout)
        except TimeoutError:
            if self._calls.pop(stream, None) is not None and self._transport is not None:
                self._transport.write(_frame(RST_STREAM, 0, stream, struct.pack(">I", 0x8)))
            raise
        finally:
            self._calls.pop(stream, None)
        status = int(call.headers.get("grpc-status", "2"))
        if status != 0:
            raise GRPCError(Status(status), call.headers.get("grpc-message", ""))
        data = bytes(call.data)
        if len(data) < 5:
            raise GRPCError(Status.INTERNAL, "empty reply")
        return parse(data[5 : 5 + struct.unpack(">I", data[1:5])[0]])

    # ---- frames in ----

    def _received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if len(buf) - pos < 9 + length:
                break
            kind, flags = buf[pos + 3], buf[pos + 4]
            stream = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9 : pos + 9 + length])
            pos += 9 + length
            self._frame_in(kind, flags, stream, payload)
        del buf[:pos]

    def _frame_in(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == DATA:
            call = self._calls.get(stream)
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if call is not None:
                call.data += payload
                if flags & END_STREAM and not call.done.done():
                    call.done.set_result(None)
        elif kind in (HEADERS, CONTINUATION):
            if kind == HEADERS:
                if flags & PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                if flags & PRIORITY:
                    payload = payload[5:]
                self._partial = (stream, flags, bytearray(payload))
            elif self._partial is not None:
                self._partial[2].extend(payload)
            if flags & END_HEADERS and self._partial is not None:
                stream, first_flags, block = self._partial
                self._partial = None
                headers = self._decoder.decode(bytes(block))
                call = self._calls.get(stream)
                if call is not None:
                    for name, value in headers:
                        call.headers[name if isinstance(name, str) else name.decode()] = (
                            value if isinstance(value, str) else value.decode()
                        )
                    if first_flags & END_STREAM and not call.done.done():
                        call.done.set_result(None)
        elif kind == SETTINGS:
            if not flags & ACK:
                for i in range(0, len(payload) - 5, 6):
                    ident, value = struct.unpack(">HI", payload[i : i + 6])
                    if ident == 0x4:
                        self._peer_stream_window = value
                if self._transport is not None:
                    self._transport.write(_frame(SETTINGS, ACK, 0, b""))
                self._window_open.set()
        elif kind == PING:
            if not flags & ACK and self._transport is not None:
                self._transport.write(_frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            if stream == 0:
                self._send_window += struct.unpack(">I", payload)[0] & 0x7FFFFFFF
                self._window_open.set()
        elif kind == RST_STREAM:
            call = self._calls.pop(stream, None)
            if call is not None and not call.done.done():
                code = struct.unpack(">I", payload)[0]
                call.done.set_exception(GRPCError(Status.UNAVAILABLE, f"stream reset ({code})"))
                call.done.exception()
        elif kind == GOAWAY:
            last = struct.unpack(">I", payload[:4])[0] & 0x7FFFFFFF
            self._next_stream = max(self._next_stream, 2**31)  # no new streams here
            for sid in [s for s in self._calls if s > last]:
                call = self._calls.pop(sid)
                if not call.done.done():
                    call.done.set_exception(ConnectionResetError("GOAWAY"))
                    call.done.exception()
            if self._transport is not None:
                self._transport.close()


class RawStub:
    """The ManagerService methods the simulator calls, over a :class:`RawConnection`."""

    SERVICE = "/fleet.manager.v1.ManagerService/"

    def __init__(self, connection: RawConnection, *, timeout: float) -> None:
        self._c = connection
        self._timeout = timeout

    async def _call(self, method: str, request: Any, reply: Any) -> Any:
        return await self._c.unary(
            self.SERVICE + method, bytes(request), reply().parse, timeout=self._timeout
        )

    async def register_node(self, request: Any) -> Any:
        from schema import manager_pb

        return await self._call("RegisterNode", request, manager_pb.RegisterNodeResponse)

    async def heartbeat(self, request: Any) -> Any:
        from schema import manager_pb

        return await self._call("Heartbeat", request, manager_pb.HeartbeatResponse)

    async def report_metrics(self, request: Any) -> Any:
        from schema import manager_pb

        return await self._call("ReportMetrics", request, manager_pb.ReportMetricsResponse)

    async def sync_agent_states(self, request: Any) -> Any:
        from schema import manager_pb

        return await self._call("SyncAgentStates", request, manager_pb.SyncAgentStatesResponse)
