"""Issue 11, the Daemon's half of items 5 and 6: what a hostile caller or agent hands a
real ``fleet-daemon`` cannot stop supervision or poison what the node reports.

* Item 5 — a PushUpdate config nested ~600 deep (and one 100,000 deep, and one over the
  size bound) is ``INVALID_ARGUMENT`` within milliseconds, nothing is stored, and the
  agent killed afterwards is restarted; the limits are config keys, reloadable.
* Item 6 — an agent's stderr full of escape sequences, C1 controls and bidi overrides,
  and pushed versions of 100 KB or with control characters: the Manager (a real one)
  keeps accepting every sync of the node, so it shows a dead agent's new pid.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from harness import console_script, free_port, run_cli, wait_until
from harness.daemon import (
    DaemonProc,
    agent,
    call_daemon,
    daemon_channel,
    list_agents,
    lone_daemon,
    read_config,
    start_daemon,
    to_toml,
    write_config,
)
from harness.manager import admin_channel, start_manager

from daemon.jsonlimits import depth
from daemon.textsafe import clean
from schema import admin_pb, daemon_pb


def _nested(levels: int) -> str:
    """A JSON object ``levels`` deep: {"k": {"k": ... 1 ...}}."""
    return '{"k":' * levels + "1" + "}" * levels


async def _timed_push(
    certs: Path, daemon: DaemonProc, request: daemon_pb.UpdateRequest
) -> tuple[float, daemon_pb.UpdateResponse | GRPCError]:
    """One PushUpdate on a warm channel (TLS handshake done by a ListAgents first):
    (seconds the call took, its reply or error)."""
    channel = daemon_channel(certs, daemon.grpc_port, daemon.node_id)
    try:
        stub = daemon_pb.DaemonServiceStub(channel)
        await stub.list_agents(daemon_pb.ListAgentsRequest(), timeout=10)
        started = time.perf_counter()
        try:
            reply: daemon_pb.UpdateResponse | GRPCError = await stub.push_update(
                request, timeout=10
            )
        except GRPCError as exc:
            reply = exc
        return time.perf_counter() - started, reply
    finally:
        channel.close()


def _refused(certs: Path, daemon: DaemonProc, config_json: str) -> tuple[float, str]:
    took, reply = asyncio.run(
        _timed_push(certs, daemon, daemon_pb.UpdateRequest(agent_id="a", config_json=config_json))
    )
    assert isinstance(reply, GRPCError), f"accepted: {reply}"
    assert reply.status == Status.INVALID_ARGUMENT, reply
    return took, reply.message or ""


def _agents_json(daemon: DaemonProc) -> dict[str, Any]:
    return dict(json.loads((daemon.state_dir / "agents.json").read_text())["agents"])


# ---- item 5: deeply nested JSON ----


def test_deep_config_is_refused_fast_and_supervision_goes_on(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(
        tmp_path, certs, agents=[agent("a", "sleeper", start_seconds=0.2, config={"v": 1})]
    ) as daemon:
        pid = wait_until(
            lambda: (a := list_agents(certs, daemon)["a"]).status == "RUNNING" and a.pid,
            what="agent a running",
        )
        hash_before = list_agents(certs, daemon)["a"].config_hash

        timings = {}
        timings["600 deep"], message = _refused(certs, daemon, _nested(600))
        assert "nested more than 32 levels deep (updates.max_config_depth)" in message
        # Too deep for the JSON parser itself (RecursionError inside json.loads).
        timings["100,000 deep"], message = _refused(certs, daemon, "[" * 100_000 + "]" * 100_000)
        assert "nested too deeply" in message
        big = json.dumps({"blob": "x" * 300_000})
        timings["300 KB"], message = _refused(certs, daemon, big)
        assert f"config_json is {len(big)} characters long (max 262144" in message
        assert "updates.max_config_chars" in message
        print("refusal round trips:", {k: f"{v * 1000:.1f} ms" for k, v in timings.items()})
        # Milliseconds on an idle machine; the bound leaves room for a loaded CI runner.
        assert max(timings.values()) < 0.5, timings

        # Nothing of the refused updates was stored.
        info = list_agents(certs, daemon)["a"]
        assert info.config_hash == hash_before and info.pid == pid
        assert "pushed_config" not in _agents_json(daemon)["a"] or (
            _agents_json(daemon)["a"]["pushed_config"] is None
        )

        # At the bound it is accepted, stored, and the state file still saves.
        at_bound = _nested(32)
        assert depth(json.loads(at_bound), stop_above=40) == 32
        reply = call_daemon(
            certs,
            daemon,
            "push_update",
            daemon_pb.UpdateRequest(agent_id="a", config_json=at_bound),
        )
        assert reply.success and reply.status == "APPLIED"
        assert _agents_json(daemon)["a"]["pushed_config"] == json.loads(at_bound)

        # Supervision goes on: the agent killed now is restarted.
        os.kill(pid, signal.SIGKILL)
        new = wait_until(
            lambda: (
                (a := list_agents(certs, daemon)["a"]).status == "RUNNING"
                and a.pid not in (0, pid)
                and a
            ),
            what="agent restarted after the refused updates",
        )
        assert _agents_json(daemon)["a"]["pid"] == new.pid, "state saved with the new pid"
        log = daemon.output()
        assert "RecursionError" not in log and "Traceback" not in log


def test_update_limits_are_config_keys_and_reload(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(
        tmp_path,
        certs,
        agents=[agent("a", "sleeper")],
        config={"updates": {"max_config_depth": 4, "max_config_chars": 1000}},
    ) as daemon:
        _took, message = _refused(certs, daemon, _nested(5))
        assert "nested more than 4 levels deep" in message
        _took, message = _refused(certs, daemon, json.dumps({"x": "y" * 1000}))
        assert "(max 1000: updates.max_config_chars)" in message
        accepted = call_daemon(
            certs,
            daemon,
            "push_update",
            daemon_pb.UpdateRequest(agent_id="a", config_json=_nested(4)),
        )
        assert accepted.success

        data = read_config(daemon)
        data["updates"] = {"max_config_depth": 8}
        write_config(daemon, data)
        assert "reloaded " in daemon.reload_by_signal()
        now = call_daemon(
            certs,
            daemon,
            "push_update",
            daemon_pb.UpdateRequest(agent_id="a", config_json=_nested(8)),
        )
        assert now.success, "a reload applies new update limits without a restart"
        _took, message = _refused(certs, daemon, _nested(9))
        assert "nested more than 8 levels deep" in message


def test_unsigned_deep_spec_payload_is_refused_not_internal(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(tmp_path, certs, agents=[agent("a", "sleeper", start_seconds=0.2)]) as daemon:
        pid = wait_until(
            lambda: (a := list_agents(certs, daemon)["a"]).status == "RUNNING" and a.pid,
            what="agent a running",
        )
        bomb = daemon_pb.SignedSpec(
            payload=b"[" * 100_000 + b"]" * 100_000, signature=b"x", signer_cert=b"y"
        )
        reply = call_daemon(certs, daemon, "apply_specs", daemon_pb.ApplySpecsRequest(specs=[bomb]))
        assert [s.status for s in reply.specs] == ["REFUSED"]
        assert "not a PEM certificate" in reply.specs[0].reason
        info = list_agents(certs, daemon)["a"]
        assert (info.status, info.pid) == ("RUNNING", pid)


def test_depth_is_counted_without_recursion() -> None:
    assert depth(1, stop_above=5) == 0
    assert depth({}, stop_above=5) == 1
    assert depth({"a": [1, {"b": []}]}, stop_above=5) == 4
    deep: Any = 1
    for _ in range(50_000):  # far past the interpreter's recursion limit
        deep = [deep]
    assert depth(deep, stop_above=32) == 33


# ---- item 6: what the Daemon reports ----

# Colours, a terminal title, an 8-bit CSI, bidi overrides, a zero-width space, NUL, DEL,
# NEL and a tab: "ERROR cannot open /etc/app.yaml now really" is what reaches the Manager.
_NOISE = (
    "\x1b[31;1mERROR\x1b[0m \x1b]0;pwned\x07cannot\x9b2J open \u202e/etc/app.yaml\u202c"
    "\u200b\x00\x7f\x85\tnow \x1b[1mreally\x1b[0m"
)


def test_clean_strips_escapes_controls_and_bounds_length() -> None:
    text = clean(_NOISE + " padding" * 2000)
    assert text.startswith("ERROR cannot open /etc/app.yaml now really padding")
    assert len(text) <= 1024 and text.endswith("…")
    assert all(ch.isprintable() for ch in text)
    assert not any(ch in text for ch in "\x1b\x9b\u202e\u202c\u200b\x85")
    assert clean("plain: exit code 3", 64) == "plain: exit code 3"
    assert clean("é" * 100, 64) == "é" * 63 + "…"


def test_one_agents_stderr_or_version_never_poisons_the_nodes_sync(
    tmp_path: Path, certs: Path
) -> None:
    noisy = (
        "import sys, time\n"
        f"sys.stderr.write({_NOISE + ' padding' * 300!r} + '\\n')\n"
        "sys.stderr.flush()\n"
        "time.sleep(0.5)\n"
        "sys.exit(3)\n"
    )
    mgr = start_manager(tmp_path, certs)
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=mgr.grpc_port,
        agents=[
            {
                "id": "noisy",
                "command": [sys.executable, "-c", noisy],
                "start_seconds": 0.2,
                "backoff_initial": 0.2,
                "max_restarts": 1000,
            },
            agent("steady", "sleeper", start_seconds=0.2),
        ],
    )
    try:

        def manager_agents() -> dict[str, admin_pb.Agent]:
            async def go() -> dict[str, admin_pb.Agent]:
                channel = admin_channel(certs, mgr.grpc_port)
                try:
                    reply = await admin_pb.AdminServiceStub(channel).list_agents(
                        admin_pb.ListAgentsRequest(node_id="node-a"), timeout=5
                    )
                finally:
                    channel.close()
                return {a.id: a for a in reply.agents}

            return asyncio.run(go())

        seen = wait_until(
            lambda: (
                (a := manager_agents().get("noisy"))
                and "stderr: ERROR cannot" in a.status_reason
                and a
            ),
            timeout=30,
            what="the noisy agent's failure, with its stderr line, at the Manager",
        )
        reason = seen.status_reason
        assert "exit code 3; stderr: ERROR cannot open /etc/app.yaml now really padding" in reason
        assert all(ch.isprintable() for ch in reason) and len(reason) <= 1024
        assert "\x1b" not in reason and "\u202e" not in reason

        # Pushed versions the Manager could not store are refused by the Daemon itself.
        for version, why in (
            ("v" * 100_000, "version is 100000 characters long (max 1024)"),
            ("1.0\x1b[31m", "control, escape or formatting characters"),
            ("1.0\u202e", "control, escape or formatting characters"),
        ):
            with pytest.raises(GRPCError) as err:
                call_daemon(
                    certs,
                    daemon,
                    "push_update",
                    daemon_pb.UpdateRequest(agent_id="steady", version=version),
                )
            assert err.value.status == Status.INVALID_ARGUMENT and why in (err.value.message or "")
        # Longer than the Manager's column but printable: stored, and reported cut to it.
        ok = call_daemon(
            certs,
            daemon,
            "push_update",
            daemon_pb.UpdateRequest(agent_id="steady", version="9" * 100),
        )
        assert ok.success
        cut = "9" * 63 + "…"
        assert list_agents(certs, daemon)["steady"].version == cut

        # The node's syncs are still accepted: a killed agent's new pid reaches the Manager.
        old = wait_until(
            lambda: (a := manager_agents().get("steady")) and a.version == cut and a.pid,
            what="the pushed version at the Manager",
        )
        os.kill(old, signal.SIGKILL)
        wait_until(
            lambda: (
                (a := manager_agents().get("steady"))
                and a.status == "RUNNING"
                and a.pid not in (0, old)
            ),
            timeout=20,
            what="the restarted agent's new pid at the Manager",
        )
        assert "SyncAgentStates refused" not in daemon.output()
    finally:
        daemon.stop()
        mgr.stop()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"labels": {"zone": "eu\x1b[0m"}}, "key 'labels': labels[zone] contains control"),
        ({"labels": {"zone": "x" * 300}}, "key 'labels': labels[zone] is 300 characters"),
        (
            {"agents": [{"id": "a", "command": ["/bin/true"], "version": "v" * 65}]},
            "agent 'a': key 'version': version is 65 characters long (max 64)",
        ),
        (
            {"agents": [{"id": "a", "command": ["/bin/true"], "type": "web\u202e"}]},
            "agent 'a': key 'type': type contains control",
        ),
    ],
)
def test_config_the_manager_would_refuse_is_a_config_error(
    tmp_path: Path, change: dict[str, Any], error: str
) -> None:
    config = {
        "node_id": "node-a",
        "state_dir": str(tmp_path / "state"),
        "manager": {"address": f"127.0.0.1:{free_port()}", "tls": {"enabled": False}},
        **change,
    }
    path = tmp_path / "daemon.toml"
    path.write_text(to_toml(config))
    result = run_cli([console_script("fleet-daemon"), "--config", str(path)], timeout=30)
    assert result.returncode == 2, result.stderr
    assert error in result.stderr and "Traceback" not in result.stderr
