"""Following a rollout until it ends (``apply``, ``rollout undo``, ``rollout status --watch``).

The Manager runs the rollout; fleetctl only watches it, polling ``GetRollout`` about twice
a second, with a live progress bar on stderr when stderr is a terminal (silent
otherwise). Leaving — Ctrl-C, a lost connection — never stops the rollout.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import CliError, ExitCode
from ..spec_views import ROLLOUT_DONE

if TYPE_CHECKING:
    from ..client import Connection

POLL_SECONDS = 0.5
# How long the Manager may stay unreachable while following before fleetctl gives up
# (at least this long, and at least --timeout).
UNREACHABLE_GRACE_SECONDS = 10.0


class RolloutProgress:
    """A Rich progress bar on stderr (nodes done / failed / in progress / pending, and the
    rollout's state) when ``enabled``; does nothing otherwise."""

    def __init__(self, *, enabled: bool, title: str) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._note = ""
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            # The counts first and the bar after them, as wide as what is left: on a
            # narrow terminal the bar shrinks, not the numbers.
            self._bar = Progress(
                TextColumn("{task.description}", markup=False),
                TextColumn("{task.fields[detail]}", markup=False),
                BarColumn(bar_width=None),
                TimeElapsedColumn(),
                console=Console(stderr=True, highlight=False),
                transient=True,
            )
            self._task = self._bar.add_task(title, total=None, detail="starting")

    def __enter__(self) -> RolloutProgress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    @staticmethod
    def detail(r: Any) -> str:
        """``6/10 done · 1 failed · 2 in progress · 1 pending · running``, without the counts
        that are zero (it has to fit an 80-column terminal with the bar)."""
        parts = [f"{r.done}/{r.total} done"]
        parts += [
            f"{count} {what}"
            for count, what in (
                (r.failed, "failed"),
                (r.in_progress, "in progress"),
                (r.pending, "pending"),
            )
            if count
        ]
        return " · ".join([*parts, r.state.replace("_", " ") or "?"])

    def update(self, r: Any) -> None:
        self._note = ""
        if self._bar is not None:
            self._bar.update(
                self._task,
                completed=r.done + r.failed,
                total=max(r.total, 0) or None,
                detail=self.detail(r),
            )

    def note(self, text: str) -> None:
        """A transient remark after the counts (e.g. the Manager is unreachable)."""
        if self._bar is not None and text != self._note:
            self._note = text
            detail = self._bar.tasks[0].fields.get("detail", "").split(" (")[0]
            self._bar.update(self._task, detail=f"{detail} ({text})")


@dataclass
class Followed:
    """How following a rollout ended.

    ``ours``: the last state seen of the rollout of ``revision``; ``final``: the last
    rollout seen at all — the same one, the rollback's (``rollback_revision``), a newer
    apply's, or None when the spec has no rollout any more (deleted meanwhile).
    """

    revision: int
    ours: Any
    final: Any | None


async def follow_rollout(
    conn: Connection,
    spec: str,
    *,
    revision: int,
    first: Any,
    progress: RolloutProgress,
    rollback_revision: int = 0,
    poll: float = POLL_SECONDS,
) -> Followed:
    """Poll ``GetRollout`` until the rollout of ``revision`` (or its rollback) has ended,
    or a newer revision replaced it. ``first``: the rollout as the apply returned it."""
    from schema import admin_pb2

    stub = conn.admin()
    ours, current = first, first
    progress.update(first)
    grace = max(UNREACHABLE_GRACE_SECONDS, conn.timeout)
    last_answer = time.monotonic()
    while True:
        if current.revision == revision and current.state in ROLLOUT_DONE:
            return Followed(revision, ours, current)
        if rollback_revision and current.revision == rollback_revision:
            if current.state in ROLLOUT_DONE:
                return Followed(revision, ours, current)
        elif current.revision > revision:
            return Followed(revision, ours, current)  # superseded by a newer apply
        await asyncio.sleep(poll)
        try:
            reply = await stub.GetRollout(
                admin_pb2.GetRolloutRequest(spec=spec), timeout=conn.timeout
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = await conn.explain(exc)
            waited = time.monotonic() - last_answer
            if err.code is not ExitCode.UNAVAILABLE or waited > grace:
                raise CliError(
                    f"lost track of the rollout of {spec} revision {revision}: {err.message} — "
                    f"it goes on without fleetctl; follow it with "
                    f"'fleetctl rollout status {spec} --watch'",
                    err.code,
                ) from exc
            progress.note(f"manager unreachable for {waited:.0f}s, retrying")
            continue
        last_answer = time.monotonic()
        if not reply.HasField("rollout"):
            return Followed(revision, ours, None)
        current = reply.rollout
        if current.revision == revision:
            ours = current
        progress.update(current)
