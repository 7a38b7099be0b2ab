"""The shipped examples: the sample daemon config is valid, and two sample agents run
under a real Daemon, heartbeat, work, and follow a pushed config without restarting."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from harness import REPO, free_port, wait_until
from harness.daemon import call_daemon, list_agents, start_daemon

from daemon.config import from_mapping, load_toml
from schema import daemon_pb

SAMPLE = str(REPO / "examples" / "sample_agent.py")


def test_example_daemon_toml_is_valid() -> None:
    cfg = from_mapping(load_toml(REPO / "examples" / "daemon.toml"))
    assert [a.id for a in cfg.agents] == ["web-1", "worker-1"]
    assert all("examples/sample_agent.py" in a.command[-1] for a in cfg.agents)


def test_two_sample_agents_work_and_follow_pushed_config(tmp_path: Path, certs: Path) -> None:
    agents = [
        {
            "id": f"sample-{i}",
            "type": "sample",
            "command": [sys.executable, SAMPLE],
            "start_seconds": 0.5,
            "heartbeat_interval": 1,
            "config": {"greeting": f"hi-{i}", "work_interval": 0.2},
        }
        for i in (1, 2)
    ]
    daemon = start_daemon(
        tmp_path, certs, node_id="node-a", manager_port=free_port(), agents=agents
    )
    logs = daemon.state_dir / "logs"
    try:
        wait_until(
            lambda: all(
                (x := list_agents(certs, daemon))[a].status == "RUNNING" and x[a].last_heartbeat
                for a in ("sample-1", "sample-2")
            ),
            what="both sample agents running and heartbeating",
        )
        wait_until(lambda: "hi-1! job" in (logs / "sample-1.stderr.log").read_text())
        wait_until(lambda: "hi-2! job" in (logs / "sample-2.stderr.log").read_text())
        pid = list_agents(certs, daemon)["sample-1"].pid
        reply = call_daemon(
            certs,
            daemon,
            "push_update",
            daemon_pb.UpdateRequest(
                agent_id="sample-1",
                config_json=json.dumps({"greeting": "bonjour", "work_interval": 0.2}),
            ),
        )
        assert reply.status == "APPLIED"
        wait_until(
            lambda: "bonjour! job" in (logs / "sample-1.stderr.log").read_text(),
            what="pushed config taken live",
        )
        assert list_agents(certs, daemon)["sample-1"].pid == pid
    finally:
        daemon.stop()
    assert "stopping after" in (logs / "sample-1.stderr.log").read_text()  # clean SIGTERM exit
