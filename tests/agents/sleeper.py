"""Test agent: runs until SIGTERM (exit 0). Optional argv[1]: file to append its pid to."""

import signal
import sys
import time

if len(sys.argv) > 1:
    with open(sys.argv[1], "a") as f:
        f.write(f"{__import__('os').getpid()}\n")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("sleeper started", flush=True)
while True:
    time.sleep(3600)
