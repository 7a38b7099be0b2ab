"""What the Daemon says to others is clean and within the bounds they accept.

The Daemon copies text it does not control into what it reports: an agent's last stderr
line goes into ``status_reason``, a version label arrives with ``PushUpdate``, spawn
errors quote an executable's path. One ANSI colour code or a 100 KB version there made
the Manager refuse every ``SyncAgentStates`` of the node (its ``check_text`` allows no
control characters and bounds lengths), so the Manager kept showing dead agents as
``RUNNING``. :func:`clean` makes any text safe to report: escape sequences and control
or formatting characters removed, length bounded.

The bounds are the Manager's own (``common/validate.py`` and
``manager/services/manager_service.py``): free text 1,024 characters, ``type`` and
``version`` 64.
"""

from __future__ import annotations

import re
import unicodedata

from common.errors import InvalidArgument
from common.validate import MAX_TEXT_LEN

# What the Manager stores (SyncAgentStates): status_reason / SpecState.reason at most
# MAX_TEXT_LEN characters, type and version at most 64.
MAX_REASON_LEN = MAX_TEXT_LEN
MAX_LABEL_LEN = 64
ELLIPSIS = "…"

# ECMA-48 escape sequences: CSI (ESC [ … final byte, e.g. colours), OSC / DCS / APC /
# PM / SOS strings (ESC ] … BEL or ST, e.g. window titles, hyperlinks), two-character
# escapes (ESC + one byte), and the 8-bit CSI / OSC forms (U+009B, U+009D). Other
# control characters are dealt with one by one.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|(?:\x1b[\]PX^_]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[\x20-\x7e]?"
)
# Categories never shown as themselves: controls (C0, DEL, C1), formatting characters
# (bidi overrides and isolates, zero-width joiners, BOM), surrogates, unassigned.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_SPACES = re.compile(r"\s+")


def _safe_char(ch: str) -> str:
    if ch.isascii():
        return ch if " " <= ch <= "~" else " "
    return "" if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch


def clean(text: str, max_len: int = MAX_REASON_LEN) -> str:
    """``text`` made safe to report: escape sequences dropped, control characters
    (tab and newlines included) turned into single spaces, formatting characters such as
    right-to-left overrides dropped, then cut to ``max_len`` characters (ending in "…"
    when cut)."""
    if text.isascii() and text.isprintable() and len(text) <= max_len:
        return text  # the common case, without a copy
    text = _ESCAPES.sub("", text[: max_len * 4 + 256])
    text = "".join(_safe_char(ch) for ch in text)
    text = _SPACES.sub(" ", text).strip()
    if len(text) > max_len:
        text = text[: max_len - len(ELLIPSIS)].rstrip() + ELLIPSIS
    return text


def check_label(field: str, value: str, *, max_len: int = MAX_LABEL_LEN) -> str:
    """A label the Daemon is *given* (a pushed ``version``): refused with
    :class:`InvalidArgument` unless it is at most ``max_len`` characters of printable
    text, so that what is stored is what was asked for, never a silently cut copy."""
    if len(value) > max_len:
        raise InvalidArgument(f"{field} is {len(value)} characters long (max {max_len})")
    if any(_safe_char(ch) != ch for ch in value):
        raise InvalidArgument(f"{field} contains control, escape or formatting characters")
    return value
