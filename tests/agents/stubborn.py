"""Test agent that ignores SIGTERM and starts a child that ignores it too.

argv[1]: a file where it writes "<own pid> <child pid>" once both are running.
"""

import os
import signal
import subprocess
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(
    [
        sys.executable,
        "-c",
        "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)",
    ],
)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}\n")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
print("stubborn: ignoring SIGTERM", flush=True)
while True:
    time.sleep(3600)
