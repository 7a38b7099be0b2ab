"""File descriptors under attack (issue 11, item 9): connection caps per server and per
peer before the TLS handshake, back-off on EMFILE, idle and half-sent connection timeouts on
the gRPC and HTTP ports, and SO_REUSEPORT on the Manager's HTTP port."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

from manager.http import HttpServer


async def _ready() -> str:
    return ""


async def _metrics() -> bytes:
    return b"up 1\n"


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(r.status)


@pytest.mark.asyncio
async def test_http_reuse_port_lets_two_servers_share_the_port() -> None:
    first = HttpServer(listen="127.0.0.1:0", ready=_ready, render_metrics=_metrics, reuse_port=True)
    await first.start()
    try:
        port = first.address.rsplit(":", 1)[1]
        second = HttpServer(
            listen=f"127.0.0.1:{port}", ready=_ready, render_metrics=_metrics, reuse_port=True
        )
        await second.start()
        try:
            assert second.address == first.address
            status = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
            assert status == 200
        finally:
            second.close()
            await second.wait_closed()
    finally:
        first.close()
        await first.wait_closed()
