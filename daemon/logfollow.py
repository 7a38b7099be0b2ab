"""Following an agent's log file as it grows (``DaemonService.FollowAgentLog``).

The Daemon rotates agent logs by copy-and-truncate (:class:`~daemon.process.LogFile`),
so a follower keeps reading one path by offset: one ``stat`` per poll, and only the
bytes written since the last one. A file shorter than the offset, a new inode, or one
whose bytes just before the offset are not those last read (it was truncated and grew
back past the offset between two polls) is a rotation: what was written just before it
is read from ``.1`` (when that file is long enough to hold it) and following goes on
from the start of the new file.

Bounded per follower, whatever the agent writes and however slowly the caller reads:

* a poll reads at most :data:`MAX_READ` bytes; when more piled up since the last poll
  (the caller did not take the previous chunks), the older bytes are skipped and their
  lines counted (``skipped``), never buffered;
* a chunk holds whole lines, at most :data:`MAX_CHUNK` bytes of text; a line longer than
  that is not sent and counts as skipped;
* the unfinished last line is kept until its newline comes, up to :data:`MAX_CHUNK`.

The reads are blocking file I/O: :class:`LogFollower` methods other than :meth:`changed`
run in a thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import logtail

# One chunk's text, and so the longest line that is sent (its newline included).
MAX_CHUNK = 64 * 1024
# Bytes read per poll at most; more accumulated than this are skipped.
MAX_READ = 512 * 1024
# Skipped bytes are read only to count their lines, up to this much per poll; the lines
# of any more are estimated from the average line length of the counted part.
MAX_COUNT = 8 * 1024 * 1024
_BLOCK = 256 * 1024
# The last bytes read, compared before reading on (copy-and-truncate leaves the inode).
_MARK = 16


@dataclass
class Chunk:
    """What to send: ``text`` (whole lines, each ending in a newline), lines ``skipped``
    before it, and whether the file was ``rotated`` before it."""

    text: str = ""
    skipped: int = 0
    rotated: bool = False


class LogFollower:
    """The new complete lines of one log file, poll after poll (module doc)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._ino = 0
        self._partial = b""  # the unfinished last line read so far
        self._discarding = False  # inside a line too long to send: drop until its newline
        self._seen_size = -1  # the size at the last poll (changed() compares with it)
        self._mark = b""  # the bytes just before the offset

    def history(self, lines: int) -> list[Chunk]:
        """The last ``lines`` lines (none for 0), and start following after them."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return [Chunk()]
        self._ino, self._pos = st.st_ino, st.st_size
        if not lines:
            self._seen_size = st.st_size
            self._mark = _read_at(self.path, self._pos)
            return [Chunk()]
        found = logtail.tail(self.path, lines)
        self._pos = found.size
        self._seen_size = found.size
        kept = found.lines
        if kept and found.size and not _ends_in_newline(self.path, found.size):
            # The agent is mid-line: that line goes out whole once its newline comes.
            self._pos = found.size - len(kept[-1])
            kept = kept[:-1]
        self._mark = _read_at(self.path, self._pos)
        return _chunks(kept, 0, False) or [Chunk()]

    def changed(self) -> bool:
        """Whether the file changed since the last poll (one stat; cheap on the loop)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return st.st_size != self._seen_size or st.st_ino != self._ino

    def poll(self) -> list[Chunk]:
        """The complete lines written since the last poll, as chunks (often none)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        size = st.st_size
        self._seen_size = size
        rotated = False
        lines: list[bytes] = []
        skipped = 0
        if (
            st.st_ino != self._ino
            or size < self._pos
            or (self._mark and _read_at(self.path, self._pos) != self._mark)
        ):
            rotated = True
            if st.st_ino == self._ino:  # copy-and-truncate: the rest of it went to .1
                lines, skipped = self._take(self.path.with_name(f"{self.path.name}.1"), None)
            self._ino, self._pos, self._mark = st.st_ino, 0, b""
            if self._partial:
                skipped += 1  # its end went to .1 and was not there to read
            self._partial, self._discarding = b"", False
        more, more_skipped = self._take(self.path, size)
        lines += more
        skipped += more_skipped
        if not lines and not skipped and not rotated:
            return []
        return _chunks(lines, skipped, rotated) or [Chunk(skipped=skipped, rotated=rotated)]

    def _take(self, path: Path, size: int | None) -> tuple[list[bytes], int]:
        """(complete lines, lines skipped) of ``path`` from the offset to ``size`` (its
        current size when None), at most :data:`MAX_READ` bytes; the offset moves on."""
        try:
            with open(path, "rb") as f:
                end = os.fstat(f.fileno()).st_size if size is None else size
                if end <= self._pos:
                    return [], 0
                skipped = 0
                if end - self._pos > MAX_READ:
                    # The caller fell behind: skip to the last MAX_READ bytes.
                    start = end - MAX_READ
                    newlines = _count_lines(f, self._pos, start)
                    skipped = newlines
                    if self._discarding and newlines:
                        skipped -= 1  # the too-long line it ended was counted already
                    f.seek(start - 1)
                    if f.read(1) != b"\n":  # a line runs across `start`: cut, so skipped
                        if newlines or not self._discarding:
                            skipped += 1
                        self._discarding = True
                    else:
                        self._discarding = False
                    self._partial, self._mark = b"", b""
                    self._pos = start
                f.seek(self._pos)
                data = f.read(end - self._pos)
        except FileNotFoundError:
            return [], 0
        self._pos += len(data)
        self._mark = (self._mark + data)[-_MARK:]
        pieces = data.split(b"\n")
        tail = pieces.pop()  # after the last newline: unfinished ("" when none)
        lines: list[bytes] = []
        for i, piece in enumerate(pieces):
            if i == 0:
                if self._discarding:
                    # The end of a line whose start was skipped (counted with it) or
                    # was too long to send (counted when it passed the bound).
                    self._discarding = False
                    continue
                piece = self._partial + piece
                self._partial = b""
            if len(piece) + 1 > MAX_CHUNK:
                skipped += 1
                continue
            lines.append(piece)
        if self._discarding:
            return lines, skipped
        if pieces:
            self._partial = tail
        else:
            self._partial += tail
        if len(self._partial) + 1 > MAX_CHUNK:
            self._partial, self._discarding = b"", True
            skipped += 1
        return lines, skipped


def _count_lines(f: BinaryIO, start: int, end: int) -> int:
    """Newlines in ``[start, end)`` of open file ``f``: exactly for the first
    :data:`MAX_COUNT` bytes, estimated from their average line length beyond."""
    f.seek(start)
    counted = 0
    newlines = 0
    while counted < min(end - start, MAX_COUNT):
        block = f.read(min(_BLOCK, end - start - counted))
        if not block:
            break
        counted += len(block)
        newlines += block.count(b"\n")
    rest = end - start - counted
    if rest > 0 and counted:
        newlines += round(rest * newlines / counted) if newlines else 0
    return newlines


def _read_at(path: Path, pos: int) -> bytes:
    """The up to :data:`_MARK` bytes of ``path`` just before ``pos``."""
    start = max(0, pos - _MARK)
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(pos - start)
    except FileNotFoundError:
        return b""


def _ends_in_newline(path: Path, size: int) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(size - 1)
            return f.read(1) == b"\n"
    except (FileNotFoundError, OSError):
        return True


def _chunks(lines: list[bytes], skipped: int, rotated: bool) -> list[Chunk]:
    """``lines`` as chunks of at most :data:`MAX_CHUNK` bytes of text; ``skipped`` and
    ``rotated`` go on the first (they happened before these lines)."""
    chunks: list[Chunk] = []
    parts: list[str] = []
    size = 0
    for raw in lines:
        text = raw.decode("utf-8", errors="replace") + "\n"
        n = len(text) if text.isascii() else len(text.encode())
        if n > MAX_CHUNK:  # replacement characters made it longer than its bytes
            skipped += 1
            continue
        if size + n > MAX_CHUNK:
            chunks.append(Chunk("".join(parts)))
            parts, size = [], 0
        parts.append(text)
        size += n
    if parts:
        chunks.append(Chunk("".join(parts)))
    if chunks:
        chunks[0].skipped, chunks[0].rotated = skipped, rotated
    elif skipped or rotated:
        chunks.append(Chunk(skipped=skipped, rotated=rotated))
    return chunks
