"""One Fleet gRPC server's shared ledger against hostile peers (see :mod:`common.h2limits`).

A :class:`Shield` is what the connections of one server share: request bytes held per
peer and in total, the peers turned away after abuse, counts of what was refused, the
rate-limited log of it, and handing freed memory back to the OS after a burst.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from common.ratelimit import LogLimiter

if TYPE_CHECKING:
    from .h2limits import H2Limits

log = logging.getLogger(__name__)

_LOG_INTERVAL = 10.0
# Memory handed back (malloc_trim, see Shield.trim_soon) once _TRIM_AFTER bytes were
# received since the last time, or a connection was closed for abuse: _TRIM_DELAY
# seconds later if the server then holds at most _TRIM_LOW request bytes, and at most
# once per _TRIM_INTERVAL.
_TRIM_AFTER = 16 * 1024 * 1024
_TRIM_LOW = 1024 * 1024
_TRIM_DELAY = 1.0
_TRIM_INTERVAL = 10.0
# Counted reasons that are an attack's doing (see _give_back); refusals for load are not.
_HOSTILE = frozenset({"buffer", "stalled"})
# Budget keys of node certificates (str(Identity): "node/<id>").
_NODE = "node/"


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_malloc_trim = _find_malloc_trim()


def _give_back(*, collect: bool) -> None:
    """Hand free heap pages back to the OS; after an attack, collect cyclic garbage first.

    What an attack leaves behind is partly garbage in reference cycles, which reference
    counting never frees: connections closed in the middle of a TLS or HTTP/2 exchange
    keep their SSL objects, buffers and h2 state in cycles until a full collection, and
    an idle server allocates too little to trigger one for a long time — while they sit
    on pages ``malloc_trim`` then cannot return. (The largest such cycle, cancelled
    calls keeping their frames and buffered bodies, is broken where it forms: see
    ``h2limits._forget_cancellations``.) After the Daemon-port attack of
    ``tests/test_hostile_h2.py`` the collection finds ~3,000-5,000 objects and takes
    20-50 ms on a Daemon; it runs only after refusals or abuse (``Shield.attacked``),
    never for ordinary traffic, at most twice per burst.
    """
    started = time.perf_counter()
    found = gc.collect() if collect else 0
    collected = time.perf_counter()
    assert _malloc_trim is not None
    _malloc_trim(0)
    log.debug(
        "memory handed back: %d objects collected in %.1f ms, malloc_trim %.1f ms",
        found,
        (collected - started) * 1000,
        (time.perf_counter() - collected) * 1000,
    )


class Shield:
    """One server's shared state: bytes held per peer and in total, peers cooling down
    after abuse, counters, and the rate-limited abuse log."""

    def __init__(self, limits: H2Limits) -> None:
        self.limits = limits
        self.held = 0
        self._per_peer: dict[str, int] = {}
        self._cooling: dict[str, float] = {}
        self._per_node: dict[str, int] = {}  # open connections per node identity
        # What was refused or closed, by reason (tests and metrics read these).
        self.counts: dict[str, int] = {}
        # (category, peer) -> (when last logged, lines left out since)
        self._log = LogLimiter(interval=_LOG_INTERVAL)
        self._since_trim = 0  # bytes received since memory was last handed back
        self._trim_handle: asyncio.TimerHandle | None = None
        self._trimmed_at = -_TRIM_INTERVAL
        # One more trim a while after a burst's: what its connections free once they are
        # closed and collected comes after the first trim.
        self._settle_handle: asyncio.TimerHandle | None = None
        # A body refused or dropped, or a connection closed for abuse, since memory was
        # last handed back: the next hand-back collects cyclic garbage too.
        self.attacked = False
        self._collect_at_settle = False

    def take(self, peer: str, nbytes: int) -> str | None:
        """Charge ``nbytes`` to ``peer`` and the server; the refusal reason if over budget."""
        limits = self.limits
        if self.held + nbytes > limits.buffer_total:
            return (
                f"the server already holds {self.held} request bytes (limit {limits.buffer_total})"
            )
        held = self._per_peer.get(peer, 0)
        if held + nbytes > limits.buffer_per_peer:
            return f"{peer} has {held} request bytes in progress (limit {limits.buffer_per_peer})"
        self._per_peer[peer] = held + nbytes
        self.held += nbytes
        return None

    def give(self, peer: str, nbytes: int) -> None:
        """Return a charge."""
        self.held -= nbytes
        left = self._per_peer[peer] - nbytes
        if left:
            self._per_peer[peer] = left
        else:
            del self._per_peer[peer]

    def received(self, nbytes: int) -> None:
        """Bytes a connection received (for handing memory back after bursts)."""
        self._since_trim += nbytes
        if self._since_trim >= _TRIM_AFTER:
            self.trim_soon()

    def trim_soon(self) -> None:
        """Hand freed memory back to the OS once the current burst is over.

        glibc keeps what a burst of requests or frames freed in its arenas (an attack of
        partial 4 MiB bodies left ~20 MiB of RSS behind for good, a reset flood ~15 MiB);
        ``malloc_trim`` gives it back. It runs _TRIM_DELAY seconds after being asked,
        when the server then holds at most _TRIM_LOW request bytes (else it tries again),
        at most once per _TRIM_INTERVAL; a call takes a few milliseconds.
        """
        if self._trim_handle is None and _malloc_trim is not None:
            loop = asyncio.get_running_loop()
            delay = max(_TRIM_DELAY, self._trimmed_at + _TRIM_INTERVAL - loop.time())
            self._trim_handle = loop.call_later(delay, self._trim)

    def _trim(self) -> None:
        self._trim_handle = None
        if self.held > _TRIM_LOW:
            self.trim_soon()  # mid-burst: look again later
            return
        loop = asyncio.get_running_loop()
        self._trimmed_at = loop.time()
        self._since_trim = 0
        collect, self.attacked = self.attacked, False
        # An attack's last connections close after this: the settle collects again.
        self._collect_at_settle |= collect
        _give_back(collect=collect)
        if self._settle_handle is None:
            self._settle_handle = loop.call_later(_TRIM_INTERVAL, self._settle)

    def _settle(self) -> None:
        self._settle_handle = None
        loop = asyncio.get_running_loop()
        if (
            self._trim_handle is not None
            or self.held > _TRIM_LOW
            or _malloc_trim is None
            or loop.time() - self._trimmed_at < _TRIM_DELAY  # a trim has just run
        ):
            return
        self._trimmed_at = loop.time()
        collect = self.attacked or self._collect_at_settle
        self.attacked = self._collect_at_settle = False
        _give_back(collect=collect)

    def count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if reason in _HOSTILE:
            self.attacked = True

    def cooling(self, peer: str) -> bool:
        """True while ``peer`` is turned away after abuse."""
        until = self._cooling.get(peer)
        if until is None:
            return False
        if time.monotonic() < until:
            return True
        del self._cooling[peer]
        return False

    def connect(self, peer: str) -> str | None:
        """Count a new connection of ``peer`` (a budget key, ``_peer_of``); why it is
        refused when ``peer`` is a node certificate already holding
        ``max_connections_per_node``. Only node identities are counted."""
        if not peer.startswith(_NODE):
            return None
        held = self._per_node.get(peer, 0)
        if held >= self.limits.max_connections_per_node:
            return (
                f"{held} connections of {peer} already open "
                f"(limit {self.limits.max_connections_per_node}: max_connections_per_node)"
            )
        self._per_node[peer] = held + 1
        return None

    def disconnect(self, peer: str) -> None:
        left = self._per_node.get(peer, 0) - 1
        if left > 0:
            self._per_node[peer] = left
        else:
            self._per_node.pop(peer, None)

    def offended(self, key: str, peer: str, label: str, reason: str) -> None:
        """A connection of ``peer`` was closed for abuse: cool the peer down (unless it was
        turned away for cooling down already), count ``key``, log (rate-limited)."""
        self.count(key)
        self.attacked = True
        self.trim_soon()
        # Turned away for cooling down, or for holding too many connections (an honest
        # Daemon may, for a moment, when it fails over): no cool-down for that.
        cools = key not in ("cooling", "crowded")
        if cools and self.limits.abuse_cooldown and not peer.startswith("conn:"):
            if len(self._cooling) >= 10_000:  # a bound, not a policy: forget the oldest
                self._cooling.pop(next(iter(self._cooling)))
            self._cooling[peer] = time.monotonic() + self.limits.abuse_cooldown
        self.note(
            key,
            peer,
            f"closed HTTP/2 connection from {label} with GOAWAY ENHANCE_YOUR_CALM: {reason}",
        )

    def note(self, category: str, peer: str, message: str) -> None:
        """Log ``message`` unless a line of ``category`` about ``peer`` was logged within
        the last 10 s (then count it, and say how many were left out on the next line)."""
        unlogged = self._log.allow((category, peer), time.monotonic())
        if unlogged is None:
            return
        more = f" ({unlogged} more like it since the last such line)" if unlogged else ""
        log.warning("%s%s", message, more)
