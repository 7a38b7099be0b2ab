"""``fleetctl agent logs -f``: an agent's lines as it writes them (FollowAgentLog).

A real Manager and a real Daemon (node-a, /metrics on) running:

* chatty: ``tick N`` on stderr once a second (and 1 KiB lines on stdout);
* rotator: chatty writing ~20 KiB/s to stdout, its log rotated at 16 KiB (the Daemon
  looks every 2 s), so its stdout log is rotated again and again.

fleetctl runs as a real process; that a follow's end reaches the Daemon is read from its
``fleet_daemon_log_followers`` gauge. The follower itself (partial lines, rotation,
skipping, long lines) is tested on files below.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import async_wait_until, console_script, free_port, wait_until
from harness.daemon import DaemonProc, agent, scrape_metrics, start_daemon
from harness.manager import ManagerProc, start_manager

from common.tls import TLSFiles, client_context
from daemon import logfollow
from daemon.logfollow import LogFollower
from fleetctl.errors import ExitCode
from schema import admin_pb

TICK = re.compile(r"^tick (\d+)$")


@dataclass
class Fleet:
    manager: ManagerProc
    daemon: DaemonProc
    http_port: int
    env: dict[str, str]
    certs: Path

    def followers(self) -> float:
        return scrape_metrics(self.http_port)["fleet_daemon_log_followers"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("log-follow")
    manager = start_manager(tmp, certs)
    daemon: DaemonProc | None = None
    http_port = free_port()
    try:
        daemon = start_daemon(
            tmp,
            certs,
            node_id="node-a",
            manager_port=manager.grpc_port,
            agents=[
                agent("chatty", "chatty", "10"),
                agent("rotator", "chatty", "20", log_max_bytes=16 * 1024, log_backups=1),
            ],
            config={"http": {"listen": f"127.0.0.1:{http_port}"}},
        )
        env = {
            "FLEET_MANAGER": manager.address,
            "FLEET_CA": str(certs / "ca.crt"),
            "FLEET_CERT": str(certs / "admin.crt"),
            "FLEET_KEY": str(certs / "admin.key"),
            "FLEET_CONFIG": "",
            "FLEET_TIMEOUT": "20s",
            "FLEET_DEBUG": "",
            "NO_COLOR": "1",
            "XDG_CONFIG_HOME": str(tmp / "xdg"),
        }
        f = Fleet(manager, daemon, http_port, env, certs)
        wait_until(
            lambda: subprocess.run(
                [console_script("fleetctl"), "agent", "logs", "node-a", "chatty", "-n", "1"],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.startswith("tick "),
            timeout=60,
            what="chatty's ticks readable through the Manager",
        )
        yield f
    finally:
        if daemon is not None:
            daemon.stop()
        manager.stop()


class Follow:
    """A running ``fleetctl agent logs … -f``, its output read as it comes."""

    def __init__(self, fleet: Fleet, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [console_script("fleetctl"), "agent", "logs", *argv, "-f"],
            env={**os.environ, **fleet.env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(pipe: object, into: list[str]) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            into.append(line.rstrip("\n"))

    def ticks(self) -> list[int]:
        return [int(m.group(1)) for line in list(self.out) if (m := TICK.match(line))]

    def stderr(self) -> str:
        return "\n".join(self.err)

    def following(self) -> None:
        wait_until(
            lambda: any(line.startswith("following ") for line in self.err) or self.ended(),
            timeout=60,
            what="fleetctl following",
        )
        assert not self.ended(), self.finish()

    def ended(self) -> bool:
        return self.proc.poll() is not None

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.finish()

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


@pytest.fixture
def follows() -> Iterator[list[Follow]]:
    started: list[Follow] = []
    yield started
    for f in started:
        f.kill()


def no_followers(fleet: Fleet) -> None:
    wait_until(lambda: fleet.followers() == 0, timeout=60, what="no follower left on the Daemon")


# ---- through the Manager -------------------------------------------------------------------


def test_follow_prints_new_lines_until_ctrl_c(fleet: Fleet, follows: list[Follow]) -> None:
    no_followers(fleet)
    f = Follow(fleet, "node-a", "chatty", "-n", "3")
    follows.append(f)
    f.following()
    assert "following chatty stderr on node node-a (Ctrl-C to stop)" in f.err
    wait_until(lambda: len(f.ticks()) >= 3, timeout=60, what="the 3 lines of history")
    first = f.ticks()[2]  # the newest tick written before the follow began
    wait_until(lambda: max(f.ticks()) >= first + 2, timeout=60, what="ticks written after -f")
    ticks = f.ticks()
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)  # in order, once each
    assert fleet.followers() == 1
    code = f.interrupt()
    assert code == 0, f.stderr()
    assert "Traceback" not in f.stderr() and "Aborted" not in f.stderr(), f.stderr()
    no_followers(fleet)  # the Manager cancelled its stream to the Daemon


def test_a_killed_client_ends_the_daemons_follower(fleet: Fleet, follows: list[Follow]) -> None:
    no_followers(fleet)
    f = Follow(fleet, "chatty", "-n", "0")  # no node: chatty is unique in the fleet
    follows.append(f)
    f.following()
    wait_until(lambda: f.ticks(), timeout=60, what="a tick written after -f")
    assert fleet.followers() == 1
    f.proc.kill()
    f.finish()
    no_followers(fleet)


def test_follow_continues_across_rotations(fleet: Fleet, follows: list[Follow]) -> None:
    f = Follow(fleet, "node-a", "rotator", "--stream", "stdout", "-n", "0")
    follows.append(f)
    f.following()
    wait_until(lambda: "(log rotated)" in f.err, timeout=60, what="a rotation reported")
    seen = len(f.out)
    wait_until(lambda: len(f.out) > seen + 20, timeout=60, what="lines after the rotation")
    assert set(f.out) == {"x" * 1023}  # whole lines only, never a piece of one
    assert f.interrupt() == 0, f.stderr()


def test_unknown_agent_exits_3_with_a_suggestion(fleet: Fleet) -> None:
    f = Follow(fleet, "node-a", "chaty")
    code = f.finish()
    assert code == ExitCode.NOT_FOUND, f.stderr()
    assert len(f.err) == 1 and "did you mean chatty" in f.err[0], f.err
    assert f.out == []


# ---- straight from the Daemon --------------------------------------------------------------


def test_follow_straight_from_the_daemon(fleet: Fleet, follows: list[Follow]) -> None:
    no_followers(fleet)
    f = Follow(fleet, "--daemon", fleet.daemon.address, "chatty", "-n", "1")
    follows.append(f)
    f.following()
    assert "following chatty stderr on node node-a (Ctrl-C to stop)" in f.err
    wait_until(lambda: len(f.ticks()) >= 3, timeout=60, what="history and new ticks")
    assert fleet.followers() == 1
    assert f.interrupt() == 0, f.stderr()
    no_followers(fleet)


# ---- bounds --------------------------------------------------------------------------------


def test_the_ninth_follow_of_one_admin_is_refused(fleet: Fleet) -> None:
    """At most 8 open follows per admin identity; a closed one frees its place."""
    no_followers(fleet)

    async def go() -> None:
        files = TLSFiles(
            fleet.certs / "admin.crt", fleet.certs / "admin.key", fleet.certs / "ca.crt"
        )
        ctx = client_context(files, expect_role="manager")
        channel = Channel("127.0.0.1", fleet.manager.grpc_port, ssl=ctx)
        stub = admin_pb.AdminServiceStub(channel)
        request = admin_pb.FollowAgentLogRequest(node_id="node-a", agent_id="chatty")

        @contextlib.asynccontextmanager
        async def opened() -> AsyncIterator[AsyncIterator[admin_pb.FollowAgentLogResponse]]:
            replies: Any = stub.follow_agent_log(request)  # an async generator
            async with contextlib.aclosing(replies):
                await anext(replies)  # the first chunk: the follow is on
                yield replies

        try:
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(8):
                    await stack.enter_async_context(opened())
                with pytest.raises(GRPCError) as refused:
                    async with opened():
                        pass
                assert refused.value.status is Status.RESOURCE_EXHAUSTED
                assert "at most 8" in (refused.value.message or "")

            async def room_again() -> bool:
                async with opened():
                    return True

            # The eight are closed (the Manager sees the resets a moment later): room again.
            await async_wait_until(room_again, timeout=60, what="a follow after closing eight")
        finally:
            channel.close()

    asyncio.run(go())
    no_followers(fleet)


# ---- the follower, on files ----------------------------------------------------------------


def test_history_then_only_complete_new_lines(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    log.write_bytes(b"one\ntwo\nthr")
    f = LogFollower(log)
    [chunk] = f.history(5)
    assert chunk.text == "one\ntwo\n"  # "thr" is mid-write: it comes once whole
    assert f.poll() == []
    with open(log, "ab") as w:
        w.write(b"ee\nfou")
    [chunk] = f.poll()
    assert chunk.text == "three\n" and not chunk.skipped and not chunk.rotated
    with open(log, "ab") as w:
        w.write(b"r\n")
    assert [c.text for c in f.poll()] == ["four\n"]


def test_no_history_and_a_missing_file(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    f = LogFollower(log)
    assert [c.text for c in f.history(10)] == [""]  # the first chunk always comes
    assert f.poll() == []
    log.write_bytes(b"hello\n")
    assert f.changed()
    [chunk] = f.poll()
    assert chunk.text == "hello\n"
    assert not f.changed()


def test_copy_and_truncate_rotation_loses_nothing(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    log.write_bytes(b"a\n")
    f = LogFollower(log)
    f.history(0)
    with open(log, "ab") as w:
        w.write(b"b\nc\n")
    # Rotated before the next poll: "b" and "c" are only in .1 now.
    log.with_name("a.stderr.log.1").write_bytes(log.read_bytes())
    os.truncate(log, 0)
    with open(log, "ab") as w:
        w.write(b"d\n")
    [chunk] = f.poll()
    assert chunk.rotated and chunk.text == "b\nc\nd\n" and not chunk.skipped


def test_a_reader_that_fell_behind_is_told_what_it_missed(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    log.write_bytes(b"")
    f = LogFollower(log)
    f.history(0)
    line = b"y" * 99 + b"\n"  # 100 bytes
    count = 3 * logfollow.MAX_READ // len(line)
    log.write_bytes(line * count)
    chunks = f.poll()
    sent = sum(c.text.count("\n") for c in chunks)
    assert chunks[0].skipped + sent == count
    assert sent <= logfollow.MAX_READ // len(line)
    assert all(len(c.text.encode()) <= logfollow.MAX_CHUNK for c in chunks)
    assert all(c.text.endswith("\n") for c in chunks)


def test_a_line_longer_than_a_chunk_is_skipped(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    log.write_bytes(b"")
    f = LogFollower(log)
    f.history(0)
    with open(log, "ab") as w:
        w.write(b"z" * (logfollow.MAX_CHUNK + 10))
    [chunk] = f.poll()  # too long already, before its newline came
    assert chunk.skipped == 1 and chunk.text == ""
    with open(log, "ab") as w:
        w.write(b"zzz\nok\n")
    [chunk] = f.poll()
    assert chunk.text == "ok\n" and chunk.skipped == 0


def test_invalid_utf8_is_replaced(tmp_path: Path) -> None:
    log = tmp_path / "a.stderr.log"
    log.write_bytes(b"")
    f = LogFollower(log)
    f.history(0)
    log.write_bytes(b"bad \xff\n")
    assert [c.text for c in f.poll()] == ["bad \ufffd\n"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-x", "-q"]))
