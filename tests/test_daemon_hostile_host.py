"""Issue 11, items 7 and 8, against real ``fleet-daemon`` processes and real agents:
what the host itself does to a Daemon (a full or unwritable state directory) or lets
another local user do (squat the directory of the agent socket).

* Item 7 — with ``agents.json`` unwritable, an agent killed is restarted (supervision
  does not depend on saving), and after a Daemon ``kill -9`` and restart (state still
  unwritable, then the file deleted outright) the restarted copy is adopted by its mark:
  never a second copy, and its token still works. The same on a real full disk (a tiny
  tmpfs, where root and ``mount`` allow). A process with a forged mark is not adopted.
* Item 8 — a socket directory path another user owns or can write to is refused at
  start with an error naming the directory; nothing of the Daemon's goes there.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from harness import console_script, free_port, run_cli, wait_until
from harness.daemon import DaemonProc, agent, list_agents, start_daemon, to_toml

from daemon.adoption import MARK_ENV, Found, reckon
from daemon.state import AgentRecord

# ---- item 7: a full or unwritable state directory ----


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _copies(agent_id: str, state_id: str) -> list[int]:
    """Live session leaders spawned for ``agent_id`` by the Daemon of ``state_id``."""
    pids = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) != proc.pid or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            env = proc.environ()
        except (OSError, psutil.Error):
            continue
        if env.get("FLEET_AGENT_ID") == agent_id and env.get(MARK_ENV, "").startswith(
            state_id + ":"
        ):
            pids.append(proc.pid)
    return sorted(pids)


def _running(certs: Path, daemon: DaemonProc, agent_id: str, not_pid: int = 0) -> Any:
    return wait_until(
        lambda: (
            (a := list_agents(certs, daemon)[agent_id]).status == "RUNNING"
            and a.pid not in (0, not_pid)
            and a
        ),
        timeout=20,
        what=f"agent {agent_id} running" + (f" with a pid other than {not_pid}" if not_pid else ""),
    )


def _recorded_pid(daemon: DaemonProc, agent_id: str) -> int:
    data = json.loads((daemon.state_dir / "agents.json").read_text())
    return int(data["agents"][agent_id]["pid"])


def _heartbeat_after(certs: Path, daemon: DaemonProc, agent_id: str, moment: float) -> Any:
    return wait_until(
        lambda: (a := list_agents(certs, daemon)[agent_id]).last_heartbeat > moment and a,
        timeout=20,
        what=f"a heartbeat of {agent_id} accepted after {moment:.0f}",
    )


def _sdk_settled(out: Path, pid: int) -> None:
    """Wait until the SDK agent ``pid`` registered and fetched its config (it writes it
    to ``out``): before that it exits when the Daemon goes away; after, it retries."""
    wait_until(
        lambda: out.exists() and json.loads(out.read_text())["pid"] == pid,
        timeout=20,
        what=f"SDK agent {pid} registered and configured",
    )


def test_unwritable_state_never_makes_a_second_copy(tmp_path: Path, certs: Path) -> None:
    pids_a = tmp_path / "a.pids"
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[
            agent("a", "sleeper", str(pids_a), start_seconds=0.2),
            agent(
                "s", "sdk_agent", str(tmp_path / "s.json"), start_seconds=0.2, heartbeat_interval=1
            ),
        ],
        config={"stop_agents_on_exit": False},
    )
    state_id = ""
    try:
        first = {i: _running(certs, daemon, i) for i in ("a", "s")}
        state_id = psutil.Process(first["a"].pid).environ()[MARK_ENV].split(":")[0]
        assert _copies("a", state_id) == [first["a"].pid]

        # The state file can no longer be replaced: its temporary name is a directory
        # (works without root; a full disk fails the same write with ENOSPC).
        (daemon.state_dir / "agents.tmp").mkdir()
        for agent_id in ("a", "s"):
            os.kill(first[agent_id].pid, signal.SIGKILL)
        second = {i: _running(certs, daemon, i, not_pid=first[i].pid) for i in ("a", "s")}
        _sdk_settled(tmp_path / "s.json", second["s"].pid)
        assert "cannot write agent state" in daemon.output()
        assert _recorded_pid(daemon, "a") == first["a"].pid, "agents.json is stale"
        saves_logged = daemon.output().count("cannot write agent state")
        assert saves_logged <= 2, "a failing save is logged once a minute, not per change"

        # kill -9 the Daemon; the agents run on; a new Daemon on the stale state...
        daemon.signal(signal.SIGKILL)
        daemon.kill()
        assert all(_alive(second[i].pid) for i in ("a", "s"))
        restarted_at = time.time()
        daemon = daemon.restart()
        for agent_id in ("a", "s"):
            now = list_agents(certs, daemon)[agent_id]
            assert (now.status, now.pid) == ("RUNNING", second[agent_id].pid)
            assert "re-adopted" in now.status_reason
        assert "found by its mark" in daemon.output()
        assert _copies("a", state_id) == [second["a"].pid]
        assert _copies("s", state_id) == [second["s"].pid]
        assert [int(p) for p in pids_a.read_text().split()] == [
            first["a"].pid,
            second["a"].pid,
        ], "no agent started a third time"
        # The token came with the process (its environment), so its calls still work.
        _heartbeat_after(certs, daemon, "s", restarted_at + 1)

        # ...and with agents.json gone altogether.
        daemon.signal(signal.SIGKILL)
        daemon.kill()
        (daemon.state_dir / "agents.json").unlink()
        restarted_at = time.time()
        daemon = daemon.restart()
        after = list_agents(certs, daemon)
        assert {i: (after[i].status, after[i].pid) for i in ("a", "s")} == {
            i: ("RUNNING", second[i].pid) for i in ("a", "s")
        }
        assert _copies("a", state_id) == [second["a"].pid]
        assert len(pids_a.read_text().split()) == 2
        _heartbeat_after(certs, daemon, "s", restarted_at + 1)

        # Once the state can be written again, the next change is saved.
        (daemon.state_dir / "agents.tmp").rmdir()
        os.kill(second["a"].pid, signal.SIGKILL)
        third = _running(certs, daemon, "a", not_pid=second["a"].pid)
        wait_until(
            lambda: _recorded_pid(daemon, "a") == third.pid, what="agents.json written again"
        )
    finally:
        daemon.stop()
        for pid in (_copies("a", state_id) + _copies("s", state_id)) if state_id else []:
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs to fill up: a real full disk (needs root and a working mount)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (the unwritable-state test covers this)")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_full_disk_never_makes_a_second_copy(tmp_path: Path, certs: Path, tiny_disk: Path) -> None:
    pids_a = tmp_path / "a.pids"
    state_dir = tiny_disk / "state"
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[
            agent("a", "sleeper", str(pids_a), start_seconds=0.2),
            agent(
                "s", "sdk_agent", str(tmp_path / "s.json"), start_seconds=0.2, heartbeat_interval=1
            ),
        ],
        config={"state_dir": str(state_dir), "stop_agents_on_exit": False},
    )
    state_id = ""
    try:
        first = {i: _running(certs, daemon, i) for i in ("a", "s")}
        state_id = psutil.Process(first["a"].pid).environ()[MARK_ENV].split(":")[0]
        filler = _fill(tiny_disk)
        for agent_id in ("a", "s"):
            os.kill(first[agent_id].pid, signal.SIGKILL)
        second = {i: _running(certs, daemon, i, not_pid=first[i].pid) for i in ("a", "s")}
        _sdk_settled(tmp_path / "s.json", second["s"].pid)
        assert "No space left on device" in daemon.output()
        agents_json = json.loads((state_dir / "agents.json").read_text())["agents"]
        assert agents_json["a"]["pid"] == first["a"].pid, "agents.json is stale"

        # A Daemon restarted on the full disk starts, and adopts what runs.
        daemon.signal(signal.SIGKILL)
        daemon.kill()
        restarted_at = time.time()
        daemon = daemon.restart()
        for agent_id in ("a", "s"):
            now = list_agents(certs, daemon)[agent_id]
            assert (now.status, now.pid) == ("RUNNING", second[agent_id].pid)
            assert _copies(agent_id, state_id) == [second[agent_id].pid]
        assert len(pids_a.read_text().split()) == 2, "no agent started a third time"
        _heartbeat_after(certs, daemon, "s", restarted_at + 1)
        assert "Traceback" not in daemon.output()

        # Space again: the next change is saved.
        filler.unlink()
        os.kill(second["a"].pid, signal.SIGKILL)
        third = _running(certs, daemon, "a", not_pid=second["a"].pid)
        wait_until(
            lambda: (
                json.loads((state_dir / "agents.json").read_text())["agents"]["a"]["pid"]
                == third.pid
            ),
            what="agents.json written again",
        )
    finally:
        daemon.stop()
        for pid in (_copies("a", state_id) + _copies("s", state_id)) if state_id else []:
            os.killpg(pid, signal.SIGKILL)


def test_a_forged_mark_is_not_adopted(tmp_path: Path, certs: Path) -> None:
    pids_a = tmp_path / "a.pids"
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[agent("a", "sleeper", str(pids_a), start_seconds=0.2)],
    )
    decoy: subprocess.Popen[bytes] | None = None
    try:
        real = _running(certs, daemon, "a")
        env = psutil.Process(real.pid).environ()
        state_id, spec_hash, _mac = env[MARK_ENV].split(":")
        daemon.stop()  # stops the agent
        # Another process claims to be agent a of this Daemon, with the right state id
        # and definition but a mark it could not compute (no access to the key).
        decoy = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"],
            env={
                **os.environ,
                "FLEET_AGENT_ID": "a",
                "FLEET_AGENT_TOKEN": "forged",
                MARK_ENV: f"{state_id}:{spec_hash}:{'0' * 32}",
            },
            start_new_session=True,
        )
        daemon = daemon.restart()
        fresh = _running(certs, daemon, "a")
        assert fresh.pid != decoy.pid and "re-adopted" not in fresh.status_reason
        assert decoy.poll() is None, "a process that is not ours is neither adopted nor touched"
        assert _copies("a", state_id) == sorted([fresh.pid, decoy.pid])  # the decoy's claim
        assert [int(p) for p in pids_a.read_text().split()] == [real.pid, fresh.pid]
    finally:
        daemon.stop()
        if decoy is not None:
            decoy.kill()
            decoy.wait()


def _found(agent_id: str, pid: int, created: float, token: str) -> Found:
    return Found(agent_id, pid, created, token, "h")


def test_reckon_adopts_one_spawn_per_agent_and_stops_the_rest() -> None:
    found = [
        _found("a", 10, 100.0, "t1"),  # an older spawn the Daemon lost track of
        _found("a", 20, 200.0, "t2"),  # the newest spawn
        _found("a", 21, 201.0, "t2"),  # a descendant of 20 that called setsid: not a spawn
        _found("b", 30, 300.0, "t3"),  # recorded in agents.json
        _found("b", 40, 400.0, "t4"),
        _found("gone", 50, 500.0, "t5"),  # no longer configured
    ]
    recorded = {"b": AgentRecord(pid=30, create_time=300.0, token="t3")}
    result = reckon(found, wanted={"a", "b", "c"}, recorded=recorded)
    assert {k: v.pid for k, v in result.adopt.items()} == {"a": 20, "b": 30}
    assert sorted(f.pid for f in result.duplicates) == [10, 40]
    assert [f.pid for f in result.unconfigured] == [50]


# ---- item 8: the agent socket's directory ----

_OTHER_UID = 65534
_ROOT_ONLY = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to make a directory owned by another user"
)


@pytest.fixture
def fake_tmp() -> Iterator[Path]:
    """A short, world-writable sticky directory like /tmp, private to the test (so that
    squatting it disturbs nothing else on the machine)."""
    base = Path(tempfile.mkdtemp(prefix="fq-", dir="/tmp"))
    shared = base / "t"
    shared.mkdir()
    shared.chmod(0o1777)
    try:
        yield shared
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _fallback_config(tmp_path: Path, fake_tmp: Path, pids: Path) -> dict[str, Any]:
    """A Daemon config whose state dir is too long for a socket path, so the socket
    falls back to ``<fake_tmp>/fleet-daemon-<uid>/<hash>/agent.sock``."""
    state_dir = tmp_path / ("s" * 60) / ("t" * 60)
    return {
        "node_id": "node-a",
        "state_dir": str(state_dir),
        "manager": {"address": f"127.0.0.1:{free_port()}", "tls": {"enabled": False}},
        "grpc": {"listen": "127.0.0.1:0"},
        "agent_api": {"fallback_dir": str(fake_tmp)},
        "agents": [agent("a", "sleeper", str(pids))],
    }


def _squat_foreign_owner(parent: Path) -> Path:
    squat = parent / f"fleet-daemon-{os.getuid()}"
    squat.mkdir()
    squat.chmod(0o777)
    os.chown(squat, _OTHER_UID, _OTHER_UID)
    return squat


def _squat_writable(parent: Path) -> Path:
    squat = parent / f"fleet-daemon-{os.getuid()}"
    squat.mkdir()
    squat.chmod(0o777)  # ours, but anyone may rename what we put inside
    return squat


def _squat_symlink(parent: Path) -> Path:
    target = parent / "elsewhere"
    target.mkdir(mode=0o700)
    squat = parent / f"fleet-daemon-{os.getuid()}"
    squat.symlink_to(target)
    os.chown(squat, _OTHER_UID, _OTHER_UID, follow_symlinks=False)
    return target


def _squat_open_parent(parent: Path) -> Path:
    parent.chmod(0o777)  # world-writable without the sticky bit
    return parent


@pytest.mark.parametrize(
    ("squat", "error"),
    [
        pytest.param(
            _squat_foreign_owner,
            f"is owned by uid {_OTHER_UID}",
            marks=_ROOT_ONLY,
            id="parent-owned-by-another-user",
        ),
        pytest.param(_squat_writable, "is writable by other users (mode 0777", id="parent-0777"),
        pytest.param(
            _squat_symlink,
            f"symlink {{}} on the agent socket's path is owned by uid {_OTHER_UID}",
            marks=_ROOT_ONLY,
            id="symlink-by-another-user",
        ),
        pytest.param(_squat_open_parent, "is writable by other users", id="shared-not-sticky"),
    ],
)
def test_squatted_socket_directory_is_refused(
    tmp_path: Path, fake_tmp: Path, squat: Any, error: str
) -> None:
    pids = tmp_path / "a.pids"
    squatted = squat(fake_tmp)
    config = tmp_path / "daemon.toml"
    config.write_text(to_toml(_fallback_config(tmp_path, fake_tmp, pids)))
    started = time.monotonic()
    result = run_cli([console_script("fleet-daemon"), "--config", str(config)], timeout=60)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    line = next(x for x in result.stderr.splitlines() if "cannot start" in x)
    print(f"refused in {took:.2f}s: {line}")
    assert error.format(fake_tmp / f"fleet-daemon-{os.getuid()}") in line
    assert "agent_api.socket" in line, "the error says how to get out of it"
    assert "Traceback" not in result.stderr
    assert not pids.exists(), "no agent started"
    assert not any(squatted.iterdir()) or squatted == fake_tmp, "nothing created in it"


def test_foreign_socket_directory_below_ours_is_refused(tmp_path: Path, fake_tmp: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    pids = tmp_path / "a.pids"
    data = _fallback_config(tmp_path, fake_tmp, pids)
    config = tmp_path / "daemon.toml"
    config.write_text(to_toml(data))
    ours = fake_tmp / f"fleet-daemon-{os.getuid()}"
    ours.mkdir(mode=0o700)
    # The per-state-dir directory itself, made first by someone else.
    digest = hashlib.sha256(data["state_dir"].encode()).hexdigest()[:12]
    (ours / digest).mkdir()
    os.chown(ours / digest, _OTHER_UID, _OTHER_UID)
    result = run_cli([console_script("fleet-daemon"), "--config", str(config)], timeout=60)
    assert result.returncode == 1
    assert f"{ours / digest} on the agent socket's path is owned by uid {_OTHER_UID}" in (
        result.stderr
    )
    assert not pids.exists()


def test_fallback_socket_directory_is_made_private(
    tmp_path: Path, certs: Path, fake_tmp: Path
) -> None:
    pids = tmp_path / "a.pids"
    data = _fallback_config(tmp_path, fake_tmp, pids)
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=data["agents"],
        config={
            "state_dir": data["state_dir"],
            "agent_api": {"socket": "", "fallback_dir": str(fake_tmp)},
        },
    )
    try:
        ours = fake_tmp / f"fleet-daemon-{os.getuid()}"
        (sock,) = ours.glob("*/agent.sock")
        assert f"agent socket {sock}" in daemon.output()
        for directory in (ours, sock.parent):
            st = directory.lstat()
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            assert stat.S_IMODE(st.st_mode) == 0o700
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        wait_until(lambda: pids.exists(), what="the agent started")
        # A restart finds its own directories acceptable.
        daemon.stop()
        daemon = daemon.restart()
        assert f"agent socket {sock}" in daemon.output()
    finally:
        daemon.stop()
