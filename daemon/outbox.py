"""A bounded on-disk queue of metric reports (store-and-forward to the Manager).

Every host-metrics report is written here first and sent from here, oldest first, so the
Manager receives reports in the order they were taken even across outages and Daemon
restarts. One file per report (``<seq>.pb``, written to a temporary name then renamed,
so a crash never leaves half a report). When ``max_reports`` is reached the oldest
report is dropped and counted; the count survives restarts (``dropped`` file).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_SUFFIX = ".pb"


class Outbox:
    """FIFO of opaque byte payloads in ``directory``, at most ``max_reports`` long."""

    def __init__(self, *, directory: Path, max_reports: int) -> None:
        if max_reports < 1:
            raise ValueError("max_reports must be >= 1")
        self._dir = directory
        self._max = max_reports
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in self._dir.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        self._seqs = sorted(int(p.stem) for p in self._dir.glob(f"*{_SUFFIX}") if p.stem.isdigit())
        self._next = (self._seqs[-1] + 1) if self._seqs else 1
        self._dropped = self._read_dropped()
        # The report handed out by peek() (being sent), and whether a trim dropped it
        # meanwhile: if its send then succeeds, it was delivered, not dropped.
        self._sending = 0
        self._sending_dropped = False
        self._trim()

    @property
    def dropped(self) -> int:
        """Reports dropped because the queue was full (since the state dir was created)."""
        return self._dropped

    @property
    def newest(self) -> int:
        """Sequence number of the report put last (0 before any)."""
        return self._next - 1

    def __len__(self) -> int:
        return len(self._seqs)

    def _path(self, seq: int) -> Path:
        return self._dir / f"{seq:016d}{_SUFFIX}"

    def _read_dropped(self) -> int:
        try:
            return int((self._dir / "dropped").read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _write_dropped(self) -> None:
        tmp = self._dir / "dropped.tmp"
        tmp.write_text(str(self._dropped))
        os.replace(tmp, self._dir / "dropped")

    def put(self, payload: bytes) -> None:
        """Append a report; drop (and count) the oldest when over the bound."""
        seq = self._next
        self._next += 1
        tmp = self._dir / f"{seq:016d}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, self._path(seq))
        self._seqs.append(seq)
        self._trim()

    def _trim(self) -> None:
        over = len(self._seqs) - self._max
        if over <= 0:
            return
        for seq in self._seqs[:over]:
            self._path(seq).unlink(missing_ok=True)
            if seq == self._sending:
                self._sending_dropped = True
        del self._seqs[:over]
        self._dropped += over
        self._write_dropped()
        log.warning(
            "metrics outbox full (%d reports): dropped %d oldest, %d dropped in total",
            self._max,
            over,
            self._dropped,
        )

    def peek(self) -> tuple[int, bytes] | None:
        """The oldest report as (sequence, payload), or None when empty."""
        while self._seqs:
            seq = self._seqs[0]
            try:
                payload = self._path(seq).read_bytes()
                self._sending, self._sending_dropped = seq, False
                return seq, payload
            except FileNotFoundError:
                self._seqs.pop(0)
        return None

    def remove(self, seq: int) -> None:
        """Forget a report once the Manager has accepted it."""
        if seq == self._sending and self._sending_dropped:
            # Dropped for room while in flight, yet delivered: not a drop after all.
            self._dropped -= 1
            self._write_dropped()
        if seq == self._sending:
            self._sending, self._sending_dropped = 0, False
        if self._seqs and self._seqs[0] == seq:
            self._seqs.pop(0)
        elif seq in self._seqs:
            self._seqs.remove(seq)
        self._path(seq).unlink(missing_ok=True)
