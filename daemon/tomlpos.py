"""Where in a TOML text a configuration mistake is: best-effort line numbers.

``tomllib`` says where a *syntax* error is (``... (at line 3, column 5)``) but validation
happens on the parsed data, where lines are gone. :func:`locate` finds the line again
from the text and the message (``agent 'web': key 'autorestart' ...`` → the
``autorestart =`` line of the ``[[agents]]`` block whose id is ``web``), so the Daemon can
say ``/etc/fleet/daemon.toml line 23: ...`` at start and on reload.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_SYNTAX_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_ASSIGNMENT = re.compile(r"""^\s*([A-Za-z0-9_.\-"' ]+?)\s*=""")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_AGENT_IN_MESSAGE = re.compile(r"^agent (['\"])(.*?)\1: |^agents\[(\d+)\]")
_KEY_IN_MESSAGE = re.compile(r"key '([^']+)'")


def syntax_error(path: Path, text: str, message: str) -> str:
    """A ``tomllib`` error message as ``<path> line N: key 'k': <reason> (column C)``."""
    found = _SYNTAX_AT.search(message)
    if not found:
        return f"config file {path}: {message}"
    line, column = int(found.group(1)), int(found.group(2))
    reason = message[: found.start()]
    lines = text.splitlines()
    key = _ASSIGNMENT.match(lines[line - 1]) if 0 < line <= len(lines) else None
    what = f"key {key.group(1).strip()!r}: " if key else ""
    return f"{path} line {line}: {what}{reason} (column {column})"


def key_in(message: str) -> tuple[str | None, str] | None:
    """(agent id or index, key) named by a validation message, if any."""
    agent = _AGENT_IN_MESSAGE.match(message)
    key = _KEY_IN_MESSAGE.search(message)
    if key is None and agent is None:
        return None
    agent_ref = None
    if agent is not None:
        agent_ref = agent.group(2) if agent.group(2) is not None else agent.group(3)
    return agent_ref, key.group(1) if key else ""


def locate(text: str, message: str) -> int | None:
    """Best effort: the line of ``text`` (TOML) that a validation ``message`` is about.

    Understands the messages of :mod:`daemon.config` and :mod:`common.agentspec`:
    ``agent 'web': key 'x' ...`` (the ``x =`` line in the ``[[agents]]`` block whose id is
    ``web``), ``agents[2]: ...`` (the third block) and ``key 'manager.timeout' ...``.
    """
    named = key_in(message)
    if named is None:
        return None
    agent_ref, key = named
    blocks = _blocks(text.splitlines())
    if agent_ref is not None:
        agent_blocks = [b for b in blocks if b.array and b.name == "agents"]
        if agent_ref.isdigit() and message.startswith("agents["):
            index = int(agent_ref)
            chosen = [agent_blocks[index]] if index < len(agent_blocks) else []
        else:
            chosen = [b for b in agent_blocks if b.value_of("id") == agent_ref]
        if not chosen:
            return None
        block = chosen[-1] if "declared twice" in message else chosen[0]
        return block.line_of(key.split(".")[0]) or block.header_line
    parts = key.split(".")
    for i in range(len(parts) - 1, -1, -1):
        table, rest = ".".join(parts[:i]), parts[i:]
        for block in blocks:
            if block.name == table and not block.array:
                line = block.line_of(".".join(rest)) or block.line_of(rest[0])
                if line:
                    return line
    for block in blocks:
        if block.name == key and not block.array:
            return block.header_line
    return None


@dataclass
class _Block:
    """One table of a TOML text: its header (0 for the top level) and body lines."""

    name: str
    array: bool
    header_line: int
    lines: list[tuple[int, str]] = field(default_factory=list)

    def line_of(self, key: str) -> int | None:
        for number, text in self.lines:
            found = _ASSIGNMENT.match(text)
            if found and found.group(1).strip().strip("\"'") == key:
                return number
        return None

    def value_of(self, key: str) -> str | None:
        for _, text in self.lines:
            found = re.match(rf"""^\s*{re.escape(key)}\s*=\s*(["'])(.*?)\1""", text)
            if found:
                return found.group(2)
        return None


def _blocks(lines: list[str]) -> list[_Block]:
    blocks = [_Block(name="", array=False, header_line=0)]
    for number, text in enumerate(lines, start=1):
        header = _HEADER.match(text)
        if header and not _ASSIGNMENT.match(text):
            blocks.append(
                _Block(name=header.group(2), array=header.group(1) == "[[", header_line=number)
            )
        else:
            blocks[-1].lines.append((number, text))
    return blocks
