"""Input checks shared by every RPC: ids, labels, timestamps, metric values.

Each raises :class:`~common.errors.InvalidArgument` with a message naming the field and
what was wrong, which the RPC layer returns as ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping

from .errors import InvalidArgument

MAX_ID_LEN = 128
MAX_LABELS = 64
MAX_LABEL_KEY_LEN = 63
MAX_LABEL_VALUE_LEN = 256
MAX_TEXT_LEN = 1024
# Timestamps: after 2000-01-01 and no more than a day in the future (clock skew).
MIN_TIMESTAMP = 946_684_800
MAX_FUTURE_SKEW = 86_400

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?")


def check_id(field: str, value: str) -> str:
    """A node or agent id: 1–128 of ``[A-Za-z0-9._-]``, starting alphanumeric."""
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > MAX_ID_LEN:
        raise InvalidArgument(f"{field} is {len(value)} characters long (max {MAX_ID_LEN})")
    if not _ID.fullmatch(value):
        raise InvalidArgument(
            f"{field} {value[:40]!r} has characters outside [A-Za-z0-9._-] "
            "or does not start with a letter or digit"
        )
    return value


# What free text may not hold: C0 controls but tab, DEL and C1 controls (terminal escapes,
# NUL, line breaks), and the characters that make text display as something else — the
# bidirectional embeddings, overrides and isolates of "Trojan Source" (U+202A–U+202E,
# U+2066–U+2069) and the Unicode line and paragraph separators (U+2028, U+2029), which
# break a table row like a newline. Bidi *marks* (U+200E, U+200F, U+061C) stay allowed:
# right-to-left text needs them and they reorder nothing around them.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_DISGUISE = re.compile("[\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def check_text(field: str, value: str, *, max_len: int = MAX_TEXT_LEN) -> str:
    """A free-text field: bounded; no control characters (C0 but tab, DEL, C1) and no
    bidi overrides or line separators, which could disguise what fleetctl shows."""
    if len(value) > max_len:
        raise InvalidArgument(f"{field} is {len(value)} characters long (max {max_len})")
    if value.isprintable():
        # The common case at C speed: every character refused below is non-printable.
        return value
    if _CONTROL.search(value):
        raise InvalidArgument(f"{field} contains control characters")
    found = _DISGUISE.search(value)
    if found:
        raise InvalidArgument(
            f"{field} contains U+{ord(found.group()):04X}, a bidirectional override or "
            "line separator character"
        )
    return value


# ECMA-48 escape sequences, removed whole by clean_text: CSI (ESC [ … final byte, e.g.
# colours), OSC / DCS / APC / PM / SOS strings (ESC ] … BEL or ST: window titles,
# hyperlinks), two-character escapes, and the 8-bit CSI / OSC forms (U+009B, U+009D).
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x7e]?"
)
_CONTROL_RUN = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]+")
ELLIPSIS = "\u2026"


def clean_text(value: str, *, max_len: int = MAX_TEXT_LEN) -> tuple[str, str]:
    """``value`` made acceptable to :func:`check_text`, and what was changed ("" if
    nothing): escape sequences removed, runs of other control characters turned into one
    space (none left at either end), bidi overrides and line separators removed, then
    cut to ``max_len`` characters (ending in "…"). For text a peer relays rather than
    chooses (an agent's last stderr line), where one bad entry must not cost the whole
    report."""
    if len(value) <= max_len and value.isprintable():
        return value, ""
    changes: list[str] = []
    # Bounded work whatever the length: only what can survive the cut is cleaned.
    text = value[: max_len * 4 + 256]
    cut = len(text) < len(value)
    if not text.isprintable():
        if "\x1b" in text or "\x9b" in text or "\x9d" in text:
            stripped = _ESCAPES.sub("", text)
            if stripped != text:
                changes.append("escape sequences removed")
                text = stripped
        if _CONTROL.search(text):
            text = _CONTROL_RUN.sub(" ", text).strip(" ")
            changes.append("control characters replaced")
        if _DISGUISE.search(text):
            text = _DISGUISE.sub("", text)
            changes.append("bidi overrides or line separators removed")
    if len(text) > max_len:
        text = text[: max_len - len(ELLIPSIS)] + ELLIPSIS
        cut = True
    if cut:
        changes.append(f"cut to {max_len} of {len(value)} characters")
    return text, ", ".join(changes)


def check_labels(field: str, labels: Mapping[str, str]) -> dict[str, str]:
    """Labels: at most 64 pairs, keys like Kubernetes label keys, bounded values."""
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"{field} has {len(labels)} entries (max {MAX_LABELS})")
    for key, value in labels.items():
        if len(key) > MAX_LABEL_KEY_LEN or not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(f"{field} key {key[:40]!r} is not a valid label key")
        check_text(f"{field}[{key}]", value, max_len=MAX_LABEL_VALUE_LEN)
    return dict(labels)


def check_timestamp(field: str, value: int, *, now: float | None = None) -> int:
    """A Unix-seconds timestamp after 2000 and at most a day ahead of our clock."""
    current = time.time() if now is None else now
    if value < MIN_TIMESTAMP or value > current + MAX_FUTURE_SKEW:
        raise InvalidArgument(f"{field} {value} is not a plausible Unix time in seconds")
    return value


def check_finite(field: str, value: float) -> float:
    """A metric value: a finite float (no NaN or infinity)."""
    if not math.isfinite(value):
        raise InvalidArgument(f"{field} is {value}, not a finite number")
    return value


# GetAgentLog (Daemon and AdminService): which stream, how many lines.
LOG_STREAMS = ("stdout", "stderr")
DEFAULT_LOG_STREAM = "stderr"
DEFAULT_LOG_LINES = 100
MAX_LOG_LINES = 5000


def check_log_request(stream: str, lines: int) -> tuple[str, int]:
    """(stream, lines) of a log request with defaults applied (""/0 → stderr/100)."""
    stream = stream or DEFAULT_LOG_STREAM
    if stream not in LOG_STREAMS:
        raise InvalidArgument(f"stream {stream[:32]!r} is not stdout or stderr")
    if lines < 0 or lines > MAX_LOG_LINES:
        raise InvalidArgument(f"lines {lines} is outside 1..{MAX_LOG_LINES}")
    return stream, lines or DEFAULT_LOG_LINES
