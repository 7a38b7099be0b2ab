"""Make the fleet CA and mutual-TLS certificates from a checkout: ``python3 tools/certgen.py``.

The code is :mod:`common.certgen` (``fleet-certgen`` after ``pip install``); this file runs
it without installing, and re-exports it for callers that import it by path.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.certgen import *  # noqa: F403
from common.certgen import main

if __name__ == "__main__":
    sys.exit(main())
