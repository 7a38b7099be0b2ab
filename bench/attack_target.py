"""Run the real ``fleet-manager`` or ``fleet-daemon`` with the hostile-peer limits wired in.

    python bench/attack_target.py manager --listen 127.0.0.1:0 --cert ... (fleet-manager's flags)
    python bench/attack_target.py daemon --config daemon.toml ...        (fleet-daemon's flags)

Both tiers build their gRPC servers as ``grpclib.server.Server([...])`` in
``manager/app.py`` and ``daemon/app.py``; the hardening in ``common/h2limits.py`` takes
effect when they build them with ``common.rpc.make_server([...], limits=...)`` instead.
Until that one-line change is made in each app, this launcher makes it for one process —
it rebinds the apps' ``Server`` name to ``make_server`` before running the unchanged
entry point — so ``tests/test_hostile_*.py`` and the ``attack_*`` scripts run against the
real tiers (real services, store, liveness, agent socket) as they will be once wired.

``FLEET_H2_LIMITS`` may hold a JSON object of :class:`common.h2limits.H2Limits` fields
(e.g. ``{"body_stall_timeout": 2}``); unset, the defaults apply. Once the apps are wired
(and expose the limits as configuration keys), this script is no longer needed.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.h2limits import H2Limits
from common.rpc import make_server


def launcher(tier: str, directory: Path) -> Path:
    """An executable that runs this script for ``tier`` with whatever flags it is given,
    for harnesses that start ``fleet-manager`` / ``fleet-daemon`` by path."""
    path = directory / f"hardened-fleet-{tier}"
    script = Path(__file__).resolve()
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" {tier} "$@"\n')
    path.chmod(0o755)
    return path


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("manager", "daemon"):
        sys.exit("usage: attack_target.py manager|daemon [the tier's own flags]")
    tier, argv = sys.argv[1], sys.argv[2:]
    limits = H2Limits(**json.loads(os.environ.get("FLEET_H2_LIMITS") or "{}"))
    server = functools.partial(make_server, limits=limits)
    if tier == "manager":
        import manager.app
        from manager.__main__ import main as run

        manager.app.Server = server  # type: ignore[misc,assignment]
        run(argv)
    else:
        import daemon.app
        from daemon.__main__ import main as run_daemon

        daemon.app.Server = server  # type: ignore[misc,assignment]
        run_daemon(argv)


if __name__ == "__main__":
    main()
