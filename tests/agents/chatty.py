"""Test agent: writes ~argv[1] KB/s to stdout and a line a second to stderr, forever."""

import sys
import time

rate = int(sys.argv[1]) if len(sys.argv) > 1 else 100
line = "x" * 1023
n = 0
while True:
    for _ in range(rate // 10):
        print(line)
    sys.stdout.flush()
    n += 1
    if n % 10 == 0:
        print(f"tick {n}", file=sys.stderr, flush=True)
    time.sleep(0.1)
