"""Spec files (``fleetctl apply -f web.toml``): read, validate, and the rollout defaults.

The file format is docs/specs.md's: ``name`` (default: the file's stem), ``[target]``,
``[[agents]]`` and an optional ``[rollout]`` table of defaults for ``apply`` that is not
signed. Validation of everything that is signed is ``common.specdoc``'s (the Manager and
the Daemons run the same code); this module adds what only fleetctl reads — the file
itself and ``[rollout]`` — and turns every mistake into one usage line naming the file.

Imported only by the commands that read spec files: ``common.specdoc`` loads
``cryptography``.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from common.durations import parse_duration

from .errors import CliError, ExitCode, usage

ROLLOUT_KEYS = ("max_unavailable", "max_failures", "auto_rollback", "healthy_deadline")
_MAX_UNAVAILABLE = re.compile(r"[1-9][0-9]*%?")


@dataclass(frozen=True)
class RolloutOptions:
    """How to roll a revision out; None = not said here (the next source decides)."""

    max_unavailable: str | None = None
    max_failures: int | None = None
    auto_rollback: bool | None = None
    healthy_deadline: int | None = None  # seconds

    def overridden_by(self, other: RolloutOptions) -> RolloutOptions:
        """These options with every value ``other`` sets replaced (flags over the file)."""
        changes = {
            f.name: getattr(other, f.name)
            for f in fields(other)
            if getattr(other, f.name) is not None
        }
        return replace(self, **changes)


@dataclass(frozen=True)
class SpecFile:
    """A spec file, read and validated: the unsigned document and its rollout defaults."""

    path: str  # as given ("-" for stdin)
    document: dict[str, Any]  # common.specdoc.document_from_file's: kind, name, target, agents
    rollout: RolloutOptions

    @property
    def name(self) -> str:
        return str(self.document["name"])


def parse_max_unavailable(value: Any, *, where: str) -> str:
    """``"N"`` nodes or ``"N%"`` of them (an integer N is taken as nodes)."""
    text = (
        str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else ""
    )
    if not _MAX_UNAVAILABLE.fullmatch(text) or (text.endswith("%") and int(text[:-1]) > 100):
        raise usage(f"{where}: {value!r} is not a node count or percentage: use e.g. 2 or 25%")
    return text


def parse_max_failures(value: Any, *, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise usage(f"{where}: {value!r} must be a whole number of nodes, 0 or more")
    return value


def parse_healthy_deadline(value: Any, *, where: str) -> int:
    """A duration (``2m``, or seconds) as whole seconds, at least one."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise usage(f"{where}: expected a duration like 2m or a number of seconds")
    try:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
    except ValueError as exc:
        raise CliError(f"{where}: {exc}", ExitCode.USAGE) from None
    if not math.isfinite(seconds) or seconds < 1:
        raise usage(f"{where}: {value!r} is shorter than one second")
    return math.ceil(seconds)


def _rollout_table(raw: Any, name: str) -> RolloutOptions:
    if not isinstance(raw, Mapping):
        raise usage(f"{name}: key 'rollout' must be a table ([rollout])")
    unknown = sorted(set(raw) - set(ROLLOUT_KEYS))
    if unknown:
        raise usage(
            f"{name}: [rollout]: unknown key {unknown[0]!r} (known: {', '.join(ROLLOUT_KEYS)})"
        )
    auto = raw.get("auto_rollback")
    if auto is not None and not isinstance(auto, bool):
        raise usage(f"{name}: [rollout] key 'auto_rollback' must be true or false")

    def key(k: str) -> str:
        return f"{name}: [rollout] key {k!r}"

    return RolloutOptions(
        max_unavailable=parse_max_unavailable(raw["max_unavailable"], where=key("max_unavailable"))
        if "max_unavailable" in raw
        else None,
        max_failures=parse_max_failures(raw["max_failures"], where=key("max_failures"))
        if "max_failures" in raw
        else None,
        auto_rollback=auto,
        healthy_deadline=parse_healthy_deadline(
            raw["healthy_deadline"], where=key("healthy_deadline")
        )
        if "healthy_deadline" in raw
        else None,
    )


def read_spec_file(path: str) -> SpecFile:
    """Read and validate the spec file at ``path`` (``-``: stdin, which must say ``name``).

    Every problem is a usage error (exit 2) of one line starting with the file's name:
    TOML syntax errors with their line and column, others naming the key.
    """
    import tomllib

    from common.specdoc import SpecError, document_from_file

    if path == "-":
        name, stem = "stdin", ""
        text = sys.stdin.read()
    else:
        p = Path(path)
        name, stem = path, p.stem
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise usage(f"spec file not found: {path}") from None
        except IsADirectoryError:
            raise usage(f"{path} is a directory, not a spec file") from None
        except UnicodeDecodeError as exc:
            raise usage(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise usage(f"cannot read spec file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise usage(f"{name}: invalid TOML: {exc}") from None
    if "name" not in data and not stem:
        raise usage(f'{name}: give the spec a name (name = "...") when reading stdin')
    try:
        document = document_from_file(data, default_name=stem)
    except SpecError as exc:
        hint = ""
        if "spec name" in str(exc) and "name" not in data:
            hint = ' (it is the file\'s name by default: set name = "..." in the file)'
        raise usage(f"{name}: {exc}{hint}") from None
    rollout = _rollout_table(data["rollout"], name) if "rollout" in data else RolloutOptions()
    return SpecFile(path=path, document=document, rollout=rollout)


def content_of(document: Mapping[str, Any]) -> dict[str, Any]:
    """What a document asks for — its target and agents — shaped like
    ``common.specdoc.SpecDoc.content()``, so the two compare by ``specdoc.canonical``."""
    return {"target": document["target"], "agents": [dict(a) for a in document["agents"]]}
