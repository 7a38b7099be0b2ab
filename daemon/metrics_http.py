"""Optional Prometheus ``/metrics`` endpoint of the Daemon (``http.listen``).

A deliberately small asyncio HTTP/1.1 responder: one route, ``GET /metrics``, rendered
from a per-Daemon ``CollectorRegistry`` whose collector reads live state at scrape time.
Connections are capped in total and per address (:class:`common.conns.ConnGate`: one past
a cap is closed at once), and a request must arrive whole within ``read_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.conns import ConnGate

from .config import split_hostport

log = logging.getLogger(__name__)


class FunctionCollector(Collector):
    """Adapts a function returning metric families to prometheus_client's interface."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


class MetricsServer:
    """Serves ``GET /metrics`` on ``listen``; lifecycle start/close/wait_closed."""

    def __init__(
        self,
        *,
        listen: str,
        collect: Callable[[], Iterable[Metric]],
        max_connections: int = 64,
        max_connections_per_peer: int = 16,
        read_timeout: float = 10.0,
    ) -> None:
        self._listen = listen
        self.conns = ConnGate(
            name="http.listen",
            max_connections=max_connections,
            max_per_peer=max_connections_per_peer,
        )
        self._read_timeout = read_timeout
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(FunctionCollector(collect))
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("MetricsServer already started")
        host, port = split_hostport(self._listen)
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            # From Python 3.12 this waits for open connections too; a scraper that
            # connected and sent nothing would hold shutdown for the 10 s read timeout.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ticket = self.conns.admit(str(peer[0]) if isinstance(peer, tuple) else None)
        if ticket is None:
            writer.transport.abort()
            return
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._read_timeout)
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(line) >= 2 and line[0] == "GET" and line[1].split("?")[0] == "/metrics":
                body = generate_latest(self._registry)
                head = "200 OK"
                ctype = "text/plain; version=0.0.4; charset=utf-8"
            else:
                body, head, ctype = b"not found\n", "404 Not Found", "text/plain"
            writer.write(
                f"HTTP/1.1 {head}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            ticket.release()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
