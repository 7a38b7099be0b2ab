"""Following fleet events (``events -f``) and redrawing a list as it changes (``-w``).

Both ride on ``AdminService.WatchEvents``, a server stream opened on the Manager
:meth:`~fleetctl.client.Connection.ready` picks (streams do not fail over). The stream
ends only when something went wrong, each a one-line :class:`CliError`: the Manager
went away (exit 5), it dropped us for not keeping up ("too slow", exit 1), or refused.
Ctrl-C is the normal way out; the commands turn it into exit 0.

``-w`` re-reads the list (ListNodes, ListAgents) when an event arrives — after
:data:`DEBOUNCE_SECONDS`, so a burst of events is one redraw — and, on a terminal, every
:data:`REFRESH_SECONDS` too (the "LAST HEARTBEAT" ages move without events). On a
terminal each redraw replaces the screen; otherwise each new list is printed after a
blank line, only when an event changed something.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from grpclib.exceptions import GRPCError

from ..errors import CliError, ExitCode

if TYPE_CHECKING:
    from ..client import Connection

T = TypeVar("T")

DEBOUNCE_SECONDS = 0.5
REFRESH_SECONDS = 5.0


async def follow_events(
    conn: Connection,
    request: Any,
    on_event: Callable[[Any], None],
    *,
    opened: Callable[[], None] | None = None,
) -> None:
    """Stream ``WatchEvents(request)``, calling ``on_event(event)`` for each, until it
    ends — always with a :class:`CliError` (module doc). ``opened`` is called once the
    request went out."""
    from schema import admin_grpc

    target = await conn.ready()
    stub = admin_grpc.AdminServiceStub(conn.channel)
    try:
        async with stub.WatchEvents.open() as stream:
            await stream.send_message(request, end=True)
            if opened is not None:
                opened()
            async for event in stream:
                on_event(event)
    except asyncio.CancelledError:
        raise
    except GRPCError as exc:
        err = await conn.explain(exc)
        raise CliError(f"{target} ended the event stream: {err.message}", err.code) from exc
    except Exception as exc:
        err = await conn.explain(exc)
        if err.code is not ExitCode.UNAVAILABLE:
            raise err from exc
        raise CliError(
            f"lost {target} while following events ({type(exc).__name__}: {exc})",
            ExitCode.UNAVAILABLE,
        ) from exc
    raise CliError(f"{target} ended the event stream", ExitCode.UNAVAILABLE)


async def redraw_on_change(
    conn: Connection,
    *,
    request: Any,
    fetch: Callable[[], Awaitable[T]],
    show: Callable[[T], None],
    terminal: bool,
    refresh: float = REFRESH_SECONDS,
    debounce: float = DEBOUNCE_SECONDS,
) -> None:
    """Show ``fetch()`` now and again whenever a WatchEvents event arrives (and every
    ``refresh`` seconds on a terminal), until cancelled or the stream fails."""
    changed = asyncio.Event()
    opened = asyncio.Event()
    watcher = asyncio.create_task(
        follow_events(conn, request, lambda _event: changed.set(), opened=opened.set)
    )
    try:
        # The first list only once the stream is asked for: no change falls in between.
        await _first(opened.wait(), watcher)
        show(await fetch())
        while True:
            woke = await _first(changed.wait(), watcher, timeout=refresh if terminal else None)
            if woke:
                await asyncio.sleep(debounce)  # a burst of events is one redraw
                changed.clear()
            show(await fetch())
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


async def _first(
    awaitable: Awaitable[Any], watcher: asyncio.Task[None], *, timeout: float | None = None
) -> bool:
    """Wait for ``awaitable`` (True), ``timeout`` (False), or the watcher's failure
    (raised)."""
    waiter = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait(
            {waiter, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
    if watcher in done:
        watcher.result()  # raises the stream's CliError
        raise CliError("the event stream ended", ExitCode.UNAVAILABLE)
    return waiter in done


def until_interrupted(run_it: Callable[[], None]) -> None:
    """Run a follow until Ctrl-C, which ends it with exit 0 (no traceback, no line)."""
    try:
        run_it()
    except KeyboardInterrupt:
        return


WATCH_HELP = "Redraw the list whenever something changes, until Ctrl-C."


def run_watch(
    st: Any,
    *,
    request: Any,
    fetch: Callable[[Connection], Awaitable[T]],
    show: Callable[[T], None],
) -> None:
    """``-w``: show ``fetch(conn)`` with ``show`` and again on every change (module doc),
    until Ctrl-C (exit 0)."""
    from ._shared import run

    out = st.output()
    terminal = bool(out.rich)
    drawn = [0]

    def draw(data: T) -> None:
        if terminal:
            out.console.clear()
        elif drawn[0]:
            out.stream.write("\n")
        drawn[0] += 1
        show(data)
        out.stream.flush()

    async def go() -> None:
        async with st.connect() as conn:
            await redraw_on_change(
                conn, request=request, fetch=lambda: fetch(conn), show=draw, terminal=terminal
            )

    until_interrupted(lambda: run(go()))
