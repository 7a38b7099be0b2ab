"""The Manager's HTTP side: ``/healthz``, ``/readyz`` (the database takes writes) and
``/metrics`` (Prometheus).

Starlette on uvicorn, served on the Manager's own event loop. Signals stay with
``__main__``: uvicorn's own signal capture is switched off. Handlers are bounded by the
write timeout; idle keep-alive connections by the read timeout.

Connections are capped in total and per peer address before uvicorn sees them
(:class:`common.conns.ConnGate`: one past a cap is closed at once, counted in
``fleet_manager_connections_refused_total{port="server.listen"}``), and a request's line
and headers must arrive within ``header_timeout`` of its first byte (of the connection,
for the first request): h11 has no such timeout, and uvicorn's keep-alive timeout is
cancelled by the first byte, so 1,100 half-sent requests used to hold 1,100 descriptors
for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from common.conns import ConnGate, gated_factory

from .config import split_host_port

log = logging.getLogger(__name__)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # signals belong to __main__
        yield


class _HeaderTimeout(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request line and headers do not
    arrive within ``header_timeout`` (see the module doc)."""

    def __init__(self, *, header_timeout: float, gate: ConnGate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._header_timeout = header_timeout
        self._gate = gate
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaited: object = None  # the cycle in progress when the timer was armed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._awaited = self.cycle
        self._header_timer = self.loop.call_later(self._header_timeout, self._headers_due)

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        super().data_received(data)
        if (
            self._header_timer is None
            and before is not None
            and before.response_complete
            and self.cycle is before
            and not self.transport.is_closing()
        ):
            self._arm()  # the first bytes of a next request on a kept-alive connection

    def _headers_due(self) -> None:
        self._header_timer = None
        if self.cycle is not self._awaited or self.transport.is_closing():
            return  # a request's headers arrived meanwhile
        host = self.client[0] if self.client else "local"
        self._gate.refuse(
            str(host),
            "header_timeout",
            f"request headers not received within {self._header_timeout:g} s "
            "(server.header_timeout)",
        )
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


class HttpServer:
    """Health, readiness and metrics endpoints on ``listen``.

    ``ready()`` answers why the Manager is not ready ("" when it is): /readyz is 200, or
    503 with that reason (e.g. "database is locked: another process holds a lock on …").
    """

    def __init__(
        self,
        *,
        listen: str,
        ready: Callable[[], Awaitable[str]],
        render_metrics: Callable[[], Awaitable[bytes]],
        read_timeout: float = 30.0,
        write_timeout: float = 30.0,
        reuse_port: bool = False,
        max_connections: int = 256,
        max_connections_per_peer: int = 64,
        header_timeout: float = 10.0,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self._host, self._port = split_host_port(listen, "server.listen")
        # Several Manager worker processes share one HTTP port: the kernel spreads the
        # connections among the sockets bound with SO_REUSEPORT.
        self._reuse_port = reuse_port
        self._ready = ready
        self._render = render_metrics
        self._write_timeout = write_timeout
        app = Starlette(
            routes=[
                Route("/healthz", self._healthz),
                Route("/readyz", self._readyz),
                Route("/metrics", self._metrics),
            ]
        )
        # Counted and capped as accepted, before uvicorn makes its protocol (common.conns).
        self.conns = ConnGate(
            name="server.listen",
            max_connections=max_connections,
            max_per_peer=max_connections_per_peer,
            observer=on_refused,
        )
        gate = self.conns

        def protocol(**kwargs: Any) -> asyncio.Protocol:
            def make() -> asyncio.Protocol:
                return _HeaderTimeout(header_timeout=header_timeout, gate=gate, **kwargs)

            return gated_factory(make, gate=gate)()

        config = uvicorn.Config(
            app,
            http=protocol,  # type: ignore[arg-type]
            host=self._host,
            port=self._port,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_keep_alive=int(read_timeout),
            timeout_graceful_shutdown=5,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """host:port actually bound (after start)."""
        for server in self._server.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                return f"{host}:{port}"
        return f"{self._host}:{self._port}"

    async def _bounded(self, fn: Callable[[], Awaitable[Response]]) -> Response:
        try:
            return await asyncio.wait_for(fn(), self._write_timeout)
        except TimeoutError:
            return PlainTextResponse("timed out\n", status_code=503)

    async def _healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def _readyz(self, request: Request) -> Response:
        async def check() -> Response:
            problem = await self._ready()
            if not problem:
                return JSONResponse({"ready": True, "database": "ok"})
            return JSONResponse({"ready": False, "database": problem}, status_code=503)

        return await self._bounded(check)

    async def _metrics(self, request: Request) -> Response:
        async def render() -> Response:
            return Response(await self._render(), media_type=PROMETHEUS_CONTENT_TYPE)

        return await self._bounded(render)

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("HTTP server already started")
        # Bind here: a bind error becomes our OSError (uvicorn would sys.exit()).
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self._host, self._port))
        except OSError as exc:
            sock.close()
            raise OSError(f"cannot serve HTTP on {self._host}:{self._port}: {exc}") from None
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    def close(self) -> None:
        self._server.should_exit = True

    async def wait_closed(self) -> None:
        if self._task is not None:
            await self._task
