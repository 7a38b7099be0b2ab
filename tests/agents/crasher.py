"""Test agent: exits with code argv[1] (default 3) after argv[2] seconds (default 0).

Optional argv[3]: a file to append a start timestamp (time.time()) to, one line per run.
"""

import sys
import time

code = int(sys.argv[1]) if len(sys.argv) > 1 else 3
after = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
if len(sys.argv) > 3:
    with open(sys.argv[3], "a") as f:
        f.write(f"{time.time()}\n")
print(f"crasher: exiting with {code} in {after}s", flush=True)
time.sleep(after)
sys.exit(code)
