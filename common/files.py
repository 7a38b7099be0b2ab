"""Writing files so that a reader, or a crash, sees the old content or the new, never
half: what certificates, keys and small state files need on every tier."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with permissions ``mode``: a synced temporary file renamed
    over ``path``, then the directory synced so the rename itself survives a power cut.
    The mode is set before any (secret) bytes land on disk."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """fsync a directory: the names created, renamed or removed in it are durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
