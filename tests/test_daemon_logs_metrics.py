"""Agent output goes to rotating files in the state dir (never through the Daemon), and
the optional Prometheus endpoint exposes agent and Daemon state."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from harness import free_port, wait_until
from harness.daemon import agent, list_agents, lone_daemon, start_daemon


def test_agent_output_goes_to_rotating_log_files(tmp_path: Path, certs: Path) -> None:
    with lone_daemon(
        tmp_path,
        certs,
        agents=[
            agent(
                "chatty", "chatty", "200", log_max_bytes=64 * 1024, log_backups=2, start_seconds=0.2
            )
        ],
    ) as daemon:
        logs = daemon.state_dir / "logs"
        out = logs / "chatty.stdout.log"
        wait_until(
            lambda: (logs / "chatty.stdout.log.2").exists(), timeout=30, what="two rotations"
        )
        assert not (logs / "chatty.stdout.log.3").exists()  # log_backups = 2
        backup = (logs / "chatty.stdout.log.1").stat().st_size
        assert 64 * 1024 < backup < 2 * 1024 * 1024  # capped near log_max_bytes
        wait_until(lambda: out.stat().st_size > 0, what="agent keeps writing after rotation")
        wait_until(lambda: "tick" in (logs / "chatty.stderr.log").read_text())
        assert "x" * 100 not in daemon.output()  # nothing went through the Daemon
        assert list_agents(certs, daemon)["chatty"].status == "RUNNING"


def test_prometheus_endpoint(tmp_path: Path, certs: Path) -> None:
    http_port = free_port()
    out = tmp_path / "a.json"
    daemon = start_daemon(
        tmp_path,
        certs,
        node_id="node-a",
        manager_port=free_port(),
        agents=[
            agent("a", "sdk_agent", str(out), start_seconds=0.2),
            agent("off", "sleeper", autostart=False),
        ],
        config={"http": {"listen": f"127.0.0.1:{http_port}"}},
    )

    def scrape() -> str:
        url = f"http://127.0.0.1:{http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()

    try:
        wait_until(lambda: out.exists() and json.loads(out.read_text()))
        text = wait_until(
            lambda: (t := scrape()) and 'name="ticks"' in t and t,
            what="agent-reported metric exposed",
        )
        assert 'fleet_agent_metric{agent="a",labels="",name="ticks"} 1.0' in text
        assert 'fleet_daemon_agents{state="STOPPED"} 1.0' in text
        assert 'fleet_agent_restarts_total{agent="a"} 0.0' in text
        assert "fleet_daemon_outbox_dropped_total 0.0" in text
        assert "fleet_daemon_manager_connected 0.0" in text
        assert 'fleet_daemon_rpc_total{code="OK",method="Register"} 1.0' in text
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
    finally:
        daemon.stop()
