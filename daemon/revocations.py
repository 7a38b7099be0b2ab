"""The fleet's certificate revocations, as this Daemon holds and enforces them.

The Manager keeps the revocations; every heartbeat answer says which version of the list
is current (``HeartbeatResponse.revocations_version``). When that differs from the version
held here, :class:`DaemonRevocations` asks for the list (``GetRevocations``) and replaces
its :class:`~common.revocation.RevocationList`, which the DaemonService listener checks on
every call (closing the open connections of a certificate it now revokes) and central
specs check their signer against. The list is kept in ``<state_dir>/revocations.json`` so
a Daemon restarted while its Manager is away still refuses what was revoked.

A Manager that predates revocations sends version 0: nothing is ever fetched from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from common.backoff import Backoff
from common.files import write_file_atomic
from common.revocation import Revocation, RevocationList
from schema import manager_pb

log = logging.getLogger(__name__)

Fetch = Callable[[int], Awaitable[manager_pb.GetRevocationsResponse]]


class DaemonRevocations:
    """The held revocation list, its file, and the task that refreshes it.

    Lifecycle ``start``/``close``/``wait_closed``; :meth:`seen_version` is fed every
    heartbeat's ``revocations_version``. ``fetch(known_version)`` calls GetRevocations on
    the current Manager.
    """

    def __init__(self, *, path: Path, fetch: Fetch, retry_max: float = 60.0) -> None:
        self.list = RevocationList()
        self._path = path
        self._fetch = fetch
        self._retry_max = retry_max
        self._wanted = 0  # the version the Manager announced last
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def version(self) -> int:
        return self.list.version

    def load(self) -> None:
        """Read the stored list; a missing file is an empty list, a corrupt one is logged
        and ignored (the Manager sends the list again at the next heartbeat)."""
        try:
            data = json.loads(self._path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            self.list.load_json(data)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("ignoring %s (%s): the Manager will send the list again", self._path, exc)
            return
        if len(self.list):
            log.info(
                "loaded %d certificate revocation(s), version %d, from %s",
                len(self.list),
                self.list.version,
                self._path,
            )

    def seen_version(self, version: int) -> None:
        """The Manager's current version (0: it has none, or predates revocations)."""
        if version and version != self.list.version:
            self._wanted = version
            self._wake.set()

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("DaemonRevocations already started")
        self._task = asyncio.create_task(self._loop(), name="revocations")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        backoff = Backoff(initial=1.0, maximum=self._retry_max)
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._wanted or self._wanted == self.list.version:
                continue
            try:
                await self.refresh()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff.next_delay()
                log.warning("fetching revocations failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                self._wake.set()

    async def refresh(self) -> bool:
        """Fetch the list from the Manager and hold it; True if it changed."""
        reply = await self._fetch(self.list.version)
        if reply.unchanged:
            return False
        entries = [
            Revocation(
                serial=r.serial,
                identity=r.identity,
                not_before_max=float(r.not_before_max),
                revoked_at=float(r.revoked_at),
                reason=r.reason,
            )
            for r in reply.revocations
        ]
        changed = self.list.replace(reply.version, entries)
        log.info(
            "certificate revocations now at version %d: %d entr%s%s",
            reply.version,
            len(self.list),
            "y" if len(self.list) == 1 else "ies",
            "" if changed else " (unchanged)",
        )
        try:
            data = json.dumps(self.list.to_json(), indent=1).encode()
            await asyncio.to_thread(write_file_atomic, self._path, data, 0o600)
        except OSError as exc:
            # Enforced in memory all the same; only a restart without the Manager loses it.
            log.error("cannot save the revocations to %s: %s", self._path, exc)
        return changed
