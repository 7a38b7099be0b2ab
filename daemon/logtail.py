"""The last lines of an agent's log, read from the end of its files.

The Daemon writes each agent's stdout and stderr to append-only files rotated by
copy-and-truncate (``web.stderr.log``, ``web.stderr.log.1``, … see
:class:`~daemon.process.LogFile`). :func:`tail` reads backwards from the end in blocks,
never more than ``max_bytes`` in all, so asking for 100 lines of a 1 GiB file reads a
few KiB. When the current file holds fewer lines than asked (it was just rotated), the
rest comes from ``.1``.

Blocking file I/O: call from a thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The reply's text is at most this long (well under the 4 MiB gRPC message limit):
# fewer lines than asked come back when they are very long.
MAX_BYTES = 1024 * 1024
BLOCK = 64 * 1024


@dataclass(frozen=True)
class Tail:
    """What :func:`tail` found."""

    lines: list[bytes]  # oldest first, without their newlines
    truncated: bool  # older lines exist than those returned
    size: int  # the current file's size in bytes (0 when it does not exist)

    def text(self) -> str:
        """The lines as UTF-8 text, each ending in a newline; bad bytes replaced."""
        if not self.lines:
            return ""
        return (b"\n".join(self.lines) + b"\n").decode("utf-8", errors="replace")


def _tail_one(path: Path, count: int, max_bytes: int) -> tuple[list[bytes], bool, int]:
    """(last ``count`` lines of ``path``, older lines exist, file size); ([], False, 0)
    when there is no such file."""
    chunks: list[bytes] = []
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            pos = size
            newlines = 0
            # A last line without its newline (the agent is mid-write) counts as a line,
            # so count + 1 newlines hold `count` whole lines and the end of the one before.
            while pos > 0 and newlines <= count and size - pos < max_bytes:
                step = min(BLOCK, pos, max_bytes - (size - pos))
                pos -= step
                f.seek(pos)
                chunk = f.read(step)
                chunks.append(chunk)
                newlines += chunk.count(b"\n")
    except FileNotFoundError:
        return [], False, 0
    data = b"".join(reversed(chunks))
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the file ends in a newline
    older = pos > 0
    if older and len(lines) > 1:
        lines.pop(0)  # the first piece is the end of a line that starts earlier
    if len(lines) > count:
        lines = lines[-count:]
        older = True
    return lines, older, size


def tail(path: Path, count: int, *, max_bytes: int = MAX_BYTES) -> Tail:
    """The last ``count`` lines of the log at ``path``, continued from ``path.1``."""
    lines, older, size = _tail_one(path, count, max_bytes)
    if not older:
        rotated = path.with_name(f"{path.name}.1")
        need = count - len(lines)
        budget = max_bytes - sum(len(line) + 1 for line in lines)
        if need > 0 and budget > 0:
            before, older, _ = _tail_one(rotated, need, budget)
            lines = before + lines
            older = older or _not_empty(path.with_name(f"{path.name}.2"))
        else:
            older = _not_empty(rotated)
    return Tail(lines=lines, truncated=older, size=size)


def _not_empty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False
