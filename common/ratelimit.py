"""Per-key rate limits in memory, O(1) per call: token buckets and log-line limiters.

Keys are node ids (authenticated: a node can only spend its own budget), peer
addresses, or (peer, reason) pairs for log lines. Both classes bound their memory: past
``max_keys`` entries, the ones that carry no state worth keeping (a full bucket, a quiet
log key) are dropped.
"""

from __future__ import annotations

from collections.abc import Hashable


class TokenBuckets:
    """``capacity`` tokens per key, refilled continuously at ``capacity / window`` a
    second: at most ``capacity`` at once, and ``capacity`` per ``window`` on average."""

    def __init__(self, *, capacity: float, window: float, max_keys: int = 100_000) -> None:
        if capacity <= 0 or window <= 0:
            raise ValueError("capacity and window must be > 0")
        self.capacity = capacity
        self.window = window
        self._rate = capacity / window
        self._max_keys = max_keys
        # key -> [tokens, when they were counted]
        self._buckets: dict[Hashable, list[float]] = {}

    def _level(self, key: Hashable, now: float) -> list[float]:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._prune(now)
            bucket = self._buckets[key] = [self.capacity, now]
            return bucket
        tokens, then = bucket
        if now > then:
            bucket[0] = min(self.capacity, tokens + (now - then) * self._rate)
            bucket[1] = now
        return bucket

    def take(self, key: Hashable, count: float, now: float) -> float:
        """Spend ``count`` tokens of ``key``: 0.0 when done, else the seconds until
        ``count`` tokens will be there (nothing is spent then)."""
        bucket = self._level(key, now)
        if bucket[0] >= count:
            bucket[0] -= count
            return 0.0
        return (count - bucket[0]) / self._rate

    def full(self, key: Hashable, now: float) -> bool:
        """True when ``key`` has its whole capacity (it has been quiet long enough)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return True
        return bucket[0] + (now - bucket[1]) * self._rate >= self.capacity

    def forget(self, key: Hashable) -> None:
        self._buckets.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in [k for k in self._buckets if self.full(k, now)]:
            del self._buckets[key]


class LogLimiter:
    """At most one log line per key per ``interval`` seconds, counting the ones held back.

    ``allow(key, now)`` answers None while the key is quiet-listed, else how many lines
    were held back since the last one (0 the first time), for the line to mention.
    """

    def __init__(self, *, interval: float, max_keys: int = 1024) -> None:
        self.interval = interval
        self._max_keys = max_keys
        self._last: dict[Hashable, list[float]] = {}  # key -> [logged at, held back]

    def allow(self, key: Hashable, now: float) -> int | None:
        entry = self._last.get(key)
        if entry is None:
            if len(self._last) >= self._max_keys:
                quiet = [k for k, (at, held) in self._last.items() if now - at >= self.interval]
                for k in quiet or list(self._last)[: self._max_keys // 2]:
                    del self._last[k]
            self._last[key] = [now, 0]
            return 0
        if now - entry[0] >= self.interval:
            held = int(entry[1])
            entry[0], entry[1] = now, 0
            return held
        entry[1] += 1
        return None
