"""Network faults for tests: a TCP proxy on 127.0.0.1 that can be told to misbehave.

    with TcpProxy(("127.0.0.1", manager_port)) as proxy:   # forwards to the Manager
        ... point a Daemon at proxy.address ...
        proxy.blackhole()   # silent loss: nothing is forwarded, nothing is refused
        proxy.heal()        # forwarding resumes (held bytes are delivered late, as TCP would)
        proxy.sever()       # every connection reset, new ones reset on accept (a restart)

The proxy runs its own asyncio loop in a daemon thread so synchronous tests can drive it.
It is bounded: at most ``max_connections`` at once, 64 KiB read per step per direction,
and in ``blackhole`` mode it stops *reading*, so the kernel's socket buffers (not the
proxy's memory) hold what the peers send — exactly how a silently dropped path looks to
TCP: writes succeed until the window fills, no answer comes, no RST, no FIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpclib.client import Channel
from grpclib.const import Cardinality
from grpclib.exceptions import GRPCError, StreamTerminatedError

from common.tls import TLSFiles

_CHUNK = 64 * 1024
FORWARD, BLACKHOLE, SEVERED = "forward", "blackhole", "severed"


class TcpProxy:
    """A fault-injecting TCP forwarder (see module doc). ``start()``/``stop()`` or ``with``."""

    def __init__(
        self, target: tuple[str, int], *, port: int = 0, max_connections: int = 256
    ) -> None:
        self.target = target
        self._port = port
        self._max = max_connections
        self.mode = FORWARD
        self.accepted = 0
        self.refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    # ---- lifecycle (called from the test's thread) ----

    def start(self) -> TcpProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"tcp-proxy-{self.target}", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ---- faults ----

    def blackhole(self) -> None:
        """Stop forwarding in both directions without closing or refusing anything."""
        self._call(self._set_mode, BLACKHOLE)

    def heal(self) -> None:
        """Forward again (connections held during a blackhole carry on)."""
        self._call(self._set_mode, FORWARD)

    def sever(self) -> None:
        """Reset every connection and reset new ones on accept until ``heal()``."""
        self._call(self._set_mode, SEVERED)

    def connections(self) -> int:
        return len(self._conns)

    # ---- internals (proxy thread) ----

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None, "proxy not started"
        done = threading.Event()

        def run() -> None:
            try:
                fn(*args)
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    async def _open(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self._port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for client, upstream in list(self._conns):
            _reset(client)
            if upstream is not None:
                _reset(upstream)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def _set_mode(self, mode: str) -> None:
        assert self._flowing is not None
        self.mode = mode
        if mode == FORWARD:
            self._flowing.set()
        else:
            self._flowing.clear()
        if mode == SEVERED:
            for client, upstream in list(self._conns):
                _reset(client)
                if upstream is not None:
                    _reset(upstream)
            self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        if self.mode == SEVERED or len(self._conns) >= self._max:
            self.refused += 1
            _reset(writer)
            return
        self.accepted += 1
        key: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._conns.add(key)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            # A connection made during a blackhole hangs (like an unanswered SYN would).
            await self._flowing.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _reset(writer)
                return
            self._conns.discard(key)
            key = (writer, up_writer)
            self._conns.add(key)
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
            for w in (writer, up_writer):
                w.close()
        finally:
            self._conns.discard(key)
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                # Bytes read just before a blackhole are held until it heals.
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            _reset(writer)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a crashed or restarted peer would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# ---- certificates and raw calls for the security battery ----


def write_pair(directory: Path, stem: str, cert_pem: bytes, key_pem: bytes) -> TLSFiles:
    """Write ``<stem>.crt``/``.key`` beside a copy of nothing else; returns TLSFiles using
    ``directory/ca.crt`` as the trust anchor (the caller puts the CA there)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.crt").write_bytes(cert_pem)
    key = directory / f"{stem}.key"
    key.write_bytes(key_pem)
    key.chmod(0o600)
    return TLSFiles(directory / f"{stem}.crt", key, directory / "ca.crt")


def self_signed(role: str, name: str) -> tuple[bytes, bytes]:
    """A self-signed leaf carrying a perfect Fleet identity (but no CA behind it)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://fleet/{role}/{name}")]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def no_cert_context(ca_file: Path) -> ssl.SSLContext:
    """A TLS client that trusts the CA but presents no certificate of its own."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2"])
    return ctx


REFUSED = "REFUSED"  # the connection or handshake failed: the call never reached a handler


async def raw_call(
    port: int,
    ssl_context: ssl.SSLContext | None,
    path: str,
    request: Any,
    reply_type: type,
    *,
    timeout: float = 10.0,
) -> tuple[str, Any]:
    """One unary call by method path: ``("OK", reply)``, ``(status name, message)``, or
    ``(REFUSED, error)`` when TLS/the connection failed before any status came back."""
    channel = Channel("127.0.0.1", port, ssl=ssl_context)
    try:
        stream: Any
        async with channel.request(
            path, Cardinality.UNARY_UNARY, type(request), reply_type, timeout=timeout
        ) as stream:
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
            await stream.recv_trailing_metadata()
            return "OK", reply
    except GRPCError as exc:
        return exc.status.name, exc.message or ""
    except (OSError, ssl.SSLError, StreamTerminatedError, ConnectionError) as exc:
        return REFUSED, exc
    finally:
        channel.close()


__all__ = [
    "BLACKHOLE",
    "FORWARD",
    "REFUSED",
    "SEVERED",
    "TcpProxy",
    "no_cert_context",
    "raw_call",
    "self_signed",
    "write_pair",
]
