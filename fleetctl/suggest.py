""" "Did you mean": the known ids closest to one that was not found.

Pure string work (difflib), no I/O: :meth:`fleetctl.client.Connection.explain` asks the
Manager or the Daemon for the ids it knows and calls :func:`close_ids`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# What separates a short name from the rest of an id: "web-01" of "web-01.example.net".
_SEPARATORS = frozenset(".-_:/")
# With thousands of "web-NN" nodes every one is "close": name only the best few.
MAX_SUGGESTIONS = 3
_MIN_RATIO = 0.75


def close_ids(typed: str, known: Iterable[str], *, limit: int = MAX_SUGGESTIONS) -> list[str]:
    """The ids of ``known`` an operator most likely meant by ``typed``, best first.

    In order: the same id in another case; ids that ``typed`` is the short form of
    (``web-01`` for ``web-01.example.net``, and the other way round); ids one edit away
    (a letter missing, extra, wrong, or two swapped: what matters for short ids such as
    ``vm``, where a ratio says little); else the ids difflib finds most similar (ratio
    at least 0.75, and within 0.05 of the best).
    """
    by_lower: dict[str, str] = {}
    for name in known:
        by_lower.setdefault(name.lower(), name)
    low = typed.lower()
    if not low:
        return []
    if low in by_lower:
        return [by_lower[low]]
    short_forms = sorted(k for k in by_lower if _is_short_form(low, k) or _is_short_form(k, low))
    if short_forms:
        return [by_lower[k] for k in short_forms[:limit]]
    one_edit = sorted(k for k in by_lower if _one_edit_apart(low, k))
    if one_edit:
        return [by_lower[k] for k in one_edit[:limit]]
    scored = sorted(
        ((difflib.SequenceMatcher(None, low, k).ratio(), k) for k in by_lower),
        key=lambda item: (-item[0], item[1]),
    )
    best = scored[0][0] if scored else 0.0
    return [by_lower[k] for r, k in scored[:limit] if r >= max(_MIN_RATIO, best - 0.05)]


def did_you_mean(ids: list[str]) -> str:
    """`` — did you mean a, b or c?`` ("" for no ids), to append to an error line."""
    if not ids:
        return ""
    names = ids[0] if len(ids) == 1 else f"{', '.join(ids[:-1])} or {ids[-1]}"
    return f" — did you mean {names}?"


def _is_short_form(short: str, full: str) -> bool:
    return len(full) > len(short) and full.startswith(short) and full[len(short)] in _SEPARATORS


def _one_edit_apart(a: str, b: str) -> bool:
    """One insertion, deletion, substitution or swap of neighbours turns ``a`` into ``b``."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    # First difference; the rest must then line up after one edit.
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    if a[i + 1 :] == b[i + 1 :]:
        return True
    return i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :]
