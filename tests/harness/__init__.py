"""Test harness shared by every test module: certificates, ports, waiting, processes.

Tests run real things (STYLE.md §12): real ``fleet-manager`` / ``fleet-daemon``
processes on free 127.0.0.1 ports, real certificates from ``tools/certgen.py``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def load_certgen() -> ModuleType:
    """Import ``tools/certgen.py`` (``tools`` is not a package)."""
    spec = importlib.util.spec_from_file_location("fleet_certgen", REPO / "tools" / "certgen.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fleet_certgen", module)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may not be satisfiable yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: {last_exc}")


async def async_wait_until(
    condition: Callable[[], Awaitable[Any]],
    *,
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "",
) -> Any:
    """``wait_until`` for coroutine conditions."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = await condition()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}: {last_exc}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Proc:
    """A child process with its output in a log file; stopped and reaped by ``stop()``."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.popen = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the process; returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL (no cleanup), then reap."""
        if self.alive():
            self.popen.kill()
        self.popen.wait(5)


def run_cli(
    argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a console command (e.g. ``fleetctl``) to completion, capturing its output."""
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def console_script(name: str) -> str:
    """Path of an installed console script next to this interpreter (fleet-manager, …)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


# fleetctl settings a developer's shell may export; tests of fleetctl start without them.
FLEETCTL_ENV_VARS = (
    "FLEET_MANAGER",
    "FLEET_CA",
    "FLEET_CERT",
    "FLEET_KEY",
    "FLEET_CONFIG",
    "FLEET_TIMEOUT",
    "FLEET_INSECURE",
    "FLEET_DEBUG",
    "FORCE_COLOR",
    "NO_COLOR",
)


def clean_fleetctl_env(monkeypatch: Any, tmp_path: Path) -> None:
    """No FLEET_* or colour settings from the developer's shell; an empty config home."""
    for var in FLEETCTL_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def one_line(text: str) -> str:
    """The single line a CLI printed (on stderr, for errors): no more, and no traceback."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {text!r}"
    assert "Traceback" not in text
    return lines[0]


def table(text: str) -> list[list[str]]:
    """Plain table rows split on runs of 2+ spaces (header first)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]
